"""Experiments: create one (a folder of queued arms), run it, resume it.

An experiment runs several arms (methods x seeds of one config) in lockstep, round-robin one
step each, in one worker: curves align and arms share the device fairly. Each arm keeps its
own RNG state, so its numbers do not depend on which other arms run beside it, and a resumed
arm reproduces the uninterrupted one.

The lockstep loop (`run_arms`) is where, as in nanoGPT's train.py, each step is followed by
evaluation, the metrics record and the checkpoint, at one place (`_advance`), outside the
optimizer step. Every fault of one arm (non-finite loss, out of memory, a full disk, a bug)
ends that arm as `failed` with a hint; the other arms go on.

Each arm's status.json says what it is doing: `phase` is loading | training | testing |
saving, and `resumed_from` the step a resumed arm continued from (the Live page shows them).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from dynsdpb.engine import dist
from dynsdpb.config import KD_MASS_WARN, RunConfig, check_config, from_dict
from dynsdpb.errors import BUG_HINT, OOM_HINT, ConfigError, TrainingFault
from dynsdpb.store import (ExperimentDir, MirrorRunDir, RunDir, atomic_write_json, check_not_busy,
                    unique_dir)
from dynsdpb.tasks import prepare
from dynsdpb.engine.train import Arm, is_oom

ProgressFn = Callable[[str, dict], None]

DISK_HINT = ("a file could not be written (is the disk full?); free space, then resume from "
             "the last checkpoint")
PEER_HINT = ("data parallel: another rank failed or exited (its output in the launcher's log "
             "says why); resume from the last checkpoint")


def arm_name(cfg: RunConfig) -> str:
    return f"{cfg.method}-s{cfg.seed}"


# ----------------------------------------------------------------------------------------
# The lockstep loop

def _fault(e: BaseException, a: Arm) -> tuple[str, str, int | None]:
    """(error, hint, failed step) of an exception that ended an arm."""
    if isinstance(e, TrainingFault):
        return str(e), e.hint, e.step
    if is_oom(e):
        return f"out of memory after step {a.step_idx}", OOM_HINT, a.step_idx
    if a.dist.active and ("closed by peer" in str(e) or type(e).__name__.startswith("Dist")):
        return f"{type(e).__name__}: {e}", PEER_HINT, None
    if isinstance(e, OSError):
        return f"{type(e).__name__}: {e}", DISK_HINT, None
    return f"{type(e).__name__}: {e}", BUG_HINT, None


def _fail(a: Arm, e: BaseException, progress: ProgressFn | None) -> str:
    """End arm `a` as failed, with its error and hint, whatever else is failing."""
    error, hint, step = _fault(e, a)
    a.writer.close()
    try:
        a.rd.set_status("failed", step=a.step_idx, error=error, hint=hint, failed_step=step)
    except OSError:
        pass  # status.json itself cannot be written (disk full): readers see `interrupted`
    if progress:
        progress(a.rd.id, {"state": "failed", "error": error, "hint": hint})
    return "failed"


def _advance(a: Arm) -> dict:
    """One step of one arm, then its evaluation, record and checkpoint: the one place where
    they happen. The checkpoint saves the arm's RNG state after the step (a resume does not
    replay its dropout masks); evaluation runs under the arm's RNG too."""
    rec = a.step()
    if a.eval_due:
        with a.rng():
            rec.update(a.evaluate())
    a.log(rec)
    if a.checkpoint_due:
        a.save_checkpoint()
    a.rd.set_status("running", step=a.step_idx, steps=a.cfg.steps)
    return rec


def _end_out_of_step(a: Arm, e: BaseException, others: list[Arm], final: dict[str, str],
                     progress: ProgressFn | None) -> None:
    """Data parallel, after a fault of arm `a` on this rank alone: its collectives no longer
    pair with the other ranks', so no arm can go on. Every other arm fails here; this process
    then ends, and the other ranks see its connections close (gloo) or are stopped by the
    launcher."""
    d = dist.current()
    a.out_of_step = True
    for b in others:
        final[b.rd.id] = _fail(b, TrainingFault(
            f"stopped: {a.rd.id} failed on rank {d.rank} ({e})",
            "data parallel: one rank's fault ends every arm; resume from the last checkpoint",
            None), progress)
    others.clear()


