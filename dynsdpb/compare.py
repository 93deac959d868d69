"""Summaries over arms: per method mean, std and per-seed values of the test metrics, and the
paired difference to vanilla (same seed, same data) with a 95% t-interval."""
from __future__ import annotations

import math
from pathlib import Path

from dynsdpb.metrics import mean_std, paired_diff
from dynsdpb.store import ExperimentDir, RunDir, atomic_write_json

TEST_METRICS = {"classification": ("test_accuracy", "test_macro_f1", "test_mcc"),
                "regression": ("test_pearson", "test_spearman", "test_mse"),
                "causal-lm": ("test_exact_match", "test_perplexity", "test_loss")}
# Shares in [0, 1], printed in %.
PERCENT = ("test_accuracy", "test_macro_f1", "test_exact_match")


def summarize_runs(runs: list[RunDir]) -> dict:
    """Group finished runs by method; pair seeds against vanilla."""
    return summarize([rd.summary() for rd in runs])


def _pair(seeds: dict, other: dict, m: str) -> dict:
    common = sorted(set(seeds) & set(other))
    return paired_diff([seeds[s].get(m) for s in common], [other[s].get(m) for s in common])


def summarize(summaries: list[dict]) -> dict:
    """The same from the runs' summary.json contents (a sweep keeps them in its study).

    Per metric: mean, std, per seed; diff_vs_vanilla for every other arm. With a refeed arm,
    a distilling arm's gain splits into refeed_part (refeed - vanilla: what re-feeding the
    carried half alone buys) and distillation_part (arm - refeed), each paired by seed with
    its 95% t-interval; with a dlb arm, dynsdpb also gets diff_vs_dlb."""
    by_method: dict[str, dict[int, dict]] = {}
    task = "classification"
    for s in summaries:
        if not s:
            continue
        task = s.get("task", task)
        by_method.setdefault(s["method"], {})[int(s["seed"])] = s
    metrics = TEST_METRICS[task]
    out: dict = {"task": task, "primary_metric": metrics[0], "methods": {}}
    base = by_method.get("vanilla", {})
    for method, seeds in by_method.items():
        row: dict = {"seeds": sorted(seeds), "schedule": next(iter(seeds.values()))["schedule"],
                     "formula": next(iter(seeds.values())).get("formula", "")}
        for m in metrics:
            vals = [seeds[s].get(m) for s in sorted(seeds)]
            mean, std = mean_std([v for v in vals if v is not None])
            row[m] = {"mean": mean, "std": std, "per_seed": dict(zip(map(str, sorted(seeds)), vals))}
            if method != "vanilla" and base:
                row[m]["diff_vs_vanilla"] = _pair(seeds, base, m)
            refeed = by_method.get("refeed")
            if method not in ("vanilla", "refeed") and refeed and base:
                row[m]["refeed_part"] = _pair(refeed, base, m)
                row[m]["distillation_part"] = _pair(seeds, refeed, m)
            if method == "dynsdpb" and "dlb" in by_method:
                row[m]["diff_vs_dlb"] = _pair(seeds, by_method["dlb"], m)
        row["wall_time_mean"] = mean_std([seeds[s].get("wall_time") for s in seeds])[0]
        out["methods"][method] = row
    return out


def write_summary(exp_dir: str | Path) -> dict:
    exp = ExperimentDir(exp_dir)
    meta = exp.meta()
    runs = exp.arms(meta)
    summary = summarize_runs(runs)
    summary["experiment"] = meta.get("id", exp.id)
    summary["states"] = {rd.id: rd.status().get("state") for rd in runs}
    atomic_write_json(exp.summary_path, summary)
    return summary


def _fmt(x, pct: bool) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{100 * x:.2f}" if pct else f"{x:.4f}"


def table_rows(summary: dict) -> list[dict]:
    """One row per method for the primary metric, ready for printing or a dataframe."""
    m = summary.get("primary_metric", "test_accuracy")
    pct = m in PERCENT
    rows = []
    for method, r in summary.get("methods", {}).items():
        v = r.get(m, {})
        d = v.get("diff_vs_vanilla")
        rows.append({
            "method": method, "schedule": r.get("schedule"),
            f"{m} mean": _fmt(v.get("mean"), pct), "std": _fmt(v.get("std"), pct),
            "per seed": " ".join(_fmt(x, pct) for x in v.get("per_seed", {}).values()),
            "diff vs vanilla [95% CI]": "-" if d is None else fmt_ci(d, pct),
        })
        if "refeed" in summary.get("methods", {}):
            # the gain over vanilla, split: re-feeding alone, and distillation on top of it
            for key, col in (("refeed_part", "re-feed part [95% CI]"),
                             ("distillation_part", "distillation part [95% CI]")):
                p = v.get(key)
                rows[-1][col] = "-" if p is None else fmt_ci(p, pct)
    return rows


def _signed(x, pct: bool) -> str:
    t = _fmt(x, pct)
    if t.startswith("-") and not t.strip("-0."):       # -0.00: a rounding, not a sign
        t = t[1:]
    return t if t == "n/a" or t.startswith("-") else "+" + t


def fmt_ci(d: dict, pct: bool) -> str:
    """'+1.20 [-0.40, +2.80]': a paired difference, signed, with its 95% interval."""
    return (f"{_signed(d['mean'], pct)} [{_signed(d['ci_low'], pct)}, "
            f"{_signed(d['ci_high'], pct)}]")


def format_table(summary: dict) -> str:
    rows = table_rows(summary)
    if not rows:
        return "(no finished runs)"
    m = summary.get("primary_metric", "")
    unit = " (%)" if m in PERCENT else ""
    cols = list(rows[0].keys())
    w = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = [f"{m}{unit}, mean and sample std over seeds; paired difference to vanilla",
             "  ".join(c.ljust(w[c]) for c in cols),
             "  ".join("-" * w[c] for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(w[c]) for c in cols) for r in rows]
    lines += power_lines(summary)
    return "\n".join(lines)


def power_lines(summary: dict) -> list[str]:
    """dynsdpb - dlb, and what the seeds could detect: the smallest effect (80% power, 5% test)
    of each paired part, from the observed spread over seeds."""
    m = summary.get("primary_metric", "test_accuracy")
    pct = m in PERCENT
    out = []
    for method, r in summary.get("methods", {}).items():
        v = r.get(m, {})
        d = v.get("diff_vs_dlb")
        if d:
            out.append(f"{method} - dlb: {fmt_ci(d, pct)} (n = {d.get('n', 0)} seeds)")
        parts = [(k, v[k]) for k in ("diff_vs_vanilla", "refeed_part", "distillation_part")
                 if v.get(k) and math.isfinite(v[k].get("mde", float("nan")))]
        if parts:
            out.append(f"{method}: smallest effect {len(r.get('seeds', []))} seeds detect (80% "
                       "power): " + ", ".join(f"{k.replace('_', ' ')} {_fmt(p['mde'], pct)}"
                                               for k, p in parts))
    return [""] + out if out else []
