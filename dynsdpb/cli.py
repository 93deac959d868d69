"""`dynsdpb` command line. Bad input: one line on stderr, exit code 2, no traceback."""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from . import config as C
from .errors import ConfigError, TrainingFault


def _progress_bars(total_steps: int, arms: list[str]):
    from tqdm import tqdm
    bar = tqdm(total=total_steps * len(arms), unit="step", dynamic_ncols=True,
               disable=not sys.stderr.isatty() and os.environ.get("DYNSDPB_PROGRESS") != "1")
    last: dict[str, dict] = {}

    def progress(arm: str, rec: dict) -> None:
        if "step" in rec:
            bar.update(1)
            last[arm] = rec
            v = rec.get("val_accuracy") if rec.get("val_accuracy") is not None else rec.get("val_pearson")
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


def _experiment(exp_dir: Path, resume: bool = False) -> int:
    from .compare import format_table
    from .store import read_json
    from .train import run_experiment
    meta = read_json(exp_dir / "experiment.json", {})
    steps = C.from_dict(meta["base_config"]).steps
    bar, progress = _progress_bars(steps, meta["arms"])
    stop = threading.Event()
    t0 = time.time()
    try:
        out = run_experiment(exp_dir, stop=stop, progress=progress, resume=resume)
    except ConfigError:
        from .store import RunDir
        if not resume and not any(RunDir(exp_dir / a).metrics() for a in meta["arms"]):
            # Refused before any step ran (a missing column, an unknown model): leave no
            # half-made experiment, so the same command works once the input is fixed.
            import shutil
            for a in meta["arms"]:
                shutil.rmtree(exp_dir / a, ignore_errors=True)
            (exp_dir / "experiment.json").unlink(missing_ok=True)
        raise
    except KeyboardInterrupt:
        stop.set()
        bar.close()
        print(f"interrupted; resume with: dynsdpb resume {exp_dir}", file=sys.stderr)
        return 130
    finally:
        bar.close()
    wall = time.time() - t0
    print(format_table(out["summary"]))
    print(f"states: {out['states']}")
    print(f"wall time: {wall:.1f} s; results in {exp_dir}")
    return 0 if all(s == "finished" for s in out["states"].values()) else 1


def _fresh_out(out: str) -> Path:
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ConfigError.one("--out", out, "is a file; give a folder for the experiment")
    if (p / "experiment.json").exists():
        raise ConfigError.one("--out", out, "already holds an experiment; pick another folder or "
                              f"continue it with `dynsdpb resume {out}`")
    if p.exists() and any(p.iterdir()):
        raise ConfigError.one("--out", out, "exists and is not empty; pick a new folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError.one("--out", out, f"cannot create it ({e.strerror}); pick a folder "
                              "you can write to") from None
    return p


def cmd_train(a) -> int:
    from .train import create_experiment
    cfg = C.load(a.config) if a.config else C.RunConfig()
    cfg = C.from_dict(C.parse_overrides(a.set), base=cfg)
    if a.dump:
        print(C.dumps(cfg), end="")
        return 0
    out = _fresh_out(a.out)
    exp = create_experiment(out.parent, cfg, [cfg.method], [cfg.seed], exp_dir=out)
    return _experiment(exp)


def cmd_compare(a) -> int:
    from .train import create_experiment
    base = C.load(a.config) if a.config else C.RunConfig()
    over = {"model": a.model, "dataset": a.dataset, "steps": a.steps, "batch_size": a.batch_size,
            "max_len": a.max_len}
    over = {k: v for k, v in over.items() if v is not None}
    over.update(C.parse_overrides(a.set))
    base = C.from_dict(over, base=base, check=False)
    methods = C.parse_methods(a.methods)
    seeds = C.parse_int_list("seeds", a.seeds)
    for m in methods:
        C.check_config(base.replace(method=m))
    out = _fresh_out(a.out)
    exp = create_experiment(out.parent, base, methods, seeds, exp_dir=out)
    return _experiment(exp)


def cmd_resume(a) -> int:
    p = Path(a.dir)
    if not (p / "experiment.json").is_file():
        raise ConfigError.one("dir", a.dir, "not an experiment folder (no experiment.json)")
    from .store import read_json
    meta = read_json(p / "experiment.json", None)
    if not isinstance(meta, dict) or not isinstance(meta.get("arms"), list) \
            or not isinstance(meta.get("base_config"), dict):
        raise ConfigError.one("dir", a.dir, "its experiment.json is damaged (not what dynsdpb "
                              "wrote); it cannot be resumed")
    return _experiment(p, resume=True)


def cmd_list(a) -> int:
    if a.what == "models":
        from .models import BUILTIN_MODELS
        for m in BUILTIN_MODELS.values():
            print(f"{m.name:20s} {m.description}")
        print("\nAlso: a local folder with a transformers model, or a hub id (needs network).")
    else:
        from .data import BUILTIN_DATASETS
        for d in BUILTIN_DATASETS.values():
            print(f"{d.name:20s} {d.description}")
        print("\nAlso: a local .csv/.tsv/.jsonl/.parquet file (set text_column, label_column, "
              "text_pair_column), or a hub id such as nyu-mll/glue:rte (needs network).")
    return 0


def cmd_app(a, extra: list[str]) -> int:
    import subprocess
    root = Path(__file__).resolve().parent.parent
    entry = root / "app" / "main.py"
    env = dict(os.environ)
    if a.runs_dir:
        env["DYNSDPB_RUNS_DIR"] = str(Path(a.runs_dir).resolve())
    # An argument list, never a shell string.
    cmd = [sys.executable, "-m", "streamlit", "run", str(entry), *extra]
    return subprocess.call(cmd, cwd=root, env=env)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dynsdpb", description="Fine-tune small language models "
                                "with dynamic self-distillation from the previous mini-batch "
                                "(DynSDPB), side by side with plain fine-tuning.")
    sub = p.add_subparsers(dest="cmd", required=True)
    fields_help = "\n".join(f"  {n}: {f.metadata['help']}" for n, f in C.FIELDS.items())

    t = sub.add_parser("train", help="train one run", formatter_class=argparse.RawTextHelpFormatter,
                       epilog="config fields (--set key=value):\n" + fields_help)
    t.add_argument("--config", help="YAML or JSON config file")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field")
    t.add_argument("--out", default="runs/train", help="experiment folder to create")
    t.add_argument("--dump", action="store_true", help="print the resolved config and exit")
    t.set_defaults(fn=cmd_train)

    c = sub.add_parser("compare", help="methods x seeds of one config, in lockstep",
                       formatter_class=argparse.RawTextHelpFormatter,
                       epilog="config fields (--set key=value):\n" + fields_help)
    c.add_argument("--config", help="base YAML or JSON config")
    c.add_argument("--model")
    c.add_argument("--dataset")
    c.add_argument("--methods", default="vanilla,dlb,dynsdpb")
    c.add_argument("--seeds", default="0,1,2")
    c.add_argument("--steps", type=int)
    c.add_argument("--batch-size", type=int)
    c.add_argument("--max-len", type=int)
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.add_argument("--out", default="runs/compare", help="experiment folder to create")
    c.set_defaults(fn=cmd_compare)

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
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    if argv and argv[0] == "app":
        a, extra = p.parse_known_args(argv)
        return cmd_app(a, extra)
    a = p.parse_args(argv)
    try:
        return a.fn(a)
    except ConfigError as e:
        print(f"dynsdpb: error: {e}", file=sys.stderr)
        return 2
    except TrainingFault as e:
        print(f"dynsdpb: run failed: {e} (hint: {e.hint})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
