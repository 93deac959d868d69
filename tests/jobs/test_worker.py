"""Training in a child process (JobManager isolation "process", the app's choice; issue #8).

The app's server must not share its GIL with training, so each experiment runs in
`python -m dynsdpb.jobs.worker`, supervised by the JobManager's thread. These tests drive real
child processes: the numbers equal an in-thread run, Stop checkpoints and resumes exactly,
a killed child fails its arms with a hint and the queue goes on, a child whose supervisor
vanished stops cleanly, and bad input comes back as the job's error.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dynsdpb.jobs.queue import JobManager
from dynsdpb.store import RunDir
from dynsdpb.experiment import create_experiment, run_experiment
from tests.conftest import tiny_config, write_tiny_csv


def _wait_for(pred, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def jm(tmp_path):
    m = JobManager(tmp_path / "runs", isolation="process")
    yield m
    m.close(wait=30)


def _numbers(rd: RunDir) -> list[tuple]:
    return [(r["step"], round(r["loss"], 6), r.get("val_accuracy")) for r in rd.metrics()]


def test_a_process_run_equals_a_thread_run(tmp_path, tiny_csv, jm):
    cfg = tiny_config(tiny_csv)
    ref = create_experiment(tmp_path / "ref", cfg, ["vanilla", "dynsdpb"], [0])
    run_experiment(ref)
    job = jm.submit(cfg, ["vanilla", "dynsdpb"], [0], name="proc")
    assert jm.wait_idle(180) and not job.error, job.error
    assert job.pid and job.pid != os.getpid()         # it really ran elsewhere
    for arm in ("vanilla-s0", "dynsdpb-s0"):
        rd = RunDir(job.exp_dir / arm)
        st = rd.status()
        assert st["state"] == "finished" and st["pid"] == job.pid, st
        assert _numbers(rd) == _numbers(RunDir(ref / arm))


def test_stop_checkpoints_in_the_child_and_resume_completes(tmp_path, tiny_csv, jm):
    cfg = tiny_config(tiny_csv, steps=400, checkpoint_every=0, eval_every=50)
    job = jm.submit(cfg, ["dynsdpb"], [0], name="stop-me")
    rd = RunDir(job.exp_dir / "dynsdpb-s0")
    assert _wait_for(lambda: len(rd.metrics()) >= 3)
    # the child's OpenMP threads wait passively (spinning ones starve next to the app)
    env = open(f"/proc/{job.pid}/environ", "rb").read().split(b"\0")
    want = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")   # a user's own setting wins
    assert f"OMP_WAIT_POLICY={want}".encode() in env
    assert jm.stop(job.id)
    assert jm.wait_idle(120)
    st = rd.status()
    assert st["state"] == "stopped", st
    n = st["step"]
    assert 3 <= n < 400 and len(rd.metrics()) == n and rd.has_checkpoint()
    again = jm.resume(job.id)
    assert _wait_for(lambda: len(rd.metrics()) > n + 2)
    jm.stop(again.id)
    assert jm.wait_idle(120)
    steps = [r["step"] for r in rd.metrics()]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > n


def test_a_killed_child_fails_its_arms_with_a_hint_and_the_queue_goes_on(tmp_path, tiny_csv,
                                                                         jm):
    cfg = tiny_config(tiny_csv, steps=400, checkpoint_every=0, eval_every=50)
    job = jm.submit(cfg, ["vanilla", "dynsdpb"], [0], name="oom-killed")
    after = jm.submit(tiny_config(tiny_csv, steps=3), ["vanilla"], [0], name="after")
    rd = RunDir(job.exp_dir / "dynsdpb-s0")
    assert _wait_for(lambda: len(rd.metrics()) >= 2)
    os.kill(job.pid, signal.SIGKILL)                   # what the kernel's OOM killer does
    assert jm.wait_idle(180)
    for arm in jm.arms(job.id):
        st = arm.status()
        assert st["state"] == "failed", st
        assert "killed (SIGKILL)" in st["error"] and "out of memory" in st["hint"], st
    assert "SIGKILL" in job.error
    assert [a.status()["state"] for a in jm.arms(after.id)] == ["finished"]
    assert jm._worker.is_alive()


def test_the_child_stops_cleanly_when_its_supervisor_vanishes(tmp_path, tiny_csv):
    cfg = tiny_config(tiny_csv, steps=400, checkpoint_every=0, eval_every=50)
    exp = create_experiment(tmp_path / "runs", cfg, ["dynsdpb"], [0])
    sup = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    child = subprocess.Popen([sys.executable, "-m", "dynsdpb.jobs.worker", str(exp),
                              "--parent", str(sup.pid)], cwd=tmp_path,
                             env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        rd = RunDir(exp / "dynsdpb-s0")
        assert _wait_for(lambda: len(rd.metrics()) >= 2)
        sup.kill()                                     # the app's server, killed
        sup.wait()
        assert child.wait(60) == 0
    finally:
        for p in (sup, child):
            if p.poll() is None:
                p.kill()
    st = rd.status()
    assert st["state"] == "stopped" and rd.has_checkpoint(), st


def test_bad_input_found_in_the_child_is_the_jobs_error(tmp_path, jm):
    csv = write_tiny_csv(tmp_path / "gone.csv")
    job_cfg = tiny_config(csv, steps=3)
    jm.close(wait=5)                                   # hold the queue while we break it
    m = JobManager(tmp_path / "runs2", isolation="process", autostart=False)
    try:
        job = m.submit(job_cfg, ["vanilla"], [0], name="vanishing-data")
        csv.unlink()                                   # deleted after submit, before it ran
        m.start()
        assert m.wait_idle(120)
        st = RunDir(job.exp_dir / "vanilla-s0").status()
        assert st["state"] == "failed" and "gone.csv" in st["error"], st
        assert "gone.csv" in job.error and "Traceback" not in job.error
    finally:
        m.close(wait=5)
