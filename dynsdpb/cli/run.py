"""`dynsdpb train | compare | resume`: one run, methods x seeds in lockstep, and the resume of
either (or of a self-training loop); their progress bars and the end-of-run table."""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from dynsdpb import config as C
from dynsdpb.engine import dist
from dynsdpb.cli.args import fresh_out, resolve
from dynsdpb.errors import ConfigError
from dynsdpb.integrations.trackers import REPORT_TO, check_report_to
from dynsdpb.store import ExperimentDir


def add_report_to(parser) -> None:
    parser.add_argument("--report-to", default="none", choices=REPORT_TO,
                        help="also write every record's numbers as TensorBoard scalars, one "
                        "TensorBoard run per arm, in OUT/tensorboard (pip install "
                        "'dynsdpb[tensorboard]')")


def _progress_bars(total_steps: int, arms: list[str]):
    from tqdm import tqdm
    bar = tqdm(total=total_steps * len(arms), unit="step", dynamic_ncols=True,
               disable=not sys.stderr.isatty() and os.environ.get("DYNSDPB_PROGRESS") != "1")
    last: dict[str, dict] = {}

    def progress(arm: str, rec: dict) -> None:
        if "step" in rec:
            bar.update(1)
            last[arm] = rec
            v = next((rec[k] for k in ("val_accuracy", "val_pearson", "val_exact_match")
                      if rec.get(k) is not None), None)
            post = {"arm": arm, "loss": f"{rec['loss']:.3f}"}
            if rec.get("alpha") is not None:
                post["alpha"] = f"{rec['alpha']:.2f}"
            if v is not None:
                post["val"] = f"{v:.3f}"
            bar.set_postfix(post)
        elif rec.get("state") == "failed":
            bar.write(f"{arm}: failed: {rec.get('error')} (hint: {rec.get('hint')})",
                      file=sys.stderr)
        elif rec.get("state") == "warning":
            for w in rec.get("warnings", []):
                bar.write(f"dynsdpb: warning: {w}", file=sys.stderr)
    return bar, progress


def with_tracker(progress, tracker):
    """The progress callback that also hands every step's record to `tracker` (if any)."""
    if tracker is None:
        return progress

    def both(arm: str, rec: dict) -> None:
        tracker.write(arm, rec)
        if progress is not None:
            progress(arm, rec)
    return both


def _experiment(exp_dir: Path, resume: bool = False, made: Path | None = None,
                report_to: str = "none") -> int:
    from dynsdpb.compare import format_table
    from dynsdpb.experiment import run_experiment
    exp = ExperimentDir(exp_dir)
    meta = exp.check("dir")
    steps = C.from_dict(meta["base_config"]).steps
    main_rank = dist.current().main      # data parallel: rank 0 reports, the others train
    bar, progress = _progress_bars(steps, meta["arms"])
    if not main_rank:
        bar.disable, progress = True, None
    tracker = None
    if report_to == "tensorboard" and main_rank:
        from dynsdpb.integrations.trackers import TensorBoardScalars
        tracker = TensorBoardScalars(Path(exp_dir) / "tensorboard")
        progress = with_tracker(progress, tracker)
    stop = threading.Event()
    t0 = time.time()
    try:
        out = run_experiment(exp_dir, stop=stop, progress=progress, resume=resume)
    except ConfigError:
        if not resume and not any(rd.metrics() for rd in exp.arms(meta)):
            # Refused before any step ran (a missing column, an unknown model): leave no
            # half-made experiment, so the same command works once the input is fixed.
            import shutil
            for rd in exp.arms(meta):
                shutil.rmtree(rd.path, ignore_errors=True)
            exp.meta_path.unlink(missing_ok=True)
            if made is not None:  # the --out folder this command created, if now empty
                try:
                    made.rmdir()
                except OSError:
                    pass
        raise
    except KeyboardInterrupt:
        stop.set()
        bar.close()
        print(f"interrupted; resume with: dynsdpb resume {exp_dir}", file=sys.stderr)
        return 130
    finally:
        bar.close()
        if tracker is not None:
            tracker.close()
    wall = time.time() - t0
    if not main_rank:
        return 0 if all(s == "finished" for s in out["states"].values()) else 1
    print(format_table(out["summary"]))
    print(f"states: {out['states']}")
    print(f"wall time: {wall:.1f} s; results in {exp_dir}")
    return 0 if all(s == "finished" for s in out["states"].values()) else 1


