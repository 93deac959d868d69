"""`dynsdpb sweep`: a grid or a search over fields (Optuna), each cell run as methods x seeds;
its flags and progress lines."""
from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path

from dynsdpb.cli.args import add_config_flags, fresh_out, only_resume, resolve
from dynsdpb.store import read_metrics


def cmd_sweep(a) -> int:
    """A grid or search over fields (dynsdpb/sweep/spec.py): create the folder or continue
    one. A new sweep is checked whole (fields, cells, storage, --out, each cell's data, model and
    device) before its folder is made."""
    from tqdm import tqdm
    from dynsdpb.experiment import preflight
    from dynsdpb.store import check_out
    from dynsdpb.sweep import spec as SW
    from dynsdpb.sweep import read as SR
    from dynsdpb.sweep import run as SX
    from dynsdpb.integrations.trackers import check_report_to
    check_report_to(a.report_to)
    warned: set[str] = set()

    def warn(ws) -> None:
        for w in ws:
            if w not in warned:
                warned.add(w)
                print(f"dynsdpb: warning: {w}", file=sys.stderr)
    if a.resume:
        only_resume(a, keep=("report_to",))   # its tracker applies to the runs left
        out = Path(a.resume)
        spec = SW.load_sweep(out, "--resume")
    else:
        base, methods, seeds, _ = resolve(a, compare=True)
        grid, search = SW.parse_grid(a.grid), SW.parse_search(a.search)
        target, cfgs = SW.check_sweep(base, methods, seeds, grid=grid, search=search,
                                      trials=a.trials or 0, target=a.target or "")
        if a.dump:       # the sweep.json it would write; nothing is loaded or created
            import json
            print(json.dumps({"kind": "grid" if grid else "search", "grid": grid,
                              "search": search, "trials": a.trials or 0, "methods": methods,
                              "seeds": seeds, "target": target, "storage": a.storage or "",
                              "base_config": base.to_dict()}, indent=2))
            return 0
        if a.storage:
            SX.check_storage(a.storage)
        out_arg = a.out or "runs/sweep"
        check_out(out_arg)
        for task in preflight(cfgs):
            warn(task.data.warnings)
        made = not Path(out_arg).exists()
        out = fresh_out(out_arg)
        try:
            SW.create_sweep(out, base, methods, seeds, grid=grid, search=search,
                            trials=a.trials or 0, target=target, storage=a.storage or "")
        except BaseException:
            if made:
                shutil.rmtree(out, ignore_errors=True)
            raise
        spec = SW.load_sweep(out)
    steps = int(spec["base_config"]["steps"])
    n_runs = (len(SW.plan_runs(out)) if spec["kind"] == "grid" else
              int(spec["trials"]) * len(spec["methods"]) * len(spec["seeds"]))
    # One bar over every step of every unique run: tqdm's ETA is the sweep's.
    bar = tqdm(total=n_runs * steps, unit="step", dynamic_ncols=True, desc="sweep",
               disable=not sys.stderr.isatty() and os.environ.get("DYNSDPB_PROGRESS") != "1")
    counted: set[str] = set()
    tracker = None
    if a.report_to == "tensorboard":
        from dynsdpb.integrations.trackers import TensorBoardScalars
        tracker = TensorBoardScalars(out / "tensorboard")

    def progress(arm: str, rec: dict) -> None:
        if "step" in rec:
            bar.update(1)
            bar.set_postfix(run=arm, loss=f"{rec['loss']:.3f}")
        elif rec.get("state") == "failed":
            bar.write(f"{arm}: failed: {rec.get('error')} (hint: {rec.get('hint')})",
                      file=sys.stderr)
        elif rec.get("state") == "warning":
            warn(rec.get("warnings", []))

    def on_run(key: str, reused: bool) -> None:
        if reused and key not in counted:   # shared or done before: its steps at once
            bar.update(steps)
        if tracker is not None and key not in counted:   # each run once, when it is done
            d = SW.run_dir(out, key)
            for arm in sorted(p.name for p in d.glob("*-s*") if p.is_dir()):
                tracker.write_all(f"{key}/{arm}", read_metrics(d / arm / "metrics.jsonl"))
        counted.add(key)

    stop = threading.Event()
    try:
        res = SX.run_sweep(out, progress=progress, stop=stop, on_run=on_run)
    except KeyboardInterrupt:
        stop.set()
        bar.close()
        print(f"interrupted; continue with: dynsdpb sweep --resume {out}", file=sys.stderr)
        return 130
    except OSError as e:    # e.g. a full disk under the study database: the runs are kept
        bar.close()
        print(f"dynsdpb: sweep failed: {type(e).__name__}: {e} (hint: free space, then continue "
              f"with: dynsdpb sweep --resume {out})", file=sys.stderr)
        return 1
    finally:
        bar.close()
        if tracker is not None:
            tracker.close()
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
    sw.add_argument("--out", help="sweep folder to create (default runs/sweep)")
    sw.add_argument("--resume", metavar="DIR", help="continue the sweep in DIR (after a kill "
                    "or on another machine sharing --storage)")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="set a field by name, e.g. --set label_noise=0.2")
    sw.add_argument("--dump", action="store_true", help="print the sweep.json it would "
                    "write (after every check that needs no data) and exit")
    sw.add_argument("--report-to", default="none", choices=("none", "tensorboard"),
                    help="also write each finished run's records as TensorBoard scalars, one "
                    "TensorBoard run per cell and arm, in OUT/tensorboard (pip install "
                    "'dynsdpb[tensorboard]')")
    add_config_flags(sw, compare=True)
    sw.set_defaults(fn=cmd_sweep)