def _evaluate_at_start(a: Arm) -> dict:
    """eval_on_start: the untrained model's validation metrics as the record of step 0.
    Evaluation draws no random numbers, so the steps that follow are those of a run without
    it; a run restarted before its first checkpoint drops that record and writes it again."""
    rec = a.start_record()
    a._test_fault(0, "start")
    with a.rng():
        rec.update(a.evaluate())
    return a.log(rec)


def _data_info(a: Arm) -> dict:
    """The split sizes actually used (val_size/test_size 0 = auto) and what the dedup
    dropped: in each arm's status for the app, before any summary exists."""
    t = a.task
    return {"train": len(t.train), "val": len(t.val), "test": len(t.test),
            "dedup": getattr(t.data, "dedup", None) or None}


def run_arms(arms: list[Arm], stop: threading.Event | None = None,
             progress: ProgressFn | None = None) -> dict[str, str]:
    """Step every live arm round-robin until all are done, stopped or failed.

    Returns arm id -> final state. A fault in one arm fails that arm only.
    """
    stop = stop or threading.Event()
    d = dist.current()
    # Data parallel: every rank stops at the same step, when rank 0 was asked to.
    stopping = (lambda: d.broadcast(stop.is_set())) if d.active else stop.is_set
    final: dict[str, str] = {}
    mass: dict[str, list] = {}          # arm -> [sum, count] of kd_topk_mass, warned once
    live = []
    for a in arms:
        try:
            a.rd.set_status("running", step=a.step_idx, steps=a.cfg.steps, started=time.time(),
                            phase="training", resumed_from=a.resumed_from, data=_data_info(a))
        except Exception as e:  # noqa: BLE001 - e.g. a full disk: this arm only
            final[a.rd.id] = _fail(a, e, progress)
            continue
        if a.done:  # killed while finishing: only the end of the run is left
            final[a.rd.id] = _finish(a, progress)
        else:
            live.append(a)
    for a in [a for a in live if a.cfg.eval_on_start and a.step_idx == 0]:
        try:         # (a record in the file, not a step: progress callbacks count steps)
            _evaluate_at_start(a)
        except Exception as e:  # noqa: BLE001 - this arm only
            final[a.rd.id] = _fail(a, e, progress)
            live.remove(a)
            if d.active:          # on this rank alone: as after a step's late fault
                _end_out_of_step(a, e, live, final, progress)
                break
    while live and not stopping():
        for a in list(live):
            if stopping():
                break
            try:
                rec = _advance(a)
            except Exception as e:  # noqa: BLE001 - one arm's fault must not stop the others
                final[a.rd.id] = _fail(a, e, progress)
                live.remove(a)
                if d.active and not getattr(e, "all_ranks", False):
                    # A fault on this rank alone after the ranks' agreement in the step (in
                    # the backward pass, the optimizer step, an evaluation, a checkpoint).
                    _end_out_of_step(a, e, live, final, progress)
                    break
                continue
            if progress:
                progress(a.rd.id, rec)
            _watch_topk_mass(a, rec, mass, progress)
            if a.done:
                live.remove(a)
                final[a.rd.id] = _finish(a, progress)
    for a in live:
        # Stop: the current step is complete; save it and mark it resumable.
        try:
            a.save_checkpoint()
            a.writer.close()
            a.rd.set_status("stopped", step=a.step_idx)
            final[a.rd.id] = "stopped"
        except Exception as e:  # noqa: BLE001 - a full disk fails this arm, not the others
            final[a.rd.id] = _fail(a, e, progress)
    return final


def topk_mass_warning(mean: float, tau: float | None) -> str:
    """The warning of a decoder run whose cached top-k mass is below KD_MASS_WARN."""
    at = f" at tau {tau:.2g}" if tau is not None else ""
    return (f"the top-k teacher cache holds {100 * mean:.0f}% of the teacher's mass{at} "
            f"(below {100 * KD_MASS_WARN:.0f}%): KD sees a coarse teacher. Lower tau / tau_max "
            "(decoders: 1-1.5) or use kd_cache full (docs/method.md section 5)")