def _on_rank0(make):
    """Run `make` (it creates files) once: on rank 0 under a data-parallel launcher, whose
    result or refusal every rank then shares; in a single process, simply run it."""
    d = dist.current()
    if not d.active:
        return make()
    if d.main:
        try:
            res = make()
        except ConfigError as e:
            d.broadcast((None, str(e)))
            raise
        return d.broadcast((res, None))[0]
    res, err = d.broadcast(None)
    if err is not None:
        raise ConfigError.one("rank", d.rank, f"rank 0 refused the experiment: {err}")
    return res


def warn_temperatures(base, methods: list[str]) -> None:
    """Before a decoder run: one line per distilling method whose tau the top-k cache cannot
    carry (config.topk_temperature_warning)."""
    for m in methods:
        if m in ("dlb", "dynsdpb"):
            w = C.topk_temperature_warning(base.replace(method=m))
            if w:
                print(f"dynsdpb: warning: {m}: {w}", file=sys.stderr)


def cmd_train(a) -> int:
    from dynsdpb.experiment import create_experiment
    base, methods, seeds, _ = resolve(a, compare=False)
    for name, vals, flag in (("methods", methods, "--method"), ("seeds", seeds, "--seed")):
        if len(vals) > 1:
            raise ConfigError.one(name, vals, f"train runs one arm: pick one with {flag}, or run "
                                  "them all with `dynsdpb compare` and the same file")
    cfg = C.check_config(base.replace(method=methods[0], seed=seeds[0]))
    check_report_to(a.report_to)
    if a.dump:
        print(C.dumps(cfg), end="")
        return 0
    warn_temperatures(cfg, [cfg.method])
    made = not Path(a.out).exists()
    out = _on_rank0(lambda: fresh_out(a.out))
    exp = _on_rank0(lambda: create_experiment(out.parent, cfg, [cfg.method], [cfg.seed],
                                              exp_dir=out))
    return _experiment(exp, made=out if made else None, report_to=a.report_to)


def cmd_compare(a) -> int:
    from dynsdpb.experiment import check_experiment, create_experiment
    from dynsdpb.presets import dump_experiment
    base, methods, seeds, description = resolve(a, compare=True)
    for m in methods:
        C.check_config(base.replace(method=m))
    if a.dump:
        print(dump_experiment(base, methods, seeds, description=description), end="")
        return 0
    # Every check that needs no data (e.g. a seed given twice) before --out is created.
    check_experiment(base, methods, seeds)
    check_report_to(a.report_to)
    warn_temperatures(base, methods)
    made = not Path(a.out).exists()
    out = _on_rank0(lambda: fresh_out(a.out))
    exp = _on_rank0(lambda: create_experiment(out.parent, base, methods, seeds, exp_dir=out,
                                              check=False))
    return _experiment(exp, made=out if made else None, report_to=a.report_to)


def cmd_resume(a) -> int:
    from dynsdpb.cli.selftrain import selftrain_with_progress
    from dynsdpb.selftrain.run import is_selftrain
    p = Path(a.dir)
    check_report_to(a.report_to)
    if is_selftrain(p):            # a self-training loop (dynsdpb selftrain --out DIR)
        return selftrain_with_progress(p, resume=True)
    from dynsdpb.store import SWEEP_META
    if (p / SWEEP_META).is_file():
        raise ConfigError.one("dir", str(p), f"is a sweep; continue it with `dynsdpb sweep "
                              f"--resume {p}`")
    ExperimentDir(p).check("dir")  # refused with one line before anything is touched
    return _experiment(p, resume=True, report_to=a.report_to)
