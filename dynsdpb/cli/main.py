"""`dynsdpb` command line: the parser, `list`, `app` and the entry point. Each other command has
its own module here (run: train/compare/resume; selftrain; sweep; report; bench). Bad input:
one line on stderr, exit code 2, no traceback."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from dynsdpb.cli.args import add_config_flags
from dynsdpb.cli.bench import add_bench
from dynsdpb.cli.report import add_report
from dynsdpb.cli.run import add_report_to, cmd_compare, cmd_resume, cmd_train
from dynsdpb.cli.selftrain import add_selftrain
from dynsdpb.cli.sweep import add_sweep
from dynsdpb.engine import dist
from dynsdpb.errors import ConfigError, TrainingFault


def cmd_list(a) -> int:
    if a.what == "models":
        from dynsdpb.catalog import BUILTIN_MODELS
        for m in BUILTIN_MODELS.values():
            print(f"{m.name:20s} {m.kind:8s} {m.description}")
        print("\nAlso: a local folder with a transformers model, or a hub id (needs network). "
              "Encoders train on classification/regression datasets, decoders on generation "
              "datasets.")
    else:
        from dynsdpb.catalog import BUILTIN_DATASETS
        for d in BUILTIN_DATASETS.values():
            need = " Needs a decoder model." if d.kind == "generation" else ""
            print(f"{d.name:20s} {d.kind:15s} {d.description}{need}")
        print("\nAlso: a local .csv/.tsv/.jsonl/.parquet file (set text_column, label_column, "
              "text_pair_column; for a decoder: prompt and target columns, optional answer), "
              "or a hub id such as nyu-mll/glue:rte (needs network).")
    return 0


def cmd_app(a, extra: list[str]) -> int:
    from dynsdpb.paths import APP_SERVER
    from dynsdpb.store import make_out
    env = dict(os.environ)
    # The runs folder is checked (and made) before the server starts: a file, a read-only
    # folder or one that cannot be created is one line and exit 2, not an error on each page.
    runs = a.runs_dir or env.get("DYNSDPB_RUNS_DIR") or "runs"
    make_out(runs, "--runs-dir", reuse=True)
    if a.runs_dir:
        env["DYNSDPB_RUNS_DIR"] = str(Path(a.runs_dir).resolve())
    # Streamlit reads app/.streamlit/config.toml (next to the main script) whatever the
    # current folder is, so the settings (127.0.0.1 only, postScriptGC off, static serving)
    # hold in an installed package too; the user's folder stays the current one, so
    # ./runs and relative data paths mean what they say. An argument list, never a shell.
    return _serve([sys.executable, "-m", "streamlit", "run", str(APP_SERVER), *extra], env)


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
    add_report_to(t)
    add_config_flags(t, compare=False)
    t.set_defaults(fn=cmd_train)

    from dynsdpb.presets import list_presets
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
    add_report_to(c)
    add_config_flags(c, compare=True)
    c.set_defaults(fn=cmd_compare)

    add_selftrain(sub, precedence)

    r = sub.add_parser("resume", help="continue a stopped or interrupted experiment")
    r.add_argument("dir")
    add_report_to(r)
    r.set_defaults(fn=cmd_resume)

    ls = sub.add_parser("list", help="list built-in models or datasets")
    ls.add_argument("what", choices=["models", "datasets"])
    ls.set_defaults(fn=cmd_list)

    ap = sub.add_parser("app", help="start the workbench app (extra --server.* flags go to "
                        "Streamlit)")
    ap.add_argument("--runs-dir", help="runs directory (default ./runs)")
    ap.set_defaults(fn=None)

    add_bench(sub)
    add_sweep(sub, precedence)
    add_report(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # Before torch loads OpenMP: waiting threads sleep instead of spinning, so a run on a
    # shared CPU is not starved by any other busy process (jobs.py says what it measured).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    app = bool(argv) and argv[0] == "app"
    if app:
        a, extra = p.parse_known_args(argv)
    else:
        a = p.parse_args(argv)
    # A service stop (SIGTERM) is handled as Ctrl-C: each command saves what it has and prints
    # how to continue. In the main thread only (signal handlers can be set there alone), and
    # not under a data-parallel launcher, whose SIGTERM stops every rank at once.
    own = (threading.current_thread() is threading.main_thread() and not app
           and int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1)
    old = signal.signal(signal.SIGTERM, _sigterm) if own else None
    try:
        if app:
            return cmd_app(a, extra)
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
    except KeyboardInterrupt:
        # a command with something to resume says how in its own handler
        print("dynsdpb: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # e.g. a full disk outside a run (a run's own faults fail that run, with a hint)
        print(f"dynsdpb: run failed: {type(e).__name__}: {e} (hint: free space or pick a "
              "folder you can write to; what was written is kept, and a run or sweep "
              "resumes from its last checkpoint)", file=sys.stderr)
        return 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _sigterm(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
