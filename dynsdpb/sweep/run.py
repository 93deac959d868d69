"""Running a sweep (sweep/spec.py holds its spec): the CLI's Optuna loop and the app's queue.

`run_sweep` asks Optuna for a cell (GridSampler for a grid, TPE for a search), trains the
cell's runs that neither the sweep folder nor the study holds yet (`_run_one`, one one-arm
experiment per run key) and scores the cell by its paired gain over vanilla. A killed sweep
resumes: its RUNNING trial is marked failed and asked again (`_requeue`), and an interrupted
run resumes from its checkpoint. `queue_grid` is the app's way: every unique run of a grid
queued on the JobManager, into the same folder layout.
"""
from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Callable

from dynsdpb import config as C
from dynsdpb.compare import summarize
from dynsdpb.errors import BUG_HINT, ConfigError, TrainingFault
from dynsdpb.store import ExperimentDir, RunDir, check_not_busy, one_writer
from dynsdpb.sweep.spec import (STUDY, cell_configs, expand_grid, load_sweep, local_summary, plan_runs,
                    run_dir, spec_key, storage_url)
from dynsdpb.sweep.read import cells, known_runs, score


def _storage(url: str, shared: bool, optuna, field: str, where: str):
    """The study's database, or a ConfigError naming `field` and the fix (a URL no driver
    reads, a server that does not answer, a study.db that is not a database)."""
    import warnings
    try:
        with warnings.catch_warnings():
            # heartbeat_interval is marked experimental; it is what several machines need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if shared:
                # Several machines: a trial whose machine stops beating for 5 min is failed.
                return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=300)
            return optuna.storages.RDBStorage(url)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's and the drivers' many errors
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError.one(field, where, f"cannot open the study database ({msg}); "
                              + ("give a database URL this machine reaches, e.g. "
                                 "sqlite:///study.db or postgresql://user@host/db" if shared
                                 else "its study.db is damaged; move it away and start the "
                                 "sweep again in a new folder")) from None


def check_storage(url: str) -> None:
    """--storage, opened before the sweep's folder is made."""
    import optuna
    _storage(url, True, optuna, "--storage", url)


def _study(path: Path, spec: dict, optuna):
    url = storage_url(path, spec)
    shared = bool(spec.get("storage"))
    storage = _storage(url, shared, optuna, "--storage" if shared else "sweep",
                       url if shared else str(Path(path) / "study.db"))
    if spec["kind"] == "grid":
        sampler = optuna.samplers.GridSampler(spec["grid"], seed=0)
    else:
        sampler = optuna.samplers.TPESampler(seed=0)
    try:
        return optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler,
                                   direction="maximize", load_if_exists=True)
    except Exception as e:  # noqa: BLE001 - a database with tables that are not a study's
        raise ConfigError.one("sweep", url, f"its study database cannot be read "
                              f"({type(e).__name__}: {str(e)[:120]}); start the sweep again "
                              "in a new folder") from None


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
    from dynsdpb.experiment import create_experiment, run_experiment
    d = run_dir(path, key)
    arm = f"{cfg.method}-s{cfg.seed}"
    rd = RunDir(d / arm)
    if rd.summary():
        return rd.summary()
    # another process trains this run (a second sweep on the same folder or database): never
    # start it over or resume it beside that writer
    check_not_busy([rd], str(path))
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
    # One writer per sweep folder: a second `sweep --resume` is refused before it touches the
    # study (whose RUNNING trials it would otherwise take for killed ones).
    top = RunDir(path)
    check_not_busy([top], str(path))
    db = path / "study.db"
    if not spec.get("storage") and db.is_file() and _head(db) != b"SQLite format 3\x00":
        raise ConfigError.one("sweep", str(db), "is not a database (damaged?); move it away "
                              "and start the sweep again in a new folder")
    with one_writer(path, str(path)):
        study = _study(path, spec, optuna)
        top.set_status("running", phase="sweep", started=time.time())
        return _run_claimed(path, spec, study, optuna, top, progress, stop, on_run)


def _head(p: Path) -> bytes:
    with open(p, "rb") as f:
        return f.read(16)


def _run_claimed(path, spec, study, optuna, top, progress, stop, on_run) -> dict:
    try:
        res = _optimize(path, spec, study, optuna, progress, stop, on_run)
    except KeyboardInterrupt:
        top.set_status("stopped", phase="stopped", error=None)
        raise
    except BaseException as e:
        top.set_status("failed", phase="failed", error=f"{type(e).__name__}: {e}",
                       hint=getattr(e, "hint", None) or "fix it, then continue with "
                       f"`dynsdpb sweep --resume {path}`")
        raise
    top.set_status("finished" if res["complete"] else "stopped",
                   phase="finished" if res["complete"] else "stopped")
    return res


def _optimize(path: Path, spec: dict, study, optuna, progress, stop, on_run) -> dict:
    S = optuna.trial.TrialState
    want = len(expand_grid(spec["grid"])) if spec["kind"] == "grid" else int(spec["trials"])
    raised: list[BaseException] = []

    def objective(trial):
        try:
            return cell_objective(trial)
        except BaseException as e:  # noqa: BLE001 - Ctrl-C, a refused input, a full disk
            # Kept for the caller and the trial pruned: Optuna prints no traceback, and a
            # pruned cell is asked again on resume (`_requeue`).
            raised.append(e)
            raise optuna.TrialPruned(type(e).__name__) from None

    def cell_objective(trial):
        cell = _suggest(trial, spec)
        known = known_runs(study)
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
                st = RunDir(run_dir(path, key) / f"{c.method}-s{c.seed}").raw_status()
                raise TrainingFault(f"run {key} did not finish: {st.get('error') or 'no summary'}"
                                    f" (see {run_dir(path, key)})", f"{st.get('hint') or BUG_HINT}"
                                    f"; then continue with: dynsdpb sweep --resume {path}")
            trial.set_user_attr(f"run:{key}", s)
            if on_run:
                on_run(key, reused)
            sums.append(s)
        summary = summarize(sums)
        v = score(summary, spec["target"])
        return v if math.isfinite(v) else 0.0

    complete: set[str] = set()
    while not stop.is_set():
        _requeue(study, optuna, local=not spec.get("storage"))
        trials = study.get_trials(deepcopy=False)
        complete = {json.dumps(t.params, sort_keys=True) for t in trials if t.state == S.COMPLETE}
        if len(complete) >= want:
            break
        study.optimize(objective, n_trials=1, catch=())
        if raised and not isinstance(raised[0], optuna.TrialPruned):
            raise raised[0]
        raised.clear()
        if spec["kind"] == "grid" and _all_running_elsewhere(study, S, complete, want):
            break
    return {"cells": cells(path), "complete": len(complete) >= want}


def _all_running_elsewhere(study, S, complete, want) -> bool:
    running = {json.dumps(t.params, sort_keys=True) for t in study.get_trials(deepcopy=False)
               if t.state == S.RUNNING}
    return len(complete | running) >= want and len(running) > 0


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
