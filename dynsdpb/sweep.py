"""Sweeps on Optuna: a grid (GridSampler) or a search (TPE) over RunConfig fields, each cell
run as methods x seeds, scored by the paired gain over vanilla.

A sweep folder holds
    sweep.json   what was asked: base config, grid or search ranges, methods, seeds, target
    study.db     the Optuna study (SQLite), unless --storage names a shared database
    runs/<key>/  one experiment folder per unique run (one arm each)

Baselines run once: a run's key hashes its *effective* config, the fields its method reads
(`effective`), so vanilla, which does not read alpha_max, is one run per seed and per lr
however many alpha_max values the grid has. Every finished run's summary also goes into the
study (trial user attribute `run:<key>`), so machines that share one database (`--storage
postgresql://...`) reuse each other's runs. A killed sweep resumes: its half-done trial is
marked failed and its cell asked again, its interrupted run resumes from its checkpoint.

The app runs the same grid as a queue of experiments (`plan_runs` + JobManager) into the same
folder layout; `cells` reads either back for the Compare page's heatmap and for reports.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
import time
from pathlib import Path
from typing import Callable

from . import config as C
from .compare import summarize
from .errors import ConfigError
from .store import ExperimentDir, RunDir, atomic_write_json, read_json

SWEEP_FILE = "sweep.json"
STUDY = "sweep"
# Fields only a distilling arm reads; vanilla and refeed (alpha = 0) ignore them all.
KD_FIELDS = ("schedule", "alpha", "tau", "alpha_max", "tau_0", "tau_min", "tau_max",
             "granularity", "tau_direction", "warmup_alpha_steps", "teacher_mode", "kd_cache",
             "top_k")
DYN_ONLY = ("alpha_max", "tau_0", "tau_min", "tau_max", "granularity", "tau_direction")
# Bookkeeping that does not change a run's result.
NEUTRAL = ("name", "save_model", "checkpoint_every", "device")


def effective(cfg: C.RunConfig) -> C.RunConfig:
    """The config with every field its method does not read set to the default: two configs
    with equal `effective` train the same run (the key of baseline sharing)."""
    d = C.RunConfig()
    reset = list(NEUTRAL)
    if cfg.method in ("vanilla", "refeed"):
        reset += KD_FIELDS
    if cfg.method == "vanilla":
        reset.append("budget")         # no carried half: both budgets forward batch_size
    if cfg.method == "dlb":
        sched = cfg.resolved_schedule
        reset += [f for f in DYN_ONLY if not (f == "alpha_max" and sched == "linear")]
        if sched != "warmup":
            reset.append("warmup_alpha_steps")
    if cfg.method == "dynsdpb":
        reset += ["schedule", "alpha", "tau", "warmup_alpha_steps"]
    return cfg.replace(**{f: getattr(d, f) for f in reset})


def run_key(cfg: C.RunConfig, fields: set[str] | frozenset[str] | None = None) -> str:
    """'dlb-s0-3f2a9c01e4': method, seed and a hash of the effective config.

    `fields`: the config fields the sweep was created with (the keys of its sweep.json's
    base_config). A field RunConfig gained after that counts only when set away from its
    default, so updating the code keeps an existing sweep's keys: its finished runs are still
    found, and a resume reuses them instead of training them again."""
    e = effective(cfg).to_dict()
    if fields is not None:
        d = C.RunConfig().to_dict()
        e = {k: v for k, v in e.items() if k in fields or v != d[k]}
    h = hashlib.sha1(json.dumps(e, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.method}-s{cfg.seed}-{h}"


def spec_key(spec: dict, cfg: C.RunConfig) -> str:
    """A run's key within the sweep `spec` (sweep.json)."""
    return run_key(cfg, frozenset(spec["base_config"]))


# ----------------------------------------------------------------------------------------
# Parsing --grid NAME=v1,v2 and --search NAME=lo:hi

def _field(name: str, flag: str) -> str:
    name = name.strip()
    if name not in C.FIELDS:
        raise ConfigError.one(flag, name, "unknown field; use a RunConfig field such as "
                              "alpha_max, lr, tau_0 or label_noise")
    if name in ("method", "seed"):
        raise ConfigError.one(flag, name, f"give {name}s with --{name}s, not as a sweep axis")
    return name


