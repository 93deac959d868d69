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


def _fresh_out(out: str) -> Path:
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ConfigError.one("--out", out, "is a file; give a folder for the experiment")
    if ExperimentDir(p).exists():
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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _fields_from_args(a) -> dict:
    """Field values given on the command line: typed flags and --set, one value per field.

    A field given both ways with different values is refused (exit 2) rather than one
    silently winning; the same value twice is fine."""
    flags = {n: v for n in C.FIELDS if (v := getattr(a, "f_" + n, None)) is not None}
    sets = C.parse_overrides(a.set)
    for k in flags.keys() & sets.keys():
        if C._coerce(k, flags[k]) != C._coerce(k, sets[k]):
            raise ConfigError.one(k, sets[k], f"given twice with different values "
                                  f"({_flag(k)} {flags[k]} and --set {k}={sets[k]}); keep one")
    return {**flags, **sets}


def _experiment_file(a):
    """The --config file or --preset as an Experiment (unchecked), or None; and whether it
    states its own methods/seeds (an old single-run file does not)."""
    from . import presets as PR
    if a.config and a.preset:
        raise ConfigError.one("--preset", a.preset, "give --config or --preset, not both")
    if a.preset:
        exp = PR.load_preset(a.preset)
        return exp, True
    if a.config:
        d = C.read_mapping(a.config)
        return PR.experiment_from_dict(d, a.config, check=False), isinstance(d, dict) and (
            "methods" in d or "seeds" in d)
    return None, False


def _resolve(a, compare: bool):
    """(base config, methods, seeds, description) from file < flags and --set.

    The file is a whole experiment (dynsdpb/presets.py) or an old single-run config."""
    exp, file_lists = _experiment_file(a)
    over = _fields_from_args(a)
    base = C.from_dict(over, base=exp.base if exp else C.RunConfig(), check=False)

    def pick(name: str, one: str, listed: str | None, parse, default):
        # --methods / --method / --set method=..., then the file's list, then the default.
        if listed is not None and one in over:
            if parse(listed) != [getattr(base, one)]:
                raise ConfigError.one(name, listed, f"given twice with different values "
                                      f"(--{name} {listed} and {_flag(one)}/--set {one}="
                                      f"{over[one]}); keep one")
        if listed is not None:
            return parse(listed)
        if one in over:
            return [getattr(base, one)]
        if exp is not None and (file_lists or not compare):
            return list(getattr(exp, name))
        return default

    methods = pick("methods", "method", getattr(a, "methods", None), C.parse_methods,
                   ["vanilla", "dlb", "dynsdpb"] if compare else [base.method])
    seeds = pick("seeds", "seed", getattr(a, "seeds", None),
                 lambda t: C.parse_int_list("seeds", t), [0, 1, 2] if compare else [base.seed])
    return base, methods, seeds, exp.description if exp else ""


def cmd_train(a) -> int:
    from .experiment import create_experiment
    base, methods, seeds, _ = _resolve(a, compare=False)
    for name, vals, flag in (("methods", methods, "--method"), ("seeds", seeds, "--seed")):
        if len(vals) > 1:
            raise ConfigError.one(name, vals, f"train runs one arm: pick one with {flag}, or run "
                                  "them all with `dynsdpb compare` and the same file")
    cfg = C.check_config(base.replace(method=methods[0], seed=seeds[0]))
    if a.dump:
        print(C.dumps(cfg), end="")
        return 0
    made = not Path(a.out).exists()
    out = _on_rank0(lambda: _fresh_out(a.out))
    exp = _on_rank0(lambda: create_experiment(out.parent, cfg, [cfg.method], [cfg.seed],
                                              exp_dir=out))
    return _experiment(exp, made=out if made else None)


