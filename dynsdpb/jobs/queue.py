"""Background jobs: a queue of experiments and one supervising thread per device.

The app holds one JobManager (via `st.cache_resource`); the CLI can use it too. The worker
never calls Streamlit and never waits on a reader: it writes run folders, and every reader
(the app's pages, another process) polls those files. One experiment runs per device at a
time; the others wait in a visible queue. Closing the browser does not touch the worker.

Isolation: `process` (the app's choice) trains each experiment in a child process
(`python -m dynsdpb.jobs.worker`, see worker.py) that the thread supervises: Stop sends SIGTERM,
a crash or a kill marks the unfinished arms failed with a hint. Training in a thread of the
Streamlit server shared the GIL with every page rerun and ran 3.3x slower with one Live tab
open (issue #8). `thread` trains in the supervising thread itself: no process start-up
(about 3-6 s of imports), and tests can patch the engine; the CLI and tests use it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from dynsdpb.config import RunConfig
from dynsdpb.errors import ConfigError, TrainingFault
from dynsdpb.store import (ExperimentDir, RunDir, atomic_write_bytes, find_experiments, make_out,
                           safe_name)


@dataclass
class Job:
    exp_dir: Path
    resume: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"          # queued | running | done
    error: str = ""
    submitted: float = field(default_factory=time.time)
    pid: int | None = None         # the training process (isolation "process")

    @property
    def id(self) -> str:
        return self.exp_dir.name


ISOLATIONS = ("thread", "process")


class JobManager:
    def __init__(self, runs_dir: str | Path = "runs", autostart: bool = True,
                 isolation: str = "thread"):
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, not {isolation!r}")
        self.isolation = isolation
        self.runs_dir = Path(runs_dir)
        # the store's one rule for a folder the workbench writes into: a ConfigError naming
        # the fix (a file, a read-only folder), not an OSError on the first page that asks
        make_out(self.runs_dir, "runs directory", reuse=True)
        self._lock = threading.RLock()
        self._queue: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._current: Job | None = None
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._worker: threading.Thread | None = None
        if autostart:
            self.start()

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._loop, name="dynsdpb-worker",
                                                daemon=True)
                self._worker.start()

    def close(self, wait: float = 0) -> None:
        """Stop everything (used by cache_resource's on_release and tests)."""
        with self._lock:
            self._closed = True
            for j in self._queue:
                j.stop.set()
            if self._current:
                self._current.stop.set()
            self._wake.notify_all()
        if wait and self._worker:
            self._worker.join(wait)

    # -- submitting ---------------------------------------------------------------------
    def submit(self, base: RunConfig, methods: list[str], seeds: list[int], name: str = "",
               upload: tuple[str, bytes] | None = None, exp_dir: Path | None = None) -> Job:
        """Validate, write the experiment folder (all arms queued) and enqueue it.
        exp_dir: where (a sweep's runs/<key>, sweep.py); default a new folder in runs_dir."""
        from dynsdpb.experiment import check_experiment, create_experiment
        check_experiment(base, methods, seeds)  # every arm, once, before anything is written
        exp = Path(exp_dir) if exp_dir is not None else None
        if upload is not None:
            # Uploaded data lives inside the experiment folder, so the run can be resumed or
            # relaunched later and nothing is written outside the runs directory.
            from dynsdpb.store import unique_dir
            from dynsdpb.tables import read_table
            from dynsdpb.tasks import check_rows
            fname, data = upload
            # Browsers may send a Windows path; keep the suffix, sanitize the stem.
            p = Path(str(fname).replace("\\", "/"))
            suffix = p.suffix.lower() if p.suffix[1:].isalnum() else ""
            fname = safe_name(p.stem, "upload") + suffix
            # validate before writing anything: format, columns, labels, split sizes
            rows, warnings = read_table(fname, data)
            check_rows(base, rows, fname, warnings)     # classification or prompt/target
            stamp = time.strftime("%Y%m%d-%H%M%S")
            exp = unique_dir(self.runs_dir, name or f"{stamp}-{Path(fname).stem}")
            dest = exp / "data" / fname
            atomic_write_bytes(dest, data)
            base = base.replace(dataset=str(dest))
        with self._lock:
            exp = create_experiment(self.runs_dir, base, methods, seeds, name, exp_dir=exp,
                                    check=False)
            return self._enqueue(Job(exp))

    def _enqueue(self, job: Job, key: str | None = None) -> Job:
        """Register a job and wake the supervisor (under self._lock). `key`: the id a resume
        was asked for, else the job's own."""
        self._jobs[key or job.id] = job
        self._queue.append(job)
        self._wake.notify_all()
        return job

    def submit_selftrain(self, base: RunConfig, loop, methods: list[str], seeds: list[int],
                         name: str = "") -> Job:
        """Queue a self-training loop (selftrain.py; `loop` a LoopConfig) like an experiment.
        The worker tells the two apart by the folder (selftrain.json)."""
        from dynsdpb.selftrain.run import check_selftrain, create_selftrain
        from dynsdpb.store import unique_dir
        check_selftrain(base, loop, methods, seeds)   # before any folder is made
        with self._lock:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = unique_dir(self.runs_dir, name or f"{stamp}-selftrain-{loop.loop}")
            create_selftrain(path, base, loop, methods, seeds, name)
            return self._enqueue(Job(path))

    def resume(self, exp_id: str) -> Job:
        from dynsdpb.selftrain.run import is_selftrain
        if is_selftrain(self.runs_dir / safe_name(exp_id)):
            return self._resume_selftrain(exp_id)
        exp = self._exp_path(exp_id)
        with self._lock:
            j = self._jobs.get(exp_id)
            if j and j.state in ("queued", "running") and not j.stop.is_set():
                return j
            # (a job that is stopping finishes its step first; this resume queues behind it)
            from dynsdpb.store import check_not_busy
            check_not_busy(self.arms(exp_id), exp_id)
            for rd in ExperimentDir(exp).arms():
                if rd.status().get("state") != "finished":
                    rd.set_status("queued")
            return self._enqueue(Job(exp, resume=True), exp_id)

    def _resume_selftrain(self, exp_id: str) -> Job:
        from dynsdpb.selftrain.run import read_meta
        path = self.runs_dir / safe_name(exp_id)
        read_meta(path, "experiment")                # damaged: say so now
        with self._lock:
            j = self._jobs.get(exp_id)
            if j and j.state in ("queued", "running") and not j.stop.is_set():
                return j
            from dynsdpb.store import check_not_busy
            check_not_busy([RunDir(path)], exp_id)
            return self._enqueue(Job(path, resume=True), exp_id)

    def stop(self, exp_id: str) -> bool:
        """Queued: dequeue and mark stopped. Running: finish the current step, save, stop."""
        with self._lock:
            j = self._jobs.get(exp_id)
            if j is None:
                return False
            j.stop.set()
            if j in self._queue:
                self._queue.remove(j)
                j.state = "done"
                for rd in ExperimentDir(j.exp_dir).arms():   # (a sweep's run lives deeper)
                    if rd.raw_status().get("state") == "queued":
                        rd.set_status("stopped")
            return True

    # -- reading ------------------------------------------------------------------------
    def _exp_path(self, exp_id: str) -> Path:
        exp = ExperimentDir(self.runs_dir / safe_name(exp_id))
        if not exp.exists():
            raise ConfigError.one("experiment", exp_id, "no such experiment in the runs directory")
        exp.check()  # damaged: say so now, not in the worker
        return exp.path

    def arms(self, exp_id: str) -> list[RunDir]:
        return ExperimentDir(self.runs_dir / safe_name(exp_id)).arms()

    def queue(self) -> list[str]:
        with self._lock:
            return [j.id for j in self._queue]

    def current(self) -> str | None:
        with self._lock:
            return self._current.id if self._current else None

    def job(self, exp_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(exp_id)

    def experiments(self) -> list[Path]:
        return find_experiments(self.runs_dir)

    def is_active(self) -> bool:
        with self._lock:
            return self._current is not None or bool(self._queue)

    def wait_idle(self, timeout: float = 60) -> bool:
        end = time.time() + timeout
        while time.time() < end:
            if not self.is_active():
                return True
            time.sleep(0.05)
        return False

    # -- the worker ---------------------------------------------------------------------
    def _loop(self) -> None:
        from dynsdpb.experiment import run_experiment
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wake.wait(1.0)
                if self._closed:
                    return
                job = self._queue.popleft()
                job.state = "running"
                self._current = job
            try:
                if job.stop.is_set():
                    pass
                elif self.isolation == "process":
                    self._run_in_process(job)
                else:
                    # a self-training folder (selftrain.json) runs its loop of experiments
                    from dynsdpb.selftrain.run import is_selftrain, run_selftrain
                    run = run_selftrain if is_selftrain(job.exp_dir) else run_experiment
                    run(job.exp_dir, stop=job.stop, resume=job.resume)
            except (ConfigError, TrainingFault) as e:
                job.error = str(e)  # already written to each arm's status.json
            except Exception as e:  # noqa: BLE001 - the worker must survive any run
                job.error = f"{type(e).__name__}: {e}"
                for rd in self.arms(job.id):
                    if rd.raw_status().get("state") in ("queued", "running"):
                        rd.set_status("failed", error=job.error,
                                      hint="unexpected error; details in worker.log")
                try:
                    with open(self.runs_dir / "worker.log", "a", encoding="utf-8") as f:
                        f.write(f"--- {time.ctime()} {job.id}\n{traceback.format_exc()}\n")
                except OSError:
                    pass
            finally:
                with self._lock:
                    job.state = "done"
                    self._current = None

    def _run_in_process(self, job: Job) -> None:
        """Run one experiment in `python -m dynsdpb.jobs.worker` and wait for it, relaying Stop."""
        from dynsdpb import store
        from dynsdpb.jobs.worker import EXIT_OK, EXIT_REFUSED, SUPERVISOR_TOKEN, mark_unfinished_failed
        pkg_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, **{SUPERVISOR_TOKEN: store.PROCESS_TOKEN})
        # OpenMP threads that spin while they wait starve when anything else wants the CPU
        # (the app's reruns, the browser drawing Live): measured on this 2-core machine with
        # one other busy process, a MiniLM-sized step took 3.3 s spinning, 1.4 s passive.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        # the child imports the same dynsdpb as this process, installed or not
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "dynsdpb.jobs.worker", str(job.exp_dir),
               "--parent", str(os.getpid())] + (["--resume"] if job.resume else [])
        log_path = job.exp_dir / "process.log"   # what the training process printed
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
        job.pid = proc.pid
        signalled = False
        while True:
            try:
                rc = proc.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                if job.stop.is_set() and not signalled:
                    proc.send_signal(signal.SIGTERM)   # finish the step, checkpoint, stop
                    signalled = True
        if rc == EXIT_OK:
            return
        tail = _last_line(log_path)
        if rc == EXIT_REFUSED:
            job.error = tail.removeprefix("dynsdpb worker: refused: ")
            return
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
            why = f"the training process was killed ({name})"
            hint = ("the system may have run out of memory: lower batch_size or max_len, "
                    "then resume from the last checkpoint" if -rc == signal.SIGKILL else
                    "resume from the last checkpoint")
        else:
            why = f"the training process ended with exit code {rc}"
            hint = "details in process.log and worker.log; the metrics so far are kept"
        job.error = f"{why}: {tail}" if tail else why
        mark_unfinished_failed(job.exp_dir, why, hint)


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""