def _watch_topk_mass(a: Arm, rec: dict, mass: dict, progress: ProgressFn | None) -> None:
    """Decoders: the running mean of kd_topk_mass; the first time it is below KD_MASS_WARN
    the arm's status.json gets a warning and the CLI prints it (once per arm)."""
    v = rec.get("kd_topk_mass")
    if v is None:
        return
    m = mass.setdefault(a.rd.id, [0.0, 0, False])
    m[0] += float(v)
    m[1] += 1
    mean = m[0] / m[1]
    if m[2] or mean >= KD_MASS_WARN:
        return
    m[2] = True
    w = topk_mass_warning(mean, rec.get("tau"))
    warnings = list(a.rd.raw_status().get("warnings") or []) + [w]
    try:
        a.rd.set_status("running", warnings=warnings, kd_topk_mass=round(mean, 4))
    except OSError:
        pass          # a status write that fails must not fail the step
    if progress:
        progress(a.rd.id, {"state": "warning", "warnings": [w]})


def _finish(a: Arm, progress: ProgressFn | None) -> str:
    """Test metrics, summary.json and the saved model of an arm that did all its steps."""
    try:
        a.rd.set_status("running", phase="testing")
        summary = a.write_summary()
        if a.cfg.save_model:
            a.rd.set_status("running", phase="saving")
            a.save_model()
        a.writer.close()
        a.rd.set_status("finished", step=a.step_idx, finished=time.time())
    except Exception as e:  # noqa: BLE001
        error, hint, _ = _fault(e, a)
        a.writer.close()
        try:
            a.rd.set_status("failed", step=a.step_idx, error=f"finishing failed: {e}",
                            hint=(OOM_HINT + "; " if is_oom(e) else "")
                            + ("free space, then resume; " if isinstance(e, OSError) else "")
                            + "the metrics and checkpoint are kept")
        except OSError:
            pass
        if progress:
            progress(a.rd.id, {"state": "failed", "error": error, "hint": hint})
        return "failed"
    if progress:
        progress(a.rd.id, {"state": "finished", "summary": summary})
    return "finished"


# ----------------------------------------------------------------------------------------
# Experiment folders

def experiment_configs(base: RunConfig, methods: list[str], seeds: list[int]) -> list[RunConfig]:
    # Arms are named method-s<seed>: a repeated one would share (and clobber) a run folder.
    for name, vals in (("methods", methods), ("seeds", seeds)):
        if len(set(vals)) != len(vals):
            eg = "0,1,2" if name == "seeds" else "vanilla,dynsdpb"
            raise ConfigError.one(name, ",".join(map(str, vals)),
                                  f"give each of the {name} once, e.g. {eg}")
    return [base.replace(method=m, seed=s) for s in seeds for m in methods]


def check_experiment(base: RunConfig, methods: list[str], seeds: list[int]) -> list[RunConfig]:
    """The arms' configs, each validated (e.g. an odd batch size for dlb): the check at
    submit. Loading an experiment checks each arm's config.json again (`run_experiment`)."""
    if not methods:
        raise ConfigError.one("methods", methods, "pick at least one method")
    if not seeds:
        raise ConfigError.one("seeds", seeds, "give at least one seed")
    return [check_config(c) for c in experiment_configs(base, methods, seeds)]


# The fields `prepare` and the device choice read: configs equal on these load the same data,
# tokenizer and device, so `preflight` loads them once.
PREPARE_FIELDS = ("model", "trust_remote_code", "dataset", "task", "text_column",
                  "text_pair_column", "label_column", "min_confidence", "max_train_samples",
                  "val_size", "test_size", "split_seed", "max_len", "label_noise", "finetune",
                  "device")


def preflight(cfgs: list[RunConfig]) -> list:
    """The check a command makes before it creates anything: every config valid, its device
    there, its data and model (tokenizer) loadable with the columns it names: `prepare` once
    per distinct data setting. Returns those tasks (a workflow checks more on them, e.g.
    selftrain's answers); their data warnings are in task.data.warnings. Raises ConfigError
    (or TrainingFault: out of memory while loading)."""
    from dynsdpb.engine.dist import pick_device
    tasks: dict[tuple, object] = {}
    for c in cfgs:
        check_config(c)
        key = tuple(getattr(c, f) for f in PREPARE_FIELDS)
        if key in tasks:
            continue
        pick_device(c)
        try:
            tasks[key] = prepare(c)
        except (ConfigError, TrainingFault):
            raise
        except Exception as e:  # noqa: BLE001 - a data or model file prepare cannot read
            if is_oom(e):
                raise TrainingFault("out of memory while loading", OOM_HINT) from None
            raise ConfigError.one("dataset", c.dataset, f"could not be loaded with model "
                                  f"{c.model} ({type(e).__name__}: {str(e)[:160]}); check the "
                                  "file and the model") from None
    return list(tasks.values())