def parse_grid(items: list[str]) -> dict[str, list]:
    """['alpha_max=0.5,1', 'lr=2e-5,5e-5'] -> {'alpha_max': [0.5, 1.0], 'lr': [2e-05, 5e-05]}"""
    out: dict[str, list] = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError.one("--grid", it, "write NAME=v1,v2,..., e.g. alpha_max=0.5,1,2")
        k, v = it.split("=", 1)
        k = _field(k, "--grid")
        vals = [C._coerce(k, x.strip()) for x in v.split(",") if x.strip()]
        if not vals:
            raise ConfigError.one("--grid", it, "give at least one value after =")
        if len(set(vals)) != len(vals):
            raise ConfigError.one("--grid", it, "give each value once")
        if k in out:
            raise ConfigError.one("--grid", it, f"{k} is given twice; list its values once")
        out[k] = vals
    return out


def parse_search(items: list[str]) -> dict[str, list[float]]:
    """['alpha_max=0.1:4'] -> {'alpha_max': [0.1, 4.0]} (numeric fields only)."""
    out: dict[str, list[float]] = {}
    for it in items or []:
        k, _, rng = it.partition("=")
        k = _field(k, "--search")
        if C.FIELDS[k].type not in (int, float, "int", "float"):
            raise ConfigError.one("--search", it, f"{k} is not a number; sweep it with --grid")
        try:
            lo, hi = (float(x) for x in rng.split(":"))
        except ValueError:
            raise ConfigError.one("--search", it, "write NAME=LOW:HIGH, e.g. "
                                  "alpha_max=0.1:4") from None
        if not lo < hi:
            raise ConfigError.one("--search", it, "LOW must be below HIGH")
        out[k] = [lo, hi]
    return out


def expand_grid(grid: dict[str, list]) -> list[dict]:
    """Every cell of the grid, the first axis varying slowest."""
    names = list(grid)
    return [dict(zip(names, vals)) for vals in itertools.product(*(grid[n] for n in names))]


# ----------------------------------------------------------------------------------------
# The sweep folder

def create_sweep(out: str | Path, base: C.RunConfig, methods: list[str], seeds: list[int],
                 grid: dict | None = None, search: dict | None = None, trials: int = 0,
                 target: str = "", storage: str = "", name: str = "") -> Path:
    """Validate every cell's arms and write sweep.json; returns the folder."""
    if bool(grid) == bool(search):
        raise ConfigError.one("sweep", "", "give --grid NAME=v1,v2 (a grid) or --search "
                              "NAME=LOW:HIGH with --trials N (a search), not both or neither")
    if "vanilla" not in methods:
        raise ConfigError.one("methods", ",".join(methods), "a sweep scores the paired gain "
                              "over vanilla: include vanilla, e.g. vanilla,refeed,dlb,dynsdpb")
    target = target or next((m for m in reversed(methods) if m != "vanilla"), "")
    if target not in methods or target == "vanilla":
        raise ConfigError.one("target", target, "the method whose gain is scored must be one "
                              f"of the other methods: {', '.join(m for m in methods if m != 'vanilla')}")
    if search and trials < 1:
        raise ConfigError.one("--trials", trials, "a search needs --trials N (N >= 1)")
    cells = expand_grid(grid) if grid else [{k: (lo + hi) / 2 for k, (lo, hi) in search.items()}]
    for cell in cells:
        for m in methods:
            C.check_config(base.replace(method=m, **_typed(cell)))
    p = Path(out)
    p.mkdir(parents=True, exist_ok=True)
    if (p / SWEEP_FILE).exists():
        raise ConfigError.one("--out", str(out), "already holds a sweep; continue it with "
                              f"`dynsdpb sweep --resume {out}`")
    atomic_write_json(p / SWEEP_FILE, {
        "name": name or p.name, "created": time.time(), "kind": "grid" if grid else "search",
        "grid": grid or {}, "search": search or {}, "trials": trials, "methods": methods,
        "seeds": seeds, "target": target, "storage": storage, "base_config": base.to_dict()})
    return p


def _typed(cell: dict) -> dict:
    return {k: C._coerce(k, v) for k, v in cell.items()}