def cmd_compare(a) -> int:
    from .experiment import check_experiment, create_experiment
    from .presets import dump_experiment
    base, methods, seeds, description = _resolve(a, compare=True)
    for m in methods:
        C.check_config(base.replace(method=m))
    if a.dump:
        print(dump_experiment(base, methods, seeds, description=description), end="")
        return 0
    # Every check that needs no data (e.g. a seed given twice) before --out is created.
    check_experiment(base, methods, seeds)
    made = not Path(a.out).exists()
    out = _on_rank0(lambda: _fresh_out(a.out))
    exp = _on_rank0(lambda: create_experiment(out.parent, base, methods, seeds, exp_dir=out,
                                              check=False))
    return _experiment(exp, made=out if made else None)


def cmd_resume(a) -> int:
    from .selftrain import is_selftrain
    p = Path(a.dir)
    if is_selftrain(p):            # a self-training loop (dynsdpb selftrain --out DIR)
        return _selftrain(p, resume=True)
    ExperimentDir(p).check("dir")  # refused with one line before anything is touched
    return _experiment(p, resume=True)


LOOP_FLAGS = ("loop", "rounds", "questions", "samples", "temperature", "rationalize",
              "round_start")


def cmd_selftrain(a) -> int:
    """STaR / self-correction rounds (selftrain.py): the config as for `compare` (--demo: the
    CPU demo below the flags), the loop options from their flags."""
    from . import selftrain as S
    if a.resume:
        S.read_meta(a.resume, "--resume")
        return _selftrain(Path(a.resume), resume=True)
    if a.demo:
        if a.config:
            raise ConfigError.one("--demo", "", "give --config or --demo, not both")
        base = C.from_dict({**S.CPU_DEMO["config"], **_fields_from_args(a)}, check=False)
        methods = C.parse_methods(a.methods) if a.methods else list(S.CPU_DEMO["methods"])
        seeds = (C.parse_int_list("seeds", a.seeds) if a.seeds else list(S.CPU_DEMO["seeds"]))
    else:
        base, methods, seeds, _ = _resolve(a, compare=True)
    given = {k: v for k in LOOP_FLAGS if (v := getattr(a, "l_" + k, None)) is not None}
    loop = S.loop_from_dict({**(S.CPU_DEMO["loop"] if a.demo else {}), **given})
    S.check_selftrain(base, loop, methods, seeds)   # before --out is created
    out = _fresh_out(a.out)
    S.create_selftrain(out, base, loop, methods, seeds, name=base.name)
    return _selftrain(out)


def _selftrain(path: Path, resume: bool = False) -> int:
    from . import selftrain as S
    stop = threading.Event()
    t0 = time.time()
    at = {"round": 0}

    def progress(who: str, rec: dict) -> None:   # one line per event on stderr
        clock = f"[{time.time() - t0:6.0f} s]"
        if rec.get("event") == "phase":
            at["round"] = rec["round"]
            arm = f" ({rec['arm']})" if rec.get("arm") else ""
            print(f"{clock} round {rec['round']}: {rec['phase']}{arm}", file=sys.stderr,
                  flush=True)
        elif rec.get("event") == "round":
            acc = rec.get("test_exact_match")
            first = rec.get("test_first_exact_match")
            print(f"{clock} round {rec['round']} {who}: kept {rec['kept']}/{rec['traces']}, "
                  f"{rec.get('steps')} steps, test "
                  + (f"{100 * first:.1f}% first, " if first is not None else "")
                  + (f"{100 * acc:.1f}%" if acc is not None else "n/a"),
                  file=sys.stderr, flush=True)
        elif "step" in rec:
            print(f"{clock} round {at['round']} {who} step {rec['step']} loss {rec['loss']:.3f}"
                  + (f" kd {rec['kd']:.4f}" if rec.get("kd") else ""), file=sys.stderr,
                  flush=True)
        elif rec.get("state") == "failed":
            print(f"{clock} {who}: failed: {rec.get('error')} (hint: {rec.get('hint')})",
                  file=sys.stderr, flush=True)
    try:
        out = S.run_selftrain(path, stop=stop, progress=progress, resume=resume)
    except KeyboardInterrupt:
        stop.set()
        print(f"interrupted; resume with: dynsdpb resume {path}", file=sys.stderr)
        return 130
    print(S.format_rounds(out["summary"]))
    if out["error"]:
        print(f"dynsdpb: {out['error']}", file=sys.stderr)
    print(f"state: {out['state']}; wall time: {time.time() - t0:.1f} s; results in {path}")
    return 0 if out["state"] == "finished" else 1


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
    import subprocess
    from .paths import APP_MAIN
    env = dict(os.environ)
    if a.runs_dir:
        env["DYNSDPB_RUNS_DIR"] = str(Path(a.runs_dir).resolve())
    # Streamlit reads app/.streamlit/config.toml (next to the main script) whatever the
    # current folder is, so the settings (127.0.0.1 only, postScriptGC off, static serving)
    # hold in an installed package too; the user's folder stays the current one, so
    # ./runs and relative data paths mean what they say. An argument list, never a shell.
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_MAIN), *extra]
    return subprocess.call(cmd, cwd=Path.cwd(), env=env)