def create_experiment(runs_dir: str | Path, base: RunConfig, methods: list[str],
                      seeds: list[int], name: str = "", exp_dir: Path | None = None, *,
                      check: bool = True) -> Path:
    """Write the experiment folder and one queued run folder per arm; returns its path.

    check=False: the caller has run `check_experiment` on these arms already."""
    cfgs = (check_experiment(base, methods, seeds) if check
            else experiment_configs(base, methods, seeds))
    if exp_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        exp_dir = unique_dir(Path(runs_dir), name or f"{stamp}-{base.dataset.split('/')[-1]}")
    exp = ExperimentDir(exp_dir)
    exp.path.mkdir(parents=True, exist_ok=True)
    arms = []
    for c in cfgs:
        rd = RunDir(exp.path / arm_name(c))
        rd.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(rd.config_path, c.to_dict())
        rd.set_status("queued", created=time.time(), step=0, steps=c.steps, experiment=exp.id)
        arms.append(rd.id)
    exp.write_meta({"id": exp.id, "name": name or exp.id, "created": time.time(),
                    "methods": methods, "seeds": seeds, "arms": arms,
                    "base_config": base.to_dict()})
    return exp.path


def _load_configs(rds: list[RunDir]) -> list[RunConfig]:
    cfgs = []
    for rd in rds:
        raw = rd.config()
        if not isinstance(raw, dict) or not raw:
            # never fall back to the default config: that would train something else
            raise ConfigError.one("config", str(rd.config_path), "missing or damaged; this "
                                  "run cannot be run or resumed from it")
        cfgs.append(from_dict(raw))  # validated at load, as at submit
    return cfgs


def run_experiment(exp_dir: str | Path, stop: threading.Event | None = None,
                   progress: ProgressFn | None = None, resume: bool = False,
                   upload: bytes | None = None) -> dict:
    """Train every arm of an experiment folder in lockstep and write its summary.json."""
    from dynsdpb.compare import write_summary
    from dynsdpb.engine.model_card import write_experiment_cards
    exp = ExperimentDir(exp_dir)
    meta = exp.check()
    rds = exp.arms(meta)
    d = dist.current()      # data parallel: the CLI joined the launcher's process group
    if not d.main:
        rds = [MirrorRunDir(rd.path) for rd in rds]   # rank 0 writes the run folders
    cfgs = _load_configs(rds)
    if resume:
        check_not_busy(rds, str(exp.path))
        keep = [(rd, c) for rd, c in zip(rds, cfgs) if rd.status().get("state") != "finished"]
        rds, cfgs = [k[0] for k in keep], [k[1] for k in keep]
    try:
        for rd in rds:
            rd.set_status("running", phase="loading")
        task = prepare(cfgs[0], upload=upload) if cfgs else None
        arms = [Arm(c, task, rd, resume=resume and rd.has_checkpoint())
                for rd, c in zip(rds, cfgs)]
    except (ConfigError, TrainingFault) as e:
        for rd in rds:
            rd.set_status("failed", error=str(e), hint=getattr(e, "hint", "fix the input"))
        raise
    except Exception as e:
        if is_oom(e):
            for rd in rds:
                rd.set_status("failed", error="out of memory while loading", hint=OOM_HINT)
            raise TrainingFault("out of memory while loading", OOM_HINT) from e
        for rd in rds:
            rd.set_status("failed", error=f"{type(e).__name__}: {e}",
                          hint="could not set up the run")
        raise
    if task is not None and task.data.warnings:
        # e.g. "not valid UTF-8, read as latin-1": kept in each arm's status for the app,
        # shown by the CLI through `progress`.
        for rd in rds:
            rd.set_status(rd.raw_status().get("state", "queued"), warnings=task.data.warnings)
        if progress:
            progress("data", {"state": "warning", "warnings": list(task.data.warnings)})
    final = run_arms(arms, stop, progress)
    summary = write_summary(exp.path) if d.main else {}
    if d.main:
        # Each saved model folder gets its model card (README.md), with the vanilla arm's
        # test metrics now that every arm's summary is written.
        write_experiment_cards(exp.path)
    if d.active and not any(a.out_of_step for a in arms):
        # The ranks are at the same collective: none ends (a failed arm ends a rank with exit
        # status 1, and the launcher then stops the others) before rank 0 has written every
        # status and the summary.
        d.barrier()
    return {"states": final, "summary": summary}