def load_sweep(path: str | Path) -> dict:
    spec = read_json(Path(path) / SWEEP_FILE, None)
    if not isinstance(spec, dict) or "base_config" not in spec:
        raise ConfigError.one("sweep", str(path), f"no readable {SWEEP_FILE}: not a sweep folder")
    return spec


def is_sweep(path: str | Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def storage_url(path: str | Path, spec: dict) -> str:
    return spec.get("storage") or f"sqlite:///{(Path(path) / 'study.db').resolve()}"


def cell_configs(spec: dict, cell: dict) -> list[C.RunConfig]:
    base = C.from_dict(spec["base_config"], check=False).replace(**_typed(cell))
    return [base.replace(method=m, seed=s) for s in spec["seeds"] for m in spec["methods"]]


def plan_runs(path: str | Path) -> dict[str, C.RunConfig]:
    """key -> config of every unique run a grid needs (shared baselines counted once)."""
    spec = load_sweep(path)
    out: dict[str, C.RunConfig] = {}
    for cell in expand_grid(spec["grid"]):
        for c in cell_configs(spec, cell):
            out.setdefault(spec_key(spec, c), c)
    return out


def run_dir(path: str | Path, key: str) -> Path:
    return Path(path) / "runs" / key


def local_summary(path: str | Path, key: str) -> dict:
    m, s, _ = key.rsplit("-", 2)
    return RunDir(run_dir(path, key) / f"{m}-{s}").summary()


# ----------------------------------------------------------------------------------------
# Running (CLI): Optuna drives the cells, runs are shared by key

def _study(path: Path, spec: dict, optuna):
    url = storage_url(path, spec)
    if spec.get("storage"):
        # Several machines: a trial whose machine stops beating for 5 min is marked failed.
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=300)
    else:
        storage = optuna.storages.RDBStorage(url)
    if spec["kind"] == "grid":
        sampler = optuna.samplers.GridSampler(spec["grid"], seed=0)
    else:
        sampler = optuna.samplers.TPESampler(seed=0)
    return optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler,
                               direction="maximize", load_if_exists=True)


def _requeue(study, optuna, local: bool) -> None:
    """A killed run leaves its trial RUNNING (local: nobody else runs it; mark it failed).
    Ask each failed or stopped cell again, once, unless it was finished or is asked already
    (GridSampler counts a failed cell as visited and would never ask it again)."""
    S = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    if local:
        for t in trials:
            if t.state == S.RUNNING:
                study._storage.set_trial_state_values(t._trial_id, S.FAIL)
        trials = study.get_trials(deepcopy=False)
    done = {json.dumps(t.params, sort_keys=True) for t in trials
            if t.state in (S.COMPLETE, S.WAITING, S.RUNNING)}
    for t in trials:
        k = json.dumps(t.params, sort_keys=True)
        # (PRUNED: a stop mid-cell, its runs keep their checkpoints)
        if t.state in (S.FAIL, S.PRUNED) and t.params and k not in done:
            # a copy keeps the grid_id (enqueue_trial would drop it and GridSampler then
            # fails on it), as Optuna's RetryFailedTrialCallback does
            study.add_trial(optuna.trial.create_trial(
                state=S.WAITING, system_attrs={**t.system_attrs, "fixed_params": t.params,
                                               "failed_trial": t.number}))
            done.add(k)


def _known_runs(study) -> dict[str, dict]:
    out = {}
    for t in study.get_trials(deepcopy=False):
        for k, v in t.user_attrs.items():
            if k.startswith("run:"):
                out[k[4:]] = v
    return out


def _suggest(trial, spec: dict) -> dict:
    if spec["kind"] == "grid":
        return {k: trial.suggest_categorical(k, v) for k, v in spec["grid"].items()}
    out = {}
    for k, (lo, hi) in spec["search"].items():
        if C.FIELDS[k].type in (int, "int"):
            out[k] = trial.suggest_int(k, int(lo), int(hi))
        else:
            # learning rates and other spans over two decades: log scale
            out[k] = trial.suggest_float(k, lo, hi, log=lo > 0 and hi / lo >= 100)
    return out