def cmd_bench(a) -> int:
    import json
    # --json: progress on stderr, so stdout holds only the JSON line.
    out = sys.stderr if a.json else sys.stdout
    log = lambda m: print(m, file=out, flush=True)  # noqa: E731
    if a.app and a.decoder:
        raise ConfigError.one("bench", "--app --decoder", "choose one: --app measures the app, "
                              "--decoder the decoder's training")
    if a.app:
        try:
            import playwright  # noqa: F401  (the browser driver of bench_app)
        except ImportError:
            raise ConfigError.one("bench", "--app", "needs the dev extras: pip install "
                                  "playwright (and Debian's chromium)") from None
        from .bench_app import run as run_app
        result = run_app(log=log)
    else:
        if a.decoder:
            from . import bench_decoder as mode
            model, dataset = a.model or "smollm2-135m", a.dataset or "arith-easy"
        else:
            from . import bench as mode
            model, dataset = a.model or "minilm-l6", a.dataset or "tweets-sentiment"
        result = mode.run(model=model, dataset=dataset, steps=a.steps, log=log)
        for k in mode.FIGURES:
            v = result.get(k)
            goal = result["goals"].get(k, "")
            met = result["goals_met"].get(k)
            log(f"{k:34s} {v:8.3f}  {('goal ' + goal) if goal else ''}"
                f"{'' if met is None else ('  met' if met else '  MISSED')}"
                if v is not None else f"{k:34s}      n/a")
    print(json.dumps(result))
    return 0


def cmd_sweep(a) -> int:
    """A grid or search over fields (dynsdpb/sweep.py): create the folder or continue one."""
    from tqdm import tqdm
    from . import sweep as SW
    if a.resume:
        out = Path(a.resume)
        spec = SW.load_sweep(out)
    else:
        base, methods, seeds, _ = _resolve(a, compare=True)
        grid, search = SW.parse_grid(a.grid), SW.parse_search(a.search)
        spec = None
        out = SW.create_sweep(a.out, base, methods, seeds, grid=grid, search=search,
                              trials=a.trials or 0, target=a.target or "",
                              storage=a.storage or "")
        spec = SW.load_sweep(out)
    steps = int(spec["base_config"]["steps"])
    n_runs = (len(SW.plan_runs(out)) if spec["kind"] == "grid" else
              int(spec["trials"]) * len(spec["methods"]) * len(spec["seeds"]))
    # One bar over every step of every unique run: tqdm's ETA is the sweep's.
    bar = tqdm(total=n_runs * steps, unit="step", dynamic_ncols=True, desc="sweep",
               disable=not sys.stderr.isatty() and os.environ.get("DYNSDPB_PROGRESS") != "1")
    counted: set[str] = set()

    def progress(arm: str, rec: dict) -> None:
        if "step" in rec:
            bar.update(1)
            bar.set_postfix(run=arm, loss=f"{rec['loss']:.3f}")
        elif rec.get("state") == "failed":
            bar.write(f"{arm}: failed: {rec.get('error')} (hint: {rec.get('hint')})",
                      file=sys.stderr)

    def on_run(key: str, reused: bool) -> None:
        if reused and key not in counted:   # shared or done before: its steps at once
            bar.update(steps)
        counted.add(key)

    stop = threading.Event()
    try:
        res = SW.run_sweep(out, progress=progress, stop=stop, on_run=on_run)
    except KeyboardInterrupt:
        stop.set()
        bar.close()
        print(f"interrupted; continue with: dynsdpb sweep --resume {out}", file=sys.stderr)
        return 130
    finally:
        bar.close()
    t = spec["target"]
    for c in res["cells"]:
        g = SW.score(c["summary"], t)
        print(f"{c['params']}  {t} - vanilla: {100 * g:+.2f} points  "
              f"({c['runs_done']}/{c['runs_total']} runs)")
    print(f"sweep in {out}; report with: dynsdpb report {out} --out {out}/report")
    return 0 if res["complete"] else 1


