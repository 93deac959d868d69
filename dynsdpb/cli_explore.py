"""`dynsdpb` exploration commands: selftrain (STaR / self-correction rounds), sweep (a grid
or a search over fields), report and bench, each with its flags (add_*, called by
cli.build_parser in the order of `dynsdpb --help`) and its progress lines. cli.py is the
entry point and holds the shared flag handling."""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from . import config as C
from .cli_args import add_config_flags, fields_from_args, flag, fresh_out, resolve
from .errors import ConfigError


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
        base = C.from_dict({**S.CPU_DEMO["config"], **fields_from_args(a)}, check=False)
        methods = C.parse_methods(a.methods) if a.methods else list(S.CPU_DEMO["methods"])
        seeds = (C.parse_int_list("seeds", a.seeds) if a.seeds else list(S.CPU_DEMO["seeds"]))
    else:
        base, methods, seeds, _ = resolve(a, compare=True)
    given = {k: v for k in LOOP_FLAGS if (v := getattr(a, "l_" + k, None)) is not None}
    loop = S.loop_from_dict({**(S.CPU_DEMO["loop"] if a.demo else {}), **given})
    S.check_selftrain(base, loop, methods, seeds)   # before --out is created
    out = fresh_out(a.out)
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


def add_selftrain(sub, precedence: str) -> None:
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
        g.add_argument(flag(name), dest="l_" + name, metavar=meta,
                       help=LOOP_HELP[name].replace("%", "%%"), **kw)
    add_config_flags(st, compare=True)
    st.set_defaults(fn=cmd_selftrain, preset=None)


def cmd_bench(a) -> int:
    import json
    # --json: progress on stderr, so stdout holds only the JSON line.
    out = sys.stderr if a.json else sys.stdout
    log = lambda m: print(m, file=out, flush=True)  # noqa: E731
    if a.app and a.decoder:
        raise ConfigError.one("bench", "--app --decoder", "choose one: --app measures the app, "
                              "--decoder the decoder's training")
    if a.app:
        import importlib.util
        if importlib.util.find_spec("playwright") is None:    # bench_app's browser driver
            raise ConfigError.one("bench", "--app", "needs the dev extras: pip install "
                                  "playwright (and Debian's chromium)")
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


def add_bench(sub) -> None:
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


def cmd_sweep(a) -> int:
    """A grid or search over fields (dynsdpb/sweep.py): create the folder or continue one."""
    from tqdm import tqdm
    from . import sweep as SW
    from . import sweep_read as SR
    from . import sweep_run as SX
    if a.resume:
        out = Path(a.resume)
        spec = SW.load_sweep(out)
    else:
        base, methods, seeds, _ = resolve(a, compare=True)
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
        res = SX.run_sweep(out, progress=progress, stop=stop, on_run=on_run)
    except KeyboardInterrupt:
        stop.set()
        bar.close()
        print(f"interrupted; continue with: dynsdpb sweep --resume {out}", file=sys.stderr)
        return 130
    finally:
        bar.close()
    t = spec["target"]
    for c in res["cells"]:
        g = SR.score(c["summary"], t)
        print(f"{c['params']}  {t} - vanilla: {100 * g:+.2f} points  "
              f"({c['runs_done']}/{c['runs_total']} runs)")
    print(f"sweep in {out}; report with: dynsdpb report {out} --out {out}/report")
    return 0 if res["complete"] else 1


def add_sweep(sub, precedence: str) -> None:
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
    add_config_flags(sw, compare=True)
    sw.set_defaults(fn=cmd_sweep)


def cmd_report(a) -> int:
    from .report import write_report
    md = write_report(a.paths, a.out)
    print(md)
    return 0


def add_report(sub) -> None:
    rp = sub.add_parser("report", help="report.md and PNG charts of experiments and sweeps")
    rp.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP",
                    help="experiment or sweep folders")
    rp.add_argument("--out", required=True, help="folder for report.md and the charts")
    rp.set_defaults(fn=cmd_report)
