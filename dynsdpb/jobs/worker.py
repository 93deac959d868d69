"""`python -m dynsdpb.jobs.worker EXP_DIR [--resume]`: train one experiment in a process of its own.

The app's JobManager starts this process for each experiment and supervises it from a
background thread. Training then shares neither the GIL nor the heap with the Streamlit
server, so however many Live tabs rerun their scripts, they cannot stall a step (issue #8:
one tab made a step 3.3x slower when training ran in a thread of the server). What the
process writes is what the pages read: the run folders.

Stop: SIGTERM or SIGINT sets the stop event; the current step finishes, each live arm saves
a checkpoint and reads `stopped`. If the supervising process goes away (the app was killed),
the same happens, so a restarted app can resume the runs.

Exit codes: 0 the experiment ran (whatever each arm's final state), 2 refused (bad input: the
reason is in each arm's status.json), 1 an unexpected error (arms still queued or running
are marked failed; the traceback is appended to <runs_dir>/worker.log).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_REFUSED = 0, 1, 2
SUPERVISOR_TOKEN = "DYNSDPB_SUPERVISOR_TOKEN"   # env: the JobManager's store.PROCESS_TOKEN


def _watch_parent(stop: threading.Event, parent: int) -> None:
    # The supervisor died without a word (the app was killed): stop cleanly, with a
    # checkpoint, rather than train on unseen and block a restarted app from resuming.
    from dynsdpb.store import pid_alive
    while not stop.wait(1.0):
        if not pid_alive(parent):
            stop.set()
            return


def mark_unfinished_failed(exp_dir: Path, error: str, hint: str) -> None:
    """Arms left queued or running by a process that ended abnormally read `failed`."""
    from dynsdpb.store import ExperimentDir
    from dynsdpb.store import RunDir
    # a self-training folder: its own status and the arms of every round experiment
    loop = (exp_dir / "selftrain.json").is_file()
    exps = [exp_dir] + (sorted(exp_dir.glob("round-[0-9]*")) if loop else [])
    rds = [rd for e in exps for rd in ExperimentDir(e).arms()] + ([RunDir(exp_dir)] if loop else [])
    for rd in rds:
        if rd.raw_status().get("state") in ("queued", "running"):
            rd.set_status("failed", error=error, hint=hint)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dynsdpb.jobs.worker")
    p.add_argument("exp_dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--parent", type=int, default=None,
                   help="pid of the supervisor; stop when it goes away")
    a = p.parse_args(argv)
    exp_dir = Path(a.exp_dir)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if a.parent:
        threading.Thread(target=_watch_parent, args=(stop, a.parent), daemon=True).start()

    from dynsdpb import store
    # The supervisor marked these arms queued under its owner token: adopt it, or the arms
    # would look busy in another live process (the supervisor) and refuse to resume.
    store.PROCESS_TOKEN = os.environ.get(SUPERVISOR_TOKEN) or store.PROCESS_TOKEN

    from dynsdpb.errors import ConfigError, TrainingFault
    from dynsdpb.experiment import run_experiment
    from dynsdpb.selftrain.run import is_selftrain, run_selftrain
    # a self-training folder (selftrain.json) runs its loop of experiments
    run = run_selftrain if is_selftrain(exp_dir) else run_experiment
    try:
        run(exp_dir, stop=stop, resume=a.resume)
        return EXIT_OK
    except (ConfigError, TrainingFault) as e:
        print(f"dynsdpb worker: refused: {e}", file=sys.stderr)   # already in status.json
        return EXIT_REFUSED
    except Exception as e:  # noqa: BLE001 - say what happened where the app can show it
        error = f"{type(e).__name__}: {e}"
        mark_unfinished_failed(exp_dir, error, "unexpected error; details in worker.log")
        try:
            with open(exp_dir.parent / "worker.log", "a", encoding="utf-8") as f:
                f.write(f"--- {time.ctime()} {exp_dir.name}\n{traceback.format_exc()}\n")
        except OSError:
            pass
        print(f"dynsdpb worker: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
