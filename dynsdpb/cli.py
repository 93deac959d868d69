"""`dynsdpb` command line. Bad input: one line on stderr, exit code 2, no traceback."""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from . import config as C
from . import dist
from .cli_args import add_config_flags, fresh_out, resolve
from .errors import ConfigError, TrainingFault
from .store import ExperimentDir


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


def _experiment(exp_dir: Path, resume: bool = False, made: Path | None = None) -> int:
    from .compare import format_table
    from .experiment import run_experiment
    exp = ExperimentDir(exp_dir)
    meta = exp.check("dir")
    steps = C.from_dict(meta["base_config"]).steps
    main_rank = dist.current().main      # data parallel: rank 0 reports, the others train
    bar, progress = _progress_bars(steps, meta["arms"])
    if not main_rank:
        bar.disable, progress = True, None
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


def cmd_train(a) -> int:
    from .experiment import create_experiment
    base, methods, seeds, _ = resolve(a, compare=False)
    for name, vals, flag in (("methods", methods, "--method"), ("seeds", seeds, "--seed")):
        if len(vals) > 1:
            raise ConfigError.one(name, vals, f"train runs one arm: pick one with {flag}, or run "
                                  "them all with `dynsdpb compare` and the same file")
    cfg = C.check_config(base.replace(method=methods[0], seed=seeds[0]))
    if a.dump:
        print(C.dumps(cfg), end="")
        return 0
    made = not Path(a.out).exists()
    out = _on_rank0(lambda: fresh_out(a.out))
    exp = _on_rank0(lambda: create_experiment(out.parent, cfg, [cfg.method], [cfg.seed],
                                              exp_dir=out))
    return _experiment(exp, made=out if made else None)


def cmd_compare(a) -> int:
    from .experiment import check_experiment, create_experiment
    from .presets import dump_experiment
    base, methods, seeds, description = resolve(a, compare=True)
    for m in methods:
        C.check_config(base.replace(method=m))
    if a.dump:
        print(dump_experiment(base, methods, seeds, description=description), end="")
        return 0
    # Every check that needs no data (e.g. a seed given twice) before --out is created.
    check_experiment(base, methods, seeds)
    made = not Path(a.out).exists()
    out = _on_rank0(lambda: fresh_out(a.out))
    exp = _on_rank0(lambda: create_experiment(out.parent, base, methods, seeds, exp_dir=out,
                                              check=False))
    return _experiment(exp, made=out if made else None)


def cmd_resume(a) -> int:
    from .cli_explore import _selftrain
    from .selftrain import is_selftrain
    p = Path(a.dir)
    if is_selftrain(p):            # a self-training loop (dynsdpb selftrain --out DIR)
        return _selftrain(p, resume=True)
    ExperimentDir(p).check("dir")  # refused with one line before anything is touched
    return _experiment(p, resume=True)


def cmd_list(a) -> int:
    if a.what == "models":
        from .models import BUILTIN_MODELS
        for m in BUILTIN_MODELS.values():
            print(f"{m.name:20s} {m.kind:8s} {m.description}")
        print("\nAlso: a local folder with a transformers model, or a hub id (needs network). "
              "Encoders train on classification/regression datasets, decoders on generation "
              "datasets.")
    else:
        from .data import BUILTIN_DATASETS
        from .lm_data import BUILTIN_LM_DATASETS
        for d in BUILTIN_DATASETS.values():
            print(f"{d.name:20s} {'classification':15s} {d.description}")
        for name, desc in BUILTIN_LM_DATASETS.items():
            print(f"{name:20s} {'generation':15s} {desc} Needs a decoder model.")
        print("\nAlso: a local .csv/.tsv/.jsonl/.parquet file (set text_column, label_column, "
              "text_pair_column; for a decoder: prompt and target columns, optional answer), "
              "or a hub id such as nyu-mll/glue:rte (needs network).")
    return 0


def cmd_app(a, extra: list[str]) -> int:
    from .paths import APP_MAIN
    env = dict(os.environ)
    if a.runs_dir:
        env["DYNSDPB_RUNS_DIR"] = str(Path(a.runs_dir).resolve())
    # Streamlit reads app/.streamlit/config.toml (next to the main script) whatever the
    # current folder is, so the settings (127.0.0.1 only, postScriptGC off, static serving)
    # hold in an installed package too; the user's folder stays the current one, so
    # ./runs and relative data paths mean what they say. An argument list, never a shell.
    return _serve([sys.executable, "-m", "streamlit", "run", str(APP_MAIN), *extra], env)


