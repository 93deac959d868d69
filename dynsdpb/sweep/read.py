"""Reading a sweep back (sweep/spec.py holds its spec, sweep/run.py runs it): each cell with the
summary of its runs, the heatmap of a paired gain over two grid axes, one line per sweep
for a listing. Summaries come from the run folders, else from the Optuna study (a shared
database holds other machines' runs). Read by the Compare page, reports and the Runs page.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from dynsdpb.compare import summarize
from dynsdpb.store import RunDir, read_json
from dynsdpb.sweep.spec import (STUDY, SWEEP_FILE, cell_configs, expand_grid, load_sweep, local_summary,
                    plan_runs, run_dir, spec_key, storage_url)


def known_runs(study) -> dict[str, dict]:
    out = {}
    for t in study.get_trials(deepcopy=False):
        for k, v in t.user_attrs.items():
            if k.startswith("run:"):
                out[k[4:]] = v
    return out


def score(summary: dict, target: str, vs: str = "vanilla") -> float:
    """Mean paired difference of the target's primary metric (vs vanilla or dlb)."""
    m = summary.get("primary_metric", "test_accuracy")
    row = summary.get("methods", {}).get(target, {}).get(m, {})
    d = row.get("diff_vs_vanilla" if vs == "vanilla" else f"diff_vs_{vs}") or {}
    v = d.get("mean", float("nan"))
    return v if v is not None else float("nan")


def cells(path: str | Path) -> list[dict]:
    """[{params, summary, runs_done, runs_total}] per cell: a grid's every cell, a search's
    tried ones. Summaries come from the run folders, else from the study (shared storage)."""
    path = Path(path)
    spec = load_sweep(path)
    known: dict = {}
    params_list = expand_grid(spec["grid"]) if spec["kind"] == "grid" else []
    if (path / "study.db").exists() or spec.get("storage"):
        try:
            import optuna
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.load_study(study_name=STUDY, storage=storage_url(path, spec))
            known = known_runs(study)
            if spec["kind"] == "search":
                seen = set()
                for t in study.get_trials(deepcopy=False):
                    k = json.dumps(t.params, sort_keys=True)
                    if t.params and k not in seen:
                        seen.add(k)
                        params_list.append(dict(t.params))
        except Exception:  # noqa: BLE001 - no study yet (an app sweep) or unreachable
            known = {}
    out = []
    for cell in params_list:
        sums = []
        cfgs = cell_configs(spec, cell)
        for c in cfgs:
            key = spec_key(spec, c)
            s = local_summary(path, key) or known.get(key)
            if s:
                sums.append(s)
        out.append({"params": cell, "summary": summarize(sums), "runs_done": len(sums),
                    "runs_total": len(cfgs)})
    return out


def heatmap(cell_list: list[dict], x: str, y: str, target: str, vs: str = "vanilla",
            fixed: dict | None = None) -> dict:
    """The paired gain of `target` over `vs` per (x, y) cell of a grid: mean, interval and
    whether the interval excludes 0, read from each cell's summary (compare.summarize)."""
    fixed = fixed or {}
    rows = [c for c in cell_list if all(c["params"].get(k) == v for k, v in fixed.items())]
    xs = list(dict.fromkeys(c["params"][x] for c in rows))
    ys = list(dict.fromkeys(c["params"][y] for c in rows)) if y else [None]
    nan = float("nan")
    z = [[nan] * len(xs) for _ in ys]
    lo = [[nan] * len(xs) for _ in ys]
    hi = [[nan] * len(xs) for _ in ys]
    n = [[0] * len(xs) for _ in ys]
    for c in rows:
        i = ys.index(c["params"][y]) if y else 0
        j = xs.index(c["params"][x])
        s = c["summary"]
        m = s.get("primary_metric", "test_accuracy")
        d = s.get("methods", {}).get(target, {}).get(m, {}).get(
            "diff_vs_vanilla" if vs == "vanilla" else f"diff_vs_{vs}")
        if d:
            z[i][j], lo[i][j], hi[i][j], n[i][j] = d["mean"], d["ci_low"], d["ci_high"], d["n"]
    sig = [[bool(math.isfinite(a) and math.isfinite(b) and (a > 0 or b < 0))
            for a, b in zip(ra, rb)] for ra, rb in zip(lo, hi)]
    return {"x": xs, "y": ys, "z": z, "ci_low": lo, "ci_high": hi, "n": n, "significant": sig,
            "x_name": x, "y_name": y, "target": target, "vs": vs}