def cmd_report(a) -> int:
    from .report import write_report
    md = write_report(a.paths, a.out)
    print(md)
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr and exit 2, like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"dynsdpb: error: {message} (see `{self.prog} --help`)\n")


_METAVAR = {int: "N", float: "X", str: "TEXT", "int": "N", "float": "X", "str": "TEXT"}


def _add_config_flags(p: argparse.ArgumentParser, compare: bool) -> None:
    """One typed flag per RunConfig field, with the field's help: --lr 3e-5 --alpha-max 2.

    Values stay strings here and go through config.from_dict like --set and YAML values,
    so a bad one gets the same one-line message naming the field and the fix."""
    defaults = C.RunConfig()
    for group in dict.fromkeys(f.metadata["group"] for f in C.FIELDS.values()):
        g = p.add_argument_group(f"{group} fields (also --set NAME=VALUE)")
        for name, f in C.FIELDS.items():
            if f.metadata["group"] != group:
                continue
            help = f.metadata["help"].replace("%", "%%")
            if compare and name in ("method", "seed"):
                help = f"one {name} only: the same as --{name}s {name.upper()}."
            help += f" (default: {getattr(defaults, name)!r})"
            if f.type in (bool, "bool"):
                g.add_argument(_flag(name), dest="f_" + name, nargs="?", const="true",
                               metavar="true|false", help=help)
                g.add_argument("--no-" + name.replace("_", "-"), dest="f_" + name,
                               action="store_const", const="false", help=argparse.SUPPRESS)
                continue
            ch = f.metadata.get("choices")
            g.add_argument(_flag(name), dest="f_" + name,
                           metavar="{" + ",".join(ch) + "}" if ch else _METAVAR[f.type],
                           help=help)


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
    _add_config_flags(t, compare=False)
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
    _add_config_flags(c, compare=True)
    c.set_defaults(fn=cmd_compare)

    from .selftrain import LOOP_HELP, LOOPS, ROUND_STARTS
    st = sub.add_parser("selftrain", help="STaR or self-correction rounds, each method as the "
                        "fine-tuning policy (arms in lockstep per round)", epilog=precedence,
                        allow_abbrev=False)
    st.add_argument("--config", help="experiment YAML as the base config (as for compare)")
    st.add_argument("--demo", action="store_true", help="start from the CPU demo (arith-easy, "
                    "smollm2-135m, LoRA, 32 questions, 2 STaR rounds of 8 steps, vanilla vs "
                    "dynsdpb); flags override it")
    st.add_argument("--methods", help="comma-separated, e.g. vanilla,dynsdpb")
    st.add_argument("--seeds", help="comma-separated, e.g. 0,1,2")
    st.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="set a config field by name, e.g. --set lr=3e-4")
    st.add_argument("--out", default="runs/selftrain", help="folder to create")
    st.add_argument("--resume", metavar="DIR", help="continue the loop in DIR (the same as "
                    "`dynsdpb resume DIR`)")
    g = st.add_argument_group("loop options")
    for name in LOOP_FLAGS:
        meta = {"loop": "{" + ",".join(LOOPS) + "}", "round_start":
                "{" + ",".join(ROUND_STARTS) + "}", "rationalize": "true|false",
                "temperature": "X"}.get(name, "N")
        kw = dict(nargs="?", const="true") if name == "rationalize" else {}
        g.add_argument(_flag(name), dest="l_" + name, metavar=meta,
                       help=LOOP_HELP[name].replace("%", "%%"), **kw)
    _add_config_flags(st, compare=True)
    st.set_defaults(fn=cmd_selftrain, preset=None)

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

    b = sub.add_parser("bench", help="measure the workbench itself", allow_abbrev=False)
    b.add_argument("--app", action="store_true", help="step time of a training run with 0, 1 "
                   "and 4 Live tabs open (starts the app and headless Chromium; minutes)")
    b.add_argument("--json", action="store_true", help="progress on stderr; stdout holds only "
                   "the result as one JSON line")
    b.add_argument("--decoder", action="store_true", help="the figures for the decoder (LoRA as "
                   "in the preset decoder-quick-demo, top-k teacher cache), plus the cache's "
                   "bytes top-k / full")
    b.add_argument("--model", help="model of the speed/memory figures (default minilm-l6; "
                   "--decoder: smollm2-135m)")
    b.add_argument("--dataset", help="dataset of those figures (default tweets-sentiment; "
                   "--decoder: arith-easy)")
    b.add_argument("--steps", type=int, default=30, help="steps per measured run")
    b.set_defaults(fn=cmd_bench)

    sw = sub.add_parser("sweep", help="a grid or a search over fields (Optuna), each cell run "
                        "as methods x seeds, scored by the paired gain over vanilla",
                        epilog="Grid: --grid alpha_max=0.5,1,2,4 --grid lr=2e-5,5e-5 (every "
                        "cell). Search: --search alpha_max=0.1:4 --search tau_0=1:6 --trials 20 "
                        "(TPE, maximising the target's paired gain over vanilla). Baselines run "
                        "once per seed and per setting they read. " + precedence,
                        allow_abbrev=False)
    sw.add_argument("--config", help="experiment YAML as the base (see compare)")
    sw.add_argument("--preset", help="a shipped experiment as the base")
    sw.add_argument("--methods", help="comma-separated, must include vanilla (default: "
                    "vanilla,dlb,dynsdpb)")
    sw.add_argument("--seeds", help="comma-separated (default 0,1,2)")
    sw.add_argument("--grid", action="append", metavar="NAME=V1,V2",
                    help="a grid axis; repeat for more axes")
    sw.add_argument("--search", action="append", metavar="NAME=LOW:HIGH",
                    help="a search range (TPE); repeat for more fields; needs --trials")
    sw.add_argument("--trials", type=int, help="cells a search tries")
    sw.add_argument("--target", help="method whose gain over vanilla is scored (default: the "
                    "last distilling method)")
    sw.add_argument("--storage", help="shared Optuna database URL (e.g. postgresql://...) so "
                    "several machines work on one sweep; default: study.db in the folder")
    sw.add_argument("--out", default="runs/sweep", help="sweep folder to create")
    sw.add_argument("--resume", metavar="DIR", help="continue the sweep in DIR (after a kill "
                    "or on another machine sharing --storage)")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="set a field by name, e.g. --set label_noise=0.2")
    sw.add_argument("--dump", action="store_true", help=argparse.SUPPRESS)
    _add_config_flags(sw, compare=True)
    sw.set_defaults(fn=cmd_sweep)

    rp = sub.add_parser("report", help="report.md and PNG charts of experiments and sweeps")
    rp.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP",
                    help="experiment or sweep folders")
    rp.add_argument("--out", required=True, help="folder for report.md and the charts")
    rp.set_defaults(fn=cmd_report)
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
