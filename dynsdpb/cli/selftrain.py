"""`dynsdpb selftrain`: STaR or self-correction rounds, each method as the rounds' trainer;
its flags and its progress lines."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from dynsdpb import config as C
from dynsdpb.cli.args import (add_config_flags, fields_from_args, flag, fresh_out, only_resume,
                              resolve)
from dynsdpb.errors import ConfigError


LOOP_FLAGS = ("loop", "rounds", "questions", "samples", "temperature", "rationalize",
              "round_start", "step_growth", "carry_teacher")


def selftrain_setup(a):
    """(base config, loop options, methods, seeds) of `dynsdpb selftrain`: without --config,
    the Self-training page's CPU demo settings (CPU_DEMO) under the flags; with --config, that
    experiment file as for `compare`."""
    from dynsdpb.selftrain import run as S
    if a.config:
        if a.demo:
            raise ConfigError.one("--demo", "", "give --config or --demo, not both")
        base, methods, seeds, _ = resolve(a, compare=True)
        start: dict = {}
    else:                    # the CPU demo (also what --demo asks for)
        base = C.from_dict({**S.CPU_DEMO["config"], **fields_from_args(a)}, check=False)
        methods = C.parse_methods(a.methods) if a.methods else list(S.CPU_DEMO["methods"])
        seeds = (C.parse_int_list("seeds", a.seeds) if a.seeds else list(S.CPU_DEMO["seeds"]))
        start = dict(S.CPU_DEMO["loop"])
    given = {k: v for k in LOOP_FLAGS if (v := getattr(a, "l_" + k, None)) is not None}
    return base, S.loop_from_dict({**start, **given}), methods, seeds


def expected_line(seconds: float) -> str:
    return (f"expected time: about {max(1, round(seconds / 60))} min on a 2-core CPU (a rough "
            "estimate; a GPU is much faster). Ctrl-C stops it resumably.")


def cmd_selftrain(a) -> int:
    """STaR / self-correction rounds (selftrain.py): the config as for `compare` with
    --config, else the CPU demo below the flags; the loop options from their flags. Prints
    the expected time before it starts."""
    from dynsdpb.experiment import preflight
    from dynsdpb.selftrain import run as S
    from dynsdpb.store import check_out
    if a.resume:
        only_resume(a)
        S.read_meta(a.resume, "--resume")
        return selftrain_with_progress(Path(a.resume), resume=True)
    base, loop, methods, seeds = selftrain_setup(a)
    S.check_selftrain(base, loop, methods, seeds)   # before --out is created
    out_arg = a.out or "runs/selftrain"
    check_out(out_arg)
    for task in preflight([base]):              # its data, model and device, once
        S.check_answers(task, base.dataset)
        for w in task.data.warnings:
            print(f"dynsdpb: warning: {w}", file=sys.stderr)
    for m in methods:
        if m in ("dlb", "dynsdpb") and (w := C.topk_temperature_warning(base.replace(method=m))):
            print(f"dynsdpb: warning: {m}: {w}", file=sys.stderr)
    print(expected_line(S.expected_seconds(base, loop, methods, seeds)), file=sys.stderr,
          flush=True)
    out = fresh_out(out_arg)
    S.create_selftrain(out, base, loop, methods, seeds, name=base.name)
    return selftrain_with_progress(out)


def selftrain_with_progress(path: Path, resume: bool = False) -> int:
    from dynsdpb.selftrain import run as S
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
    from dynsdpb.selftrain.run import LOOP_HELP, LOOPS, ROUND_STARTS
    st = sub.add_parser("selftrain", help="STaR or self-correction rounds, each method as the "
                        "fine-tuning policy (arms in lockstep per round)", epilog=precedence,
                        allow_abbrev=False)
    st.add_argument("--config", help="experiment YAML as the base config (as for compare)")
    st.add_argument("--demo", action="store_true", help="start from the CPU demo (arith-easy, "
                    "smollm2-135m, LoRA, 32 questions, 2 STaR rounds of 8 and 10 steps from "
                    "the base model, vanilla vs dynsdpb): the default without --config; flags "
                    "override it")
    st.add_argument("--methods", help="comma-separated, e.g. vanilla,dynsdpb")
    st.add_argument("--seeds", help="comma-separated, e.g. 0,1,2")
    st.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="set a config field by name, e.g. --set lr=3e-4")
    st.add_argument("--out", help="folder to create (default runs/selftrain)")
    st.add_argument("--resume", metavar="DIR", help="continue the loop in DIR (the same as "
                    "`dynsdpb resume DIR`)")
    g = st.add_argument_group("loop options")
    for name in LOOP_FLAGS:
        meta = {"loop": "{" + ",".join(LOOPS) + "}", "round_start":
                "{" + ",".join(ROUND_STARTS) + "}", "rationalize": "true|false",
                "carry_teacher": "true|false", "temperature": "X",
                "step_growth": "X"}.get(name, "N")
        kw = dict(nargs="?", const="true") if name in ("rationalize", "carry_teacher") else {}
        g.add_argument(flag(name), dest="l_" + name, metavar=meta,
                       help=LOOP_HELP[name].replace("%", "%%"), **kw)
    add_config_flags(st, compare=True)
    st.set_defaults(fn=cmd_selftrain, preset=None)