def overview(path: str | Path) -> dict:
    """One line of a sweep for a listing: what it varies and how many of its unique runs
    (shared baselines counted once) have finished, which are running, and which failed."""
    path = Path(path)
    spec = load_sweep(path)
    if spec["kind"] == "grid":
        keys = list(plan_runs(path))
    else:
        root = path / "runs"
        keys = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    states = {"finished": 0, "running": 0, "queued": 0, "failed": 0}
    for key in keys:
        m, s, _ = key.rsplit("-", 2)
        st = RunDir(run_dir(path, key) / f"{m}-{s}").status().get("state")
        if st in states:
            states[st] += 1
    return {"name": spec.get("name") or path.name, "folder": path.name, "kind": spec["kind"],
            "axes": list(spec.get("grid") or spec.get("search") or {}),
            "methods": spec["methods"], "seeds": spec["seeds"], "target": spec.get("target"),
            "created": spec.get("created", 0),
            "trials": spec.get("trials"),
            "runs_total": len(keys) if spec["kind"] == "grid" else None,   # a search: unknown
            "runs_finished": states["finished"], "runs_running": states["running"],
            "runs_queued": states["queued"], "runs_failed": states["failed"], "keys": keys}


def find_sweeps(runs_dir: str | Path) -> list[Path]:
    """Sweep folders directly under runs_dir, newest first."""
    root = Path(runs_dir)
    found = [p.parent for p in root.glob(f"*/{SWEEP_FILE}")] if root.is_dir() else []
    return sorted(found, key=lambda p: (read_json(p / SWEEP_FILE, {}) or {}).get("created", 0),
                  reverse=True)


def dynamics(path: str | Path, last: int = 20) -> list[dict]:
    """Per cell and distilling method, what its loss looked like at the end of training, from
    the run folders here: over the last `last` steps, the mean alpha and tau, the KD term's
    share of the loss (kd / loss) and the train-mode logit drift, then averaged over the seeds.
    [{params, method, seeds, alpha, tau, kd_share, logit_drift}]"""
    import statistics

    from dynsdpb.store import RunDir
    path = Path(path)
    spec = load_sweep(path)
    params_list = expand_grid(spec["grid"]) if spec["kind"] == "grid" else [
        c["params"] for c in cells(path)]
    out = []
    for cell in params_list:
        per: dict[str, list[dict]] = {}
        for c in cell_configs(spec, cell):
            if not c.distills or c.method == "refeed":
                continue
            rd = RunDir(run_dir(path, spec_key(spec, c)) / f"{c.method}-s{c.seed}")
            recs = [r for r in rd.metrics() if r.get("kd") is not None][-last:]
            if not recs:
                continue

            def mean(k, recs=recs):
                v = [r[k] for r in recs if r.get(k) is not None]
                return statistics.mean(v) if v else float("nan")
            loss = mean("loss")
            per.setdefault(c.method, []).append(
                {"alpha": mean("alpha"), "tau": mean("tau"), "logit_drift": mean("logit_drift"),
                 "kd_share": mean("kd") / loss if loss else float("nan")})
        for m, rows in per.items():
            out.append({"params": cell, "method": m, "seeds": len(rows),
                        **{k: statistics.mean(r[k] for r in rows) for k in rows[0]}})
    return out