def _serve(cmd: list[str], env: dict) -> int:
    """Run the server in the current folder. On POSIX become it (exec, same pid): a SIGTERM
    or Ctrl-C to `dynsdpb app` then reaches Streamlit, which stops its training child with a
    checkpoint; a child server would outlive a terminated parent and keep the port (seen: a
    test's server left running)."""
    import subprocess
    if os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(cmd[0], cmd, env)
    return subprocess.call(cmd, cwd=Path.cwd(), env=env)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr and exit 2, like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"dynsdpb: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dynsdpb", description="Fine-tune small language models "
                "with dynamic self-distillation from the previous mini-batch "
                "(DynSDPB), side by side with plain fine-tuning.", allow_abbrev=False)
    sub = p.add_subparsers(dest="cmd", required=True)
    precedence = ("Precedence: the file (--config or --preset) < flags and --set. A field given "
                  "both as a flag and with --set must have one value. Booleans: --save-model, "
                  "--no-save-model or --save-model false.")

    t = sub.add_parser("train", help="train one run", epilog=precedence, allow_abbrev=False)
    t.add_argument("--config", help="YAML or JSON config: a single run or an experiment with "
                   "one method and seed (else pick them with --method/--seed)")
    t.add_argument("--preset", help="a shipped preset (see `dynsdpb compare --help`)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set a field by name (for scripts), e.g. --set lr=3e-5")
    t.add_argument("--out", default="runs/train", help="experiment folder to create")
    t.add_argument("--dump", action="store_true", help="print the resolved config and exit")
    add_config_flags(t, compare=False)
    t.set_defaults(fn=cmd_train)

    from .presets import list_presets
    c = sub.add_parser("compare", help="methods x seeds of one config, in lockstep",
                       epilog=precedence, allow_abbrev=False)
    c.add_argument("--config", help="experiment YAML (methods, seeds and every field, as the "
                   "app saves it) or an old single-run YAML/JSON as the base config")
    c.add_argument("--preset", help="a shipped experiment: " + ", ".join(list_presets()))
    c.add_argument("--methods", help="comma-separated, e.g. vanilla,dynsdpb (default: the "
                   "file's, else vanilla,dlb,dynsdpb)")
    c.add_argument("--seeds", help="comma-separated, e.g. 0,1,2 (default: the file's, else "
                   "0,1,2)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set a field by name (for scripts), e.g. --set lr=3e-5")
    c.add_argument("--out", default="runs/compare", help="experiment folder to create")
    c.add_argument("--dump", action="store_true", help="print the resolved experiment as YAML "
                   "(loadable with --config and by the app) and exit")
    add_config_flags(c, compare=True)
    c.set_defaults(fn=cmd_compare)

    from . import cli_explore as explore   # selftrain, bench, sweep, report
    explore.add_selftrain(sub, precedence)

    r = sub.add_parser("resume", help="continue a stopped or interrupted experiment")
    r.add_argument("dir")
    r.set_defaults(fn=cmd_resume)

    ls = sub.add_parser("list", help="list built-in models or datasets")
    ls.add_argument("what", choices=["models", "datasets"])
    ls.set_defaults(fn=cmd_list)

    ap = sub.add_parser("app", help="start the workbench app (extra --server.* flags go to "
                        "Streamlit)")
    ap.add_argument("--runs-dir", help="runs directory (default ./runs)")
    ap.set_defaults(fn=None)

    explore.add_bench(sub)
    explore.add_sweep(sub, precedence)
    explore.add_report(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # Before torch loads OpenMP: waiting threads sleep instead of spinning, so a run on a
    # shared CPU is not starved by any other busy process (jobs.py says what it measured).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    if argv and argv[0] == "app":
        a, extra = p.parse_known_args(argv)
        return cmd_app(a, extra)
    a = p.parse_args(argv)
    try:
        # Under torchrun / accelerate launch (WORLD_SIZE > 1): join the process group, one
        # rank per device (dist.py). A single process: nothing happens.
        dist.init()
        return a.fn(a)
    except ConfigError as e:
        print(f"dynsdpb: error: {e}", file=sys.stderr)
        return 2
    except TrainingFault as e:
        print(f"dynsdpb: run failed: {e} (hint: {e.hint})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
