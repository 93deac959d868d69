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

This module is the sweep's spec: run keys, the grid and search flags, sweep.json and the
runs a grid plans. Running it: sweep/run.py (the CLI through Optuna; the app as a queue of
experiments, `plan_runs` + JobManager, into the same folder layout). Reading it back:
sweep/read.py (`cells` for the Compare page's heatmap, reports and the Runs listing).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import time
from pathlib import Path

from dynsdpb import config as C
from dynsdpb.errors import ConfigError
from dynsdpb.store import SWEEP_META, RunDir, atomic_write_json, read_json

SWEEP_FILE = SWEEP_META
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
        if not v.strip():
            raise ConfigError.one("--grid", it, "give at least one value after =")
        if any(not x.strip() for x in v.split(",")):
            raise ConfigError.one("--grid", it, "has an empty value (two commas in a row or one "
                                  "at an end); write each value once, e.g. alpha_max=1,2")
        vals = [C.coerce(k, x.strip()) for x in v.split(",")]
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

def check_sweep(base: C.RunConfig, methods: list[str], seeds: list[int],
                grid: dict | None = None, search: dict | None = None, trials: int = 0,
                target: str = "") -> tuple[str, list[C.RunConfig]]:
    """Every check of a sweep that needs no data, writing nothing: (the target method, the
    configs the sweep's first cells train, which `experiment.preflight` loads before the
    folder is made). For a search: its middle, and its ends on fields that change the data."""
    from dynsdpb.experiment import PREPARE_FIELDS, check_experiment
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
    check_experiment(base, methods, seeds)     # methods and seeds: each once, at least one
    if search and trials < 1:
        raise ConfigError.one("--trials", trials, "a search needs --trials N (N >= 1)")
    if grid and trials:
        raise ConfigError.one("--trials", trials, "a grid runs every cell; --trials is for "
                              "--search only: drop it")
    for k in grid or search:
        if k in NEUTRAL:
            raise ConfigError.one("--grid" if grid else "--search", k, "cannot change a run's "
                                  "result, so every cell would be the same run; set it once "
                                  f"with --set {k}=... and sweep a field that matters")
    if grid:
        cells = expand_grid(grid)
    else:
        mid = {k: (lo + hi) / 2 for k, (lo, hi) in search.items()}
        cells = [mid] + [{**mid, k: v} for k, (lo, hi) in search.items()
                         if k in PREPARE_FIELDS for v in (lo, hi)]
    cfgs = [C.check_config(base.replace(method=m, seed=s, **_typed(cell)))
            for cell in cells for s in seeds[:1] for m in methods]
    return target, cfgs


def create_sweep(out: str | Path, base: C.RunConfig, methods: list[str], seeds: list[int],
                 grid: dict | None = None, search: dict | None = None, trials: int = 0,
                 target: str = "", storage: str = "", name: str = "") -> Path:
    """Validate every cell's arms (`check_sweep`) and write sweep.json; returns the folder."""
    target, _ = check_sweep(base, methods, seeds, grid, search, trials, target)
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
    return {k: C.coerce(k, v) for k, v in cell.items()}


def load_sweep(path: str | Path, field: str = "sweep") -> dict:
    spec = read_json(Path(path) / SWEEP_FILE, None)
    if not isinstance(spec, dict) or "base_config" not in spec:
        raise ConfigError.one(field, str(path), f"no readable {SWEEP_FILE}: not a sweep folder")
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
