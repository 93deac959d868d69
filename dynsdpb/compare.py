"""Summaries over arms: per method mean, std and per-seed values of the test metrics, and the
paired difference to vanilla (same seed, same data) with a 95% t-interval."""
from __future__ import annotations

import math
from pathlib import Path

from dynsdpb.metrics import mean_std, paired_diff
from dynsdpb.store import ExperimentDir, RunDir, atomic_write_json

TEST_METRICS = {"classification": ("test_accuracy", "test_macro_f1", "test_mcc"),
                "regression": ("test_pearson", "test_spearman", "test_mse"),
                "causal-lm": ("test_exact_match", "test_strict_exact_match", "test_perplexity",
                              "test_loss", "test_truncated", "test_echo_share")}
# Shares in [0, 1], printed in %.
PERCENT = ("test_accuracy", "test_macro_f1", "test_exact_match", "test_strict_exact_match",
           "test_truncated", "test_echo_share")
# A test set this small makes one item worth more than 2 points: say so next to the results.
TINY_TEST = 50


def metric_title(m: str) -> str:
    """'Test accuracy (%)': a test metric in words with its unit, for a column or a title."""
    from dynsdpb.records import KEYS
    k = KEYS.get("val_" + m.removeprefix("test_"))
    if k is None:
        return m
    label = "test" + k.label.removeprefix("validation")
    unit = "%" if m in PERCENT else k.unit
    return f"{label[0].upper()}{label[1:]}" + (f" ({unit})" if unit else "")


