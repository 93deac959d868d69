"""`dynsdpb report RUN_OR_SWEEP... --out DIR`: report.md and its charts as PNG.

report.md holds the tasks x methods table (mean ± std over seeds; the best of a column in
bold only when its paired interval against every other method excludes 0),
per experiment the paired differences (vs vanilla; with a refeed arm split into re-feed and
distillation parts), the config diff, the formula each arm used, and per sweep a table of
cells and heatmaps of the paired gain. Charts are drawn with matplotlib (Agg): plotly's static
export needs kaleido and a Chrome it drives, which the workbench does not ship.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

from dynsdpb import config as C
from dynsdpb.compare import (PERCENT, TEST_METRICS, cautions, excludes_zero, fmt_ci,
                             metric_title, sample_size, summarize_runs)
from dynsdpb.metrics import paired_diff
from dynsdpb.errors import ConfigError
from dynsdpb.store import ExperimentDir, safe_name
from dynsdpb.sweep import spec as SW
from dynsdpb.sweep import read as SR

LOWER_IS_BETTER = ("test_mse", "test_perplexity", "test_loss")


def _num(x, pct: bool) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{100 * x:.2f}" if pct else f"{x:.4f}"


def _mean_std(v: dict, pct: bool) -> str:
    s = _num(v.get("mean"), pct)
    return s if v.get("std") is None or not math.isfinite(v.get("std", float("nan"))) \
        else f"{s} ± {_num(v['std'], pct)}"


def _best(methods: dict[str, dict], metric: str) -> str | None:
    """The method to print in bold for `metric`, or None: the best mean, and only when its
    paired difference (by seed) to every other method has a 95% interval that excludes 0 on
    the right side. One seed has no interval: no winner then, however large the gap."""
    vals = {k: r.get(metric, {}).get("mean") for k, r in methods.items()}
    ok = {k: v for k, v in vals.items() if v is not None and math.isfinite(v)}
    if len(ok) < 2:
        return None
    lower = metric in LOWER_IS_BETTER
    best = (min if lower else max)(ok, key=ok.get)
    mine = methods[best][metric].get("per_seed", {})
    for k in ok:
        if k == best:
            continue
        theirs = methods[k][metric].get("per_seed", {})
        seeds = sorted(set(mine) & set(theirs))
        d = paired_diff([mine[s] for s in seeds], [theirs[s] for s in seeds])
        if not excludes_zero(d) or (d["ci_high"] > 0 if lower else d["ci_low"] < 0):
            return None
    return best


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Charts (matplotlib, Agg: no display needed)

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _curves(exp: ExperimentDir, key: str) -> dict[str, tuple[list, list]]:
    """method -> (steps, mean over seeds of `key`) where the key is logged."""
    acc: dict[str, dict[int, list]] = {}
    for rd in exp.arms():
        cfg = rd.config() or {}
        for r in rd.metrics():
            if r.get(key) is not None:
                acc.setdefault(cfg.get("method", "?"), {}).setdefault(r["step"], []).append(
                    r[key])
    return {m: (sorted(d), [sum(d[s]) / len(d[s]) for s in sorted(d)]) for m, d in acc.items()}


def _line_png(path: Path, series: dict[str, dict], title: str, ylabel: str) -> bool:
    series = {k: v for k, v in series.items() if v}
    if not series:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.4), squeeze=False)
    for ax, (name, curves) in zip(axes[0], series.items()):
        for m, (xs, ys) in curves.items():
            ax.plot(xs, ys, marker="o", ms=3, label=m)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def heatmap_png(path: Path, hm: dict, title: str) -> None:
    """The paired gain per cell in points, the interval in each cell, * where it excludes 0."""
    plt = _plt()
    z = [[100 * v if math.isfinite(v) else float("nan") for v in row] for row in hm["z"]]
    fig, ax = plt.subplots(figsize=(1.6 * len(hm["x"]) + 2.5, 1.0 * len(hm["y"]) + 1.8))
    lim = max([abs(v) for row in z for v in row if math.isfinite(v)] or [1.0])
    im = ax.imshow(z, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for i, j in itertools.product(range(len(hm["y"])), range(len(hm["x"]))):
        v = z[i][j]
        if math.isfinite(v):
            lo, hi = 100 * hm["ci_low"][i][j], 100 * hm["ci_high"][i][j]
            star = "*" if hm["significant"][i][j] else ""
            iv = (f"[{lo:+.1f}, {hi:+.1f}]" if math.isfinite(lo) and math.isfinite(hi)
                  else f"n={hm['n'][i][j]}: no interval")
            ax.text(j, i, f"{v:+.2f}{star}\n{iv}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(hm["x"])), [str(v) for v in hm["x"]])
    ax.set_yticks(range(len(hm["y"])), [str(v) for v in hm["y"]])
    ax.set_xlabel(hm["x_name"])
    ax.set_ylabel(hm["y_name"] or "")
    fig.colorbar(im, ax=ax, label="paired gain (points)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------
# Sections

def _experiment_section(exp: ExperimentDir, out: Path, label: str) -> tuple[str, dict, dict]:
    s = summarize_runs(exp.arms())
    metrics = TEST_METRICS[s["task"]]
    methods = list(s["methods"])
    lines = [f"## Experiment `{exp.id}`", ""]
    header = ["method", "seeds"] + [metric_title(m) for m in metrics]
    best = {m: _best(s["methods"], m) for m in metrics}
    rows = []
    for k in methods:
        r = [k, str(len(s["methods"][k]["seeds"]))]
        for m in metrics:
            cell = _mean_std(s["methods"][k][m], m in PERCENT)
            r.append(f"**{cell}**" if best[m] == k else cell)
        rows.append(r)
    lines += [f"Sample size: {sample_size(s)}.", ""]
    lines += [f"> **Caution:** {c}" for c in cautions(s)] + ([""] if cautions(s) else [])
    lines += ["Test metrics, mean ± sample std over seeds "
              f"({', '.join(map(str, s['methods'][methods[0]]['seeds'])) if methods else ''}); "
              "a column's best in bold only where its paired 95% interval against every other "
              "method excludes 0" + ("" if any(best.values()) else " (none here)") + ".", "",
              _md_table(header, rows), ""]
    pm = s["primary_metric"]
    pct = pm in PERCENT
    diff_rows = []
    for k in methods:
        v = s["methods"][k][pm]
        if "diff_vs_vanilla" not in v:
            continue
        diff_rows.append([k, fmt_ci(v["diff_vs_vanilla"], pct),
                          fmt_ci(v["refeed_part"], pct) if "refeed_part" in v else "-",
                          fmt_ci(v["distillation_part"], pct) if "distillation_part" in v else "-",
                          fmt_ci(v["diff_vs_dlb"], pct) if "diff_vs_dlb" in v else "-"])
    if diff_rows:
        lines += [f"Paired differences of {metric_title(pm)}{' in points' if pct else ''}, "
                  "same seed, mean [95% t-interval], n = seed pairs; a difference whose "
                  "interval contains 0 (or that has one seed) is not a gain or a loss; "
                  "re-feed part = refeed - vanilla, distillation part = arm - refeed.", "",
                  _md_table(["method", "vs vanilla", "re-feed part", "distillation part",
                             "vs dlb"], diff_rows), ""]
    lines += ["Formula each arm used:", ""]
    lines += [f"- **{k}**: {s['methods'][k].get('formula', '')}" for k in methods]
    lines.append("")
    val = next((k for k in ("val_accuracy", "val_pearson", "val_exact_match")
                if _curves(exp, k)), None)
    png = out / f"{label}-curves.png"
    series = {}
    if val:
        series[val] = _curves(exp, val)
    series["alpha"] = _curves(exp, "alpha")
    series["tau"] = _curves(exp, "tau")
    if _line_png(png, series, f"{exp.id}: mean over seeds", ""):
        lines += [f"![curves]({png.name})", ""]
    drift = {k: _curves(exp, k) for k in ("logit_drift", "update_drift", "dropout_drift")}
    png = out / f"{label}-drift.png"
    if any(drift.values()) and _line_png(png, drift, "drift split (KL, nats)", "KL"):
        lines += [f"![drift]({png.name})", ""]
    base = (exp.meta().get("base_config") or {})
    return "\n".join(lines), s, base


def _sweep_section(path: Path, out: Path, label: str) -> tuple[str, dict]:
    spec = SW.load_sweep(path)
    cl = SR.cells(path)
    t = spec["target"]
    axes = list(spec["grid"] or spec["search"])
    lines = [f"## Sweep `{path.name}` ({spec['kind']}: {', '.join(axes)}; methods "
             f"{', '.join(spec['methods'])}; seeds {', '.join(map(str, spec['seeds']))})", ""]
    label_of = lambda c: ", ".join(f"{k}={c['params'][k]}" for k in axes)  # noqa: E731
    pm = next((c["summary"].get("primary_metric") for c in cl if c["summary"]),
              "test_accuracy")
    pct = pm in PERCENT
    methods = spec["methods"]

    def cell_v(c: dict, m: str) -> dict:
        return c["summary"].get("methods", {}).get(m, {}).get(pm, {})

    def ci(v: dict, key: str) -> str:
        """An interval, in bold when it excludes 0 (a difference beyond seed noise)."""
        if key not in v:
            return "-"
        d, txt = v[key], fmt_ci(v[key], pct)
        sig = all(math.isfinite(d[k]) for k in ("ci_low", "ci_high")) and (
            d["ci_low"] > 0 or d["ci_high"] < 0)
        return f"**{txt}**" if sig else txt

    rows = [[label_of(c)] + [_mean_std(cell_v(c, m), pct) if cell_v(c, m) else "n/a"
                             for m in methods] + [f"{c['runs_done']}/{c['runs_total']}"]
            for c in cl]
    lines += [f"Test {pm.removeprefix('test_')} per cell (mean ± std over seeds"
              f"{', in %' if pct else ''}); baselines that do not read a swept field are the "
              "same runs in every cell that shares them.", "",
              _md_table(["cell", *methods, "runs"], rows), ""]
    distilling = [m for m in methods if m not in ("vanilla", "refeed")]
    if "refeed" in methods and "vanilla" in methods and distilling:
        # The one table that answers "how much of the gain is distillation": per cell, what
        # re-feeding the carried half buys alone, and what each distilling method adds on it.
        both = "dynsdpb" in distilling and "dlb" in distilling
        rows = [[label_of(c), ci(cell_v(c, "refeed"), "diff_vs_vanilla")]
                + [ci(cell_v(c, m), "distillation_part") for m in distilling]
                + ([ci(cell_v(c, "dynsdpb"), "diff_vs_dlb")] if both else []) for c in cl]
        lines += ["Where the gain over vanilla comes from, per cell: the re-feed part (refeed "
                  "- vanilla: the carried half's second CE pass alone) and each distilling "
                  "method's distillation part (method - refeed), points [95% t-interval], "
                  "paired by seed; **bold** = the interval excludes 0.", "",
                  _md_table(["cell", "re-feed part"] + [f"{m} - refeed" for m in distilling]
                            + (["dynsdpb - dlb"] if both else []), rows), ""]
    dyn = SR.dynamics(path)
    if dyn:
        rows = [[", ".join(f"{k}={d['params'][k]}" for k in axes), d["method"], str(d["seeds"]),
                 f"{d['alpha']:.3f}", f"{d['tau']:.2f}", f"{100 * d['kd_share']:.2f}%",
                 f"{d['logit_drift']:.4f}"] for d in dyn]
        lines += ["How much the distillation term weighs, per cell: over each run's last 20 "
                  "steps, the mean alpha and tau, the KD term's share of the loss (kd / loss) "
                  "and the train-mode logit drift KL(prev || now) at tau 1, in nats; averaged "
                  "over the seeds.", "",
                  _md_table(["cell", "method", "seeds", "alpha", "tau", "kd / loss",
                             "logit drift"], rows), ""]
    for m in [m for m in methods if m != "vanilla"]:
        # A method that does not read a swept field (refeed and dlb ignore alpha_max) has the
        # same runs, hence the same differences, in the cells that differ only in that field:
        # one row per group of cells using the same runs, labelled by the fields it reads.
        uses = [m, "vanilla"] + (["refeed"] if m != "refeed" else []) + (
            ["dlb"] if m == "dynsdpb" else [])
        groups: dict[frozenset, list[dict]] = {}
        for c in cl:
            keys = frozenset(SW.spec_key(spec, k) for k in SW.cell_configs(spec, c["params"])
                             if k.method in uses)
            groups.setdefault(keys, []).append(c)
        read = [a for a in axes if all(len({c["params"][a] for c in g}) == 1
                                       for g in groups.values())]
        ignored = [a for a in axes if a not in read]
        cols = ["vs vanilla"]
        if m != "refeed" and "refeed" in methods:
            cols += ["re-feed part", "distillation part"]
        if m == "dynsdpb" and "dlb" in methods:
            cols += ["vs dlb"]
        keys = {"vs vanilla": "diff_vs_vanilla", "re-feed part": "refeed_part",
                "distillation part": "distillation_part", "vs dlb": "diff_vs_dlb"}
        rows = [[", ".join(f"{a}={g[0]['params'][a]}" for a in read) or "all"]
                + [ci(cell_v(g[0], m), keys[k]) for k in cols] for g in groups.values()]
        lines += [f"**{m}**: paired differences by seed, points [95% t-interval]; **bold** = "
                  "the interval excludes 0." + (" re-feed part = refeed - vanilla, "
                                                "distillation part = " + m + " - refeed."
                                                if "re-feed part" in cols else "")
                  + (f" {m} does not read {', '.join(ignored)}: one row for all its values."
                     if ignored else ""), "",
                  _md_table(["cell", *cols], rows), ""]
    if spec["kind"] == "grid" and axes:
        x, y = axes[0], (axes[1] if len(axes) > 1 else "")
        rest = axes[2:]
        vss = ["vanilla"] + (["dlb"] if t == "dynsdpb" and "dlb" in spec["methods"] else [])
        for combo in itertools.product(*(spec["grid"][r] for r in rest)):
            fixed = dict(zip(rest, combo))
            for vs in vss:
                hm = SR.heatmap(cl, x, y, t, vs, fixed)
                tag = "-".join(f"{k}{v}" for k, v in fixed.items())
                png = out / safe_name(f"{label}-heatmap-{vs}{'-' + tag if tag else ''}") \
                    .replace(".", "_")
                png = png.with_suffix(".png")
                title = (f"{t} - {vs}, points (* interval excludes 0)"
                         + (f"; {', '.join(f'{k}={v}' for k, v in fixed.items())}" if fixed
                            else ""))
                heatmap_png(png, hm, title)
                lines += [f"![{t} - {vs}]({png.name})", ""]
    return "\n".join(lines), spec.get("base_config") or {}


def config_diff(bases: dict[str, dict]) -> list[list[str]]:
    """Fields whose value differs between the reported bases (one base: from the defaults)."""
    d = C.RunConfig().to_dict()
    cols = list(bases)
    if len(cols) == 1:
        b = bases[cols[0]]
        return [[k, repr(d[k]), repr(b[k])] for k in d if k in b and b[k] != d[k]
                and k not in ("method", "seed", "name")]
    return [[k] + [repr(bases[c].get(k)) for c in cols] for k in d
            if len({repr(bases[c].get(k)) for c in cols}) > 1 and k not in ("method", "seed")]


def check_sources(paths: list[str]) -> None:
    for p in paths:
        if not (SW.is_sweep(p) or ExperimentDir(p).exists()):
            raise ConfigError.one("report", str(p), "not an experiment or sweep folder (it has "
                                  "no experiment.json or sweep.json)")


def write_report(paths: list[str], out: str | Path) -> str:
    """Write report.md (and PNGs) into `out`; returns the markdown."""
    out = Path(out)
    check_sources(paths)
    out.mkdir(parents=True, exist_ok=True)
    sections, bases, tasks = [], {}, {}
    for i, p in enumerate(paths):
        p = Path(p)
        label = safe_name(p.name)
        if SW.is_sweep(p):
            text, base = _sweep_section(p, out, label)
        else:
            text, s, base = _experiment_section(ExperimentDir(p), out, label)
            tasks[f"{base.get('dataset', '?')} ({p.name})"] = s
        sections.append(text)
        bases[p.name] = base
    md = ["# DynSDPB workbench report", "",
          "Sources: " + ", ".join(f"`{p}`" for p in paths), ""]
    if tasks:
        methods = list(dict.fromkeys(m for s in tasks.values() for m in s["methods"]))
        best = {col: _best(s["methods"], s["primary_metric"]) for col, s in tasks.items()}
        rows = []
        for m in methods:
            r = [m]
            for col, s in tasks.items():
                pm = s["primary_metric"]
                v = s["methods"].get(m, {}).get(pm)
                cell = _mean_std(v, pm in PERCENT) if v else "-"
                r.append(f"**{cell}**" if best[col] == m else cell)
            rows.append(r)
        md += ["## Tasks x methods", "", "Primary test metric per task (in % for shares), "
               "mean ± std over seeds; a column's best in bold only where its paired 95% "
               "interval against every other method excludes 0"
               + ("" if any(best.values()) else " (none here)") + ". Sample size: "
               + "; ".join(f"{c}: {sample_size(s)}" for c, s in tasks.items()) + ".", "",
               _md_table(["method"] + [f"{c}: {metric_title(s['primary_metric'])}"
                                       for c, s in tasks.items()], rows), ""]
    diff = config_diff(bases)
    md += ["## Config diff", ""]
    if diff:
        head = (["field", "default", list(bases)[0]] if len(bases) == 1
                else ["field"] + list(bases))
        md += [_md_table(head, diff), ""]
    else:
        md += ["(no differences)", ""]
    md += sections
    text = "\n".join(md)
    (out / "report.md").write_text(text, encoding="utf-8")
    return text