def _run_one(path: Path, key: str, cfg: C.RunConfig, progress, stop) -> dict:
    """Train one run (or resume its interrupted folder); its summary.json."""
    from .experiment import create_experiment, run_experiment
    d = run_dir(path, key)
    arm = f"{cfg.method}-s{cfg.seed}"
    rd = RunDir(d / arm)
    if rd.summary():
        return rd.summary()
    if ExperimentDir(d).exists() and rd.has_checkpoint():
        run_experiment(d, stop=stop, progress=progress, resume=True)
    else:
        if d.exists():       # killed before its first checkpoint: start it over
            import shutil
            shutil.rmtree(d)
        d.parent.mkdir(parents=True, exist_ok=True)
        create_experiment(d.parent, cfg, [cfg.method], [cfg.seed], exp_dir=d)
        run_experiment(d, stop=stop, progress=progress)
    return rd.summary()


def score(summary: dict, target: str, vs: str = "vanilla") -> float:
    """Mean paired difference of the target's primary metric (vs vanilla or dlb)."""
    m = summary.get("primary_metric", "test_accuracy")
    row = summary.get("methods", {}).get(target, {}).get(m, {})
    d = row.get("diff_vs_vanilla" if vs == "vanilla" else f"diff_vs_{vs}") or {}
    v = d.get("mean", float("nan"))
    return v if v is not None else float("nan")


def run_sweep(path: str | Path, progress: Callable[[str, dict], None] | None = None,
              stop: threading.Event | None = None, on_run: Callable[[str, bool], None] | None
              = None) -> dict:
    """Run (or continue) a sweep until every cell (grid) or `trials` cells (search) are
    done. progress: the arms' per-step callback; on_run(key, reused) after each run."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = Path(path)
    spec = load_sweep(path)
    stop = stop or threading.Event()
    study = _study(path, spec, optuna)
    S = optuna.trial.TrialState
    want = len(expand_grid(spec["grid"])) if spec["kind"] == "grid" else int(spec["trials"])

    def objective(trial):
        cell = _suggest(trial, spec)
        known = _known_runs(study)
        sums = []
        for c in cell_configs(spec, cell):
            key = spec_key(spec, c)
            s = local_summary(path, key) or known.get(key)
            reused = bool(s)
            if not s:
                s = _run_one(path, key, c, progress, stop)
            if stop.is_set() and not s:
                raise optuna.TrialPruned("stopped")   # not a result: asked again on resume
            if not s:
                raise RuntimeError(f"run {key} did not finish; see {run_dir(path, key)}")
            trial.set_user_attr(f"run:{key}", s)
            if on_run:
                on_run(key, reused)
            sums.append(s)
        summary = summarize(sums)
        v = score(summary, spec["target"])
        return v if math.isfinite(v) else 0.0

    while not stop.is_set():
        _requeue(study, optuna, local=not spec.get("storage"))
        trials = study.get_trials(deepcopy=False)
        complete = {json.dumps(t.params, sort_keys=True) for t in trials if t.state == S.COMPLETE}
        if len(complete) >= want:
            break
        study.optimize(objective, n_trials=1, catch=())
        if spec["kind"] == "grid" and _all_running_elsewhere(study, S, complete, want):
            break
    return {"cells": cells(path), "complete": len(complete) >= want}


def _all_running_elsewhere(study, S, complete, want) -> bool:
    running = {json.dumps(t.params, sort_keys=True) for t in study.get_trials(deepcopy=False)
               if t.state == S.RUNNING}
    return len(complete | running) >= want and len(running) > 0


# ----------------------------------------------------------------------------------------
# Reading back: cells with their summaries (Compare heatmap, reports)

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
            known = _known_runs(study)
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


def queue_grid(jm, path: str | Path) -> list[str]:
    """The app's sweep: every unique run of a grid queued on the JobManager as a one-arm
    experiment in runs/<key> (the same layout `cells` reads); runs already there are kept.
    Returns the queued job ids."""
    queued = []
    for key, cfg in plan_runs(path).items():
        d = run_dir(path, key)
        if ExperimentDir(d).exists():
            continue
        queued.append(jm.submit(cfg, [cfg.method], [cfg.seed], exp_dir=d).id)
    return queued


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