def excludes_zero(d: dict | None) -> bool:
    """Does a paired difference have a 95% interval (two seeds or more) that excludes 0?
    Only such a difference may be called a gain or a loss (bold, "winner")."""
    if not d:
        return False
    lo, hi = d.get("ci_low"), d.get("ci_high")
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (lo, hi))
    return ok and (lo > 0 or hi < 0)


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
    sizes, classes = [], None
    for s in summaries:
        if not s:
            continue
        task = s.get("task", task)
        by_method.setdefault(s["method"], {})[int(s["seed"])] = s
        if s.get("test_size"):
            sizes.append(int(s["test_size"]))
        if s.get("labels"):
            classes = len(s["labels"])
    metrics = TEST_METRICS[task]
    # test_size: the number of test items behind each mean (the smallest, if runs differ);
    # classes: for classification, what chance level is (1 / classes).
    out: dict = {"task": task, "primary_metric": metrics[0], "methods": {},
                 "test_size": min(sizes) if sizes else None,
                 "test_sizes_differ": len(set(sizes)) > 1,
                 "classes": classes if task == "classification" else None}
    base = by_method.get("vanilla", {})
    for method, seeds in by_method.items():
        row: dict = {"seeds": sorted(seeds), "schedule": next(iter(seeds.values()))["schedule"],
                     # per seed, how many classes the model predicted over the test set
                     # (encoder classification; 1 = a constant prediction)
                     "predicted_classes": {str(k): v["test_predicted_classes"]
                                           for k, v in sorted(seeds.items())
                                           if v.get("test_predicted_classes") is not None},
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


def item_points(summary: dict) -> float | None:
    """What one test item is worth in points of the primary metric (shares in %), or None."""
    n = summary.get("test_size")
    return 100.0 / n if n and summary.get("primary_metric") in PERCENT else None


def sample_size(summary: dict) -> str:
    """'2 seeds x 6 test items; one item = 16.67 points': what every mean stands on."""
    seeds = sorted({len(r.get("seeds", [])) for r in summary.get("methods", {}).values()})
    sd = "/".join(map(str, seeds)) or "0"
    n = summary.get("test_size")
    txt = f"{sd} seed{'s' if seeds != [1] else ''} per method"
    if n:
        txt += f" x {n} test items" + (" (the smallest; runs differ)"
                                       if summary.get("test_sizes_differ") else "")
    pts = item_points(summary)
    if pts is not None:
        txt += f"; one test item = {pts:.2f} points"
    return txt


def cautions(summary: dict) -> list[str]:
    """What makes these results weak, one sentence each: a tiny test set, one seed (no
    interval), accuracy below chance, a model predicting one class for every test item."""
    out = []
    methods = summary.get("methods", {})
    n = summary.get("test_size")
    pts = item_points(summary)
    if n and n < TINY_TEST:
        out.append(f"Tiny test set: {n} items" + (f", so one item is worth {pts:.2f} points"
                                                   if pts is not None else "")
                   + "; differences of a few items are noise. Use more test rows "
                   "(test_size) for a result to report.")
    if methods and all(len(r.get("seeds", [])) < 2 for r in methods.values()):
        out.append("One seed per method: a difference has no interval and cannot be called "
                   "a gain or a loss. Run 3 or more seeds.")
    k = summary.get("classes")
    pm = summary.get("primary_metric")
    if k and pm == "test_accuracy":
        chance = 1.0 / k
        low = [f"{m} {100 * r[pm]['mean']:.2f} %" for m, r in methods.items()
               if isinstance(r.get(pm, {}).get("mean"), float)
               and math.isfinite(r[pm]["mean"]) and r[pm]["mean"] < chance]
        if low:
            out.append(f"Below chance ({100 * chance:.1f} % for {k} classes): "
                       f"{', '.join(low)}. Such a model learned nothing usable; a difference "
                       "between arms says nothing about the method.")
    const = [f"{m} (seed {', '.join(c)})" for m, r in methods.items()
             if (c := [s for s, n in r.get("predicted_classes", {}).items() if n <= 1])]
    if const:
        out.append("A constant predictor (one class for every test item): "
                   f"{', '.join(const)}.")
    if pm == "test_accuracy" and not any(r.get("predicted_classes") for r in methods.values()):
        # runs written before predicted_classes was recorded: every arm and seed at the same
        # accuracy with an MCC of exactly 0 is what a constant prediction gives
        vals = {v for r in methods.values() for v in r.get(pm, {}).get("per_seed", {}).values()}
        mccs = {v for r in methods.values()
                for v in r.get("test_mcc", {}).get("per_seed", {}).values()}
        if len(methods) > 1 and len(vals) == 1 and mccs == {0.0}:
            out.append(f"Every arm scores {100 * vals.pop():.2f} % with MCC 0: this is what "
                       "a constant prediction (one class for every item) gives.")
    return out


def table_rows(summary: dict, metric: str | None = None) -> list[dict]:
    """One row per method for the primary metric (or `metric`), ready for printing or a
    dataframe: column names in words, the number of seeds and test items next to every
    difference."""
    m = metric or summary.get("primary_metric", "test_accuracy")
    pct = m in PERCENT
    n_test = summary.get("test_size")
    diff_col = f"difference to vanilla{' (points)' if pct else ''} [95% CI]"
    rows = []
    for method, r in summary.get("methods", {}).items():
        v = r.get(m, {})
        d = v.get("diff_vs_vanilla")
        rows.append({
            "method": method, "schedule": r.get("schedule"),
            metric_title(m): _fmt(v.get("mean"), pct), "std": _fmt(v.get("std"), pct),
            "per seed": " ".join(_fmt(x, pct) for x in v.get("per_seed", {}).values()),
            "seeds": len(r.get("seeds", [])),
            "test items": n_test if n_test else "-",
            diff_col: "-" if d is None else fmt_ci(d, pct),
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
    """'+1.20 [-0.40, +2.80], n=3': a paired difference, signed, with its 95% interval and
    the number of seed pairs; one pair has no interval and says so."""
    n = d.get("n")
    ok = all(isinstance(d.get(k), (int, float)) and math.isfinite(d[k])
             for k in ("ci_low", "ci_high"))
    if not ok:
        pairs = "one seed" if n in (None, 1) else f"n={n}"
        return f"{_signed(d['mean'], pct)} [no interval: {pairs}]"
    return (f"{_signed(d['mean'], pct)} [{_signed(d['ci_low'], pct)}, "
            f"{_signed(d['ci_high'], pct)}], n={n}" if n else
            f"{_signed(d['mean'], pct)} [{_signed(d['ci_low'], pct)}, "
            f"{_signed(d['ci_high'], pct)}]")


def format_table(summary: dict) -> str:
    """The primary metric's table; decoders also get strict exact match's, and the share of
    test items an echo of the question solves (the floor of the flexible score)."""
    rows = table_rows(summary)
    if not rows:
        return "(no finished runs)"
    m = summary.get("primary_metric", "")
    dec = summary.get("task") == "causal-lm"
    lines = _table(rows, m, summary, " (flexible: the last number anywhere)" if dec else "")
    lines += power_lines(summary)
    if dec:
        lines += [""] + _table(table_rows(summary, "test_strict_exact_match"),
                               "test_strict_exact_match", summary,
                               " (ended by itself, answer in place)") + [""]
        echo = next((r["test_echo_share"]["mean"] for r in summary["methods"].values()
                     if (r.get("test_echo_share") or {}).get("mean") is not None), None)
        if echo is not None:
            lines.append(f"test items an echo of the question solves (flexible rule): "
                         f"{_fmt(echo, True)} %")
        lines.append("test generations cut off (%): " + ", ".join(
            f"{meth} {_fmt((r.get('test_truncated') or {}).get('mean'), True)}"
            for meth, r in summary["methods"].items()))
    lines += [f"Caution: {c}" for c in cautions(summary)]
    return "\n".join(lines)


def _table(rows: list[dict], m: str, summary: dict, note: str = "") -> list[str]:
    cols = list(rows[0].keys())
    w = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = [f"{metric_title(m)}{note}, mean and sample std over seeds; paired difference to "
             f"vanilla by seed ({sample_size(summary)})",
             "  ".join(c.ljust(w[c]) for c in cols),
             "  ".join("-" * w[c] for c in cols)]
    return lines + ["  ".join(str(r[c]).ljust(w[c]) for c in cols) for r in rows]


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
            out.append(f"{method} - dlb: {fmt_ci(d, pct)}")      # fmt_ci names n
        parts = [(k, v[k]) for k in ("diff_vs_vanilla", "refeed_part", "distillation_part")
                 # a summary read back from JSON holds null where the mde was nan
                 if v.get(k) and isinstance(v[k].get("mde"), (int, float))
                 and math.isfinite(v[k]["mde"])]
        if parts:
            out.append(f"{method}: smallest effect {len(r.get('seeds', []))} seeds detect (80% "
                       "power): " + ", ".join(f"{k.replace('_', ' ')} {_fmt(p['mde'], pct)}"
                                               for k, p in parts))
    return [""] + out if out else []
