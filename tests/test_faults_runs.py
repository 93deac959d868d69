"""Fault injection, part 2 (issue 4): faults during training, crashes, concurrency, safety.

NaN/inf and out-of-memory are injected deterministically (a patched forward or gradient hook
at a chosen step of a chosen arm); a real `dynsdpb compare` subprocess is killed with SIGKILL
and resumed. Every run uses the tiny random BERT and a generated CSV, so each takes about a
second. No test touches the network.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import dynsdpb.engine.train as T
from dynsdpb.cli import main as cli
from dynsdpb.errors import ConfigError
from dynsdpb.jobs.queue import JobManager
from dynsdpb.store import (MetricsWriter, RunDir, atomic_write_bytes, find_runs, read_metrics,
                           unique_dir)
from dynsdpb.experiment import create_experiment, run_experiment
from dynsdpb.tasks import prepare
from dynsdpb.errors import NAN_HINT, OOM_HINT
from dynsdpb.engine.train import Arm
from tests.conftest import tiny_config, write_tiny_csv

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = {"time", "wall_time", "samples_per_s"}
TINY_ARGS = ["--model", "tiny-random-bert", "--steps", "8", "--batch-size", "4", "--max-len",
             "16", "--set", "val_size=10", "--set", "test_size=10", "--set", "eval_every=2",
             "--set", "checkpoint_every=2", "--set", "lr=1e-3", "--set", "probe_size=8",
             "--set", "save_model=false", "--set", "warmup_ratio=0"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two shared cores: one torch thread is faster here, and makes an in-process run and a
    subprocess (OMP_NUM_THREADS=1) compute alike."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def strip(recs):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in recs]


def assert_same_records(got, want, tol=1e-6):
    got, want = strip(got), strip(want)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float) and isinstance(b[k], float):
                assert math.isclose(a[k], b[k], rel_tol=tol, abs_tol=tol), \
                    (a["step"], k, a[k], b[k])
            else:
                assert a[k] == b[k], (a["step"], k, a[k], b[k])


def inject(monkeypatch, when, fault):
    """Run `fault(arm)` (a context manager) around the step of the arms `when(arm)` picks."""
    orig = Arm._step

    def _step(self):
        if when(self):
            with fault(self):
                return orig(self)
        return orig(self)
    monkeypatch.setattr(Arm, "_step", _step)


@contextmanager
def forward_replaced(arm, fwd):
    """The model's forward is `fwd` inside the block (an instance attribute shadowing the
    class method, deleted afterwards)."""
    arm.model.forward = fwd
    try:
        yield
    finally:
        del arm.model.forward


def forward_returns(arm, make):
    """The model's forward pass returns `make(logits)` instead of its logits."""
    orig = arm.model.forward

    def fwd(*a, **kw):
        out = orig(*a, **kw)
        out.logits = make(out.logits)
        return out
    return forward_replaced(arm, fwd)


def forward_raises(arm, make_exc):
    def fwd(*a, **kw):
        raise make_exc()
    return forward_replaced(arm, fwd)


@contextmanager
def nan_gradients(arm):
    p = next(arm.model.parameters())
    h = p.register_hook(lambda g: g * float("nan"))
    try:
        yield
    finally:
        h.remove()


def finite_state(st: dict) -> bool:
    return all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())


# --------------------------------------------------------------------------------------
# NaN / inf

@contextmanager
def infinite_loss(arm):
    import dynsdpb.encoder.task as TK        # the encoder tasks' loss (task.loss calls it)
    orig = TK.dynsdpb_loss

    def loss(*a, **kw):
        parts = orig(*a, **kw)
        parts.total = parts.total * float("inf")
        return parts
    TK.dynsdpb_loss = loss
    try:
        yield
    finally:
        TK.dynsdpb_loss = orig


@pytest.mark.parametrize("where", ["loss", "inf-loss", "gradient"])
def test_nan_fails_one_arm_with_step_and_hint_and_keeps_last_good_checkpoint(
        where, tiny_csv, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_csv)  # 6 steps, checkpoint every 2
    exp = create_experiment(tmp_path / "runs", cfg, ["vanilla", "dlb", "dynsdpb"], [0])
    fault = {"loss": lambda arm: forward_returns(arm, lambda z: z * float("nan")),
             "inf-loss": infinite_loss, "gradient": nan_gradients}[where]
    # step 5 of the dlb arm (0-based step_idx 4): the last good checkpoint is step 4's
    inject(monkeypatch, lambda a: a.cfg.method == "dlb" and a.step_idx == 4, fault)
    events = []
    out = run_experiment(exp, progress=lambda arm, rec: events.append((arm, rec)))
    assert out["states"] == {"vanilla-s0": "finished", "dlb-s0": "failed",
                             "dynsdpb-s0": "finished"}
    rd = RunDir(exp / "dlb-s0")
    st = rd.status()
    assert st["state"] == "failed" and st["failed_step"] == 5 and st["step"] == 4
    assert "at step 5" in st["error"]
    assert {"loss": "loss is nan", "inf-loss": "loss is inf",
            "gradient": "gradient norm is nan"}[where] in st["error"]
    assert st["hint"] == NAN_HINT and "lower lr" in st["hint"]
    assert ("dlb-s0", {"state": "failed", "error": st["error"], "hint": NAN_HINT}) in events
    # what was written is all good: steps 1..4, finite, and the checkpoint is step 4's
    recs = rd.metrics()
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in recs)
    ck = torch.load(rd.checkpoint_path, map_location="cpu", weights_only=True)
    assert ck["step"] == 4 and finite_state(ck)
    # the other arms and the experiment summary are complete
    for arm in ("vanilla-s0", "dynsdpb-s0"):
        assert len(RunDir(exp / arm).metrics()) == 6 and RunDir(exp / arm).summary()
    assert (exp / "summary.json").is_file()
    if where != "loss":
        return
    # Once the cause is gone, the failed arm resumes from its last good checkpoint and ends
    # exactly where an uninterrupted run ends.
    monkeypatch.undo()
    out2 = run_experiment(exp, resume=True)
    assert out2["states"] == {"dlb-s0": "finished"}
    ref = create_experiment(tmp_path / "ref", cfg, ["dlb"], [0])
    run_experiment(ref)
    assert_same_records(rd.metrics(), RunDir(ref / "dlb-s0").metrics())


def test_lr_that_would_diverge_is_refused_before_training():
    from dynsdpb.config import check_config
    with pytest.raises(ConfigError) as ei:
        check_config(tiny_config("x.csv", lr=1e30))
    assert ei.value.for_field("lr")


# --------------------------------------------------------------------------------------
# Out of memory

def _cpu_alloc_failure() -> BaseException:
    """A real allocation failure from torch's CPU allocator (it does not say 'out of
    memory')."""
    try:
        torch.empty(1 << 50, dtype=torch.uint8)
    except RuntimeError as e:
        return e
    pytest.skip("this machine lets a 1 PB tensor be allocated")


OOMS = {
    "torch.OutOfMemoryError": lambda: torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 15.78 GiB total capacity)"),
    "RuntimeError-cuda": lambda: RuntimeError("CUDA out of memory. Tried to allocate 2.00 MiB"),
    "RuntimeError-cpu-allocator": _cpu_alloc_failure,
    "MemoryError": MemoryError,
    "RuntimeError-mps": lambda: RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"),
}


@pytest.mark.parametrize("kind", list(OOMS))
def test_out_of_memory_is_recognised(kind):
    assert T.is_oom(OOMS[kind]())
    assert not T.is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not T.is_oom(ValueError("memory"))


def test_oom_during_a_step_fails_that_arm_with_the_hint(tiny_csv, tmp_path, monkeypatch):
    """A real CPU allocator failure inside the forward pass of one arm at step 3."""
    cfg = tiny_config(tiny_csv, steps=4)
    exp = create_experiment(tmp_path / "runs", cfg, ["vanilla", "dynsdpb"], [0])
    inject(monkeypatch, lambda a: a.cfg.method == "dynsdpb" and a.step_idx == 2,
           lambda arm: forward_raises(arm, OOMS["RuntimeError-cpu-allocator"]))
    out = run_experiment(exp)
    assert out["states"] == {"vanilla-s0": "finished", "dynsdpb-s0": "failed"}
    st = RunDir(exp / "dynsdpb-s0").status()
    assert st["error"] == "out of memory at step 3" and st["failed_step"] == 3
    assert st["hint"] == OOM_HINT and "batch_size" in st["hint"] and "max_len" in st["hint"]
    assert [r["step"] for r in RunDir(exp / "dynsdpb-s0").metrics()] == [1, 2]
    assert torch.load(RunDir(exp / "dynsdpb-s0").checkpoint_path,
                      weights_only=True)["step"] == 2


def test_oom_jobs_fail_and_the_job_manager_stays_usable(tiny_csv, tmp_path, monkeypatch):
    import dynsdpb.encoder.task as TK        # the encoder tasks build their models through it
    cfg = tiny_config(tiny_csv, steps=4)
    orig_build = TK.build_model

    def build(c, *a, **kw):  # CUDA OOM while moving/loading the model, for seed 13 only
        if c.seed == 13:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return orig_build(c, *a, **kw)
    monkeypatch.setattr(TK, "build_model", build)
    inject(monkeypatch, lambda a: a.rd.path.parent.name == "step-oom" and a.step_idx == 1,
           lambda arm: forward_raises(arm, OOMS["torch.OutOfMemoryError"]))
    jm = JobManager(tmp_path / "runs")
    try:
        j1 = jm.submit(cfg, ["vanilla", "dynsdpb"], [13], name="load-oom")
        j2 = jm.submit(cfg, ["dynsdpb"], [0], name="step-oom")
        j3 = jm.submit(cfg, ["vanilla"], [0], name="after")
        assert jm.wait_idle(120)
        for rd in jm.arms(j1.id):
            st = rd.status()
            assert st["state"] == "failed" and st["hint"] == OOM_HINT, st
            assert "out of memory while loading" in st["error"]
        assert "out of memory" in j1.error
        st = jm.arms(j2.id)[0].status()
        assert st["state"] == "failed" and st["error"] == "out of memory at step 2"
        assert st["hint"] == OOM_HINT
        assert [rd.status()["state"] for rd in jm.arms(j3.id)] == ["finished"]
        assert jm._worker.is_alive() and not jm.is_active()
    finally:
        jm.close(wait=5)


def test_oom_on_the_cli_is_reported_without_a_traceback(tiny_csv, tmp_path, monkeypatch,
                                                         capsys):
    inject(monkeypatch, lambda a: a.step_idx == 1,
           lambda arm: forward_raises(arm, OOMS["RuntimeError-cuda"]))
    rc = cli.main(["train", "--set", "model=tiny-random-bert", "--set", f"dataset={tiny_csv}",
                   "--set", "steps=3", "--set", "batch_size=4", "--set", "val_size=10",
                   "--set", "test_size=10", "--set", "max_len=16", "--set", "save_model=false",
                   "--out", str(tmp_path / "exp")])
    cap = capsys.readouterr()
    assert rc == 1
    text = cap.out + cap.err
    assert "out of memory at step 2" in text and "batch_size" in text
    assert "Traceback" not in text


# --------------------------------------------------------------------------------------
# Stop and resume through the job manager

def _slow_steps(monkeypatch, seconds=0.15):
    orig = Arm.step

    def step(self):
        time.sleep(seconds)
        return orig(self)
    monkeypatch.setattr(Arm, "step", step)


def _wait_for(pred, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_stop_a_running_job_then_resume_equals_uninterrupted(tiny_csv, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_csv)
    ref = create_experiment(tmp_path / "ref", cfg, ["vanilla", "dynsdpb"], [0])
    run_experiment(ref)
    _slow_steps(monkeypatch)
    jm = JobManager(tmp_path / "runs")
    try:
        job = jm.submit(cfg, ["vanilla", "dynsdpb"], [0], name="stop-me")
        waiting = jm.submit(cfg, ["vanilla"], [1], name="waiting")
        rd = RunDir(job.exp_dir / "dynsdpb-s0")
        assert _wait_for(lambda: len(rd.metrics()) >= 3)
        assert jm.stop(job.id) and jm.stop(waiting.id)
        assert jm.wait_idle(60)
        # the queued job never ran
        assert [r.status()["state"] for r in jm.arms(waiting.id)] == ["stopped"]
        assert not jm.arms(waiting.id)[0].metrics()
        for arm in jm.arms(job.id):
            st = arm.status()
            assert st["state"] == "stopped", st
            n = len(arm.metrics())
            assert 3 <= n < 6 and st["step"] == n
            # the step in progress was completed and saved
            ck = torch.load(arm.checkpoint_path, map_location="cpu", weights_only=True)
            assert ck["step"] == n
        jm.resume(job.id)
        assert jm.wait_idle(60)
        for arm in jm.arms(job.id):
            assert arm.status()["state"] == "finished"
            assert_same_records(arm.metrics(), RunDir(ref / arm.id).metrics())
            assert arm.summary()["test_accuracy"] == RunDir(ref / arm.id).summary()["test_accuracy"]
    finally:
        jm.close(wait=5)


# --------------------------------------------------------------------------------------
# SIGKILL of a real training process

SLOW_CLI = """\
import sys, time
import dynsdpb.engine.train as T
_orig = T.Arm.step
def _slow(self):
    time.sleep(0.25)
    return _orig(self)
T.Arm.step = _slow
from dynsdpb.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_mid_run_then_resume_loses_nothing(tmp_path, capsys):
    csv = write_tiny_csv(tmp_path / "d.csv")
    args = ["compare", *TINY_ARGS, "--dataset", str(csv), "--methods", "vanilla,dynsdpb",
            "--seeds", "0"]
    exp = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args, "--out", str(exp)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dyn = RunDir(exp / "dynsdpb-s0")
    van = RunDir(exp / "vanilla-s0")
    try:
        ok = _wait_for(lambda: dyn.has_checkpoint() and len(dyn.metrics()) >= 3
                       or proc.poll() is not None, timeout=120)
        assert ok and proc.poll() is None, proc.communicate()[1][-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    # On restart: the runs show as interrupted, with a message that says what to do.
    for rd in (van, dyn):
        assert rd.raw_status()["state"] == "running"
        st = rd.status()
        assert st["state"] == "interrupted" and "resume" in st["message"]
    assert {r.id for r in find_runs(tmp_path)} == {"vanilla-s0", "dynsdpb-s0"}
    # metrics.jsonl reads back cleanly: consecutive steps, every complete line parses
    for rd in (van, dyn):
        recs = rd.metrics()
        assert [r["step"] for r in recs] == list(range(1, len(recs) + 1)) and recs
        lines = rd.metrics_path.read_bytes().split(b"\n")
        assert all(json.loads(line) for line in lines[:-1])
        # the checkpoint on disk is complete and plain (no arbitrary pickles)
        ck = torch.load(rd.checkpoint_path, map_location="cpu", weights_only=True)
        assert 2 <= ck["step"] <= len(recs) and finite_state(ck)
    # a write torn by the kill: the reader drops it, resume repairs the file
    with open(dyn.metrics_path, "ab") as f:
        f.write(b'{"step": 99, "loss": 0.69')
    assert dyn.metrics()[-1]["step"] != 99
    # `dynsdpb resume DIR` finishes both arms...
    capsys.readouterr()
    assert cli.main(["resume", str(exp)]) == 0, capsys.readouterr().err
    assert {rd.status()["state"] for rd in (van, dyn)} == {"finished"}
    # ...and the result equals an uninterrupted run, record by record
    ref = tmp_path / "ref"
    assert cli.main([*args, "--out", str(ref)]) == 0
    for rd in (van, dyn):
        assert_same_records(rd.metrics(), RunDir(ref / rd.id).metrics())
        assert rd.metrics_path.read_bytes().endswith(b"\n")
        want = RunDir(ref / rd.id).summary()
        assert rd.summary()["test_accuracy"] == want["test_accuracy"]
        assert rd.summary()["steps"] == want["steps"] == 8


# --------------------------------------------------------------------------------------
# The run store under crashes: torn lines, partial writes

def _recs(n):
    return [{"step": i, "loss": 0.5 / i} for i in range(1, n + 1)]


def test_torn_and_garbled_metrics_lines(tmp_path):
    p = tmp_path / "metrics.jsonl"
    body = b"".join(json.dumps(r).encode() + b"\n" for r in _recs(3))
    p.write_bytes(body + b'{"step": 4, "lo')  # torn last line
    assert read_metrics(p) == _recs(3)
    # a garbled line in the middle (e.g. a disk error) is skipped, the rest is kept
    p.write_bytes(body + b"\x00\x00garbage\n" + json.dumps({"step": 4}).encode() + b"\n")
    assert [r["step"] for r in read_metrics(p)] == [1, 2, 3, 4]
    # reopening for append repairs a torn tail first, so the next record is readable
    p.write_bytes(body + b'{"step": 4, "lo')
    w = MetricsWriter(p)
    w.write({"step": 4, "loss": float("nan"), "kd": float("inf")})
    w.close()
    recs = read_metrics(p)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    # non-finite numbers are written as null: the file stays strict JSON for every reader
    assert recs[-1]["loss"] is None and recs[-1]["kd"] is None
    for line in p.read_bytes().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    # resuming from step 2 drops later records and the torn tail
    with open(p, "ab") as f:
        f.write(b'{"step": 5, "lo')
    MetricsWriter(p, truncate_after_step=2).close()
    assert read_metrics(p) == _recs(2) and p.read_bytes().endswith(b"\n")
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_garbled_status_and_config_files_do_not_break_readers(tmp_path):
    rd = RunDir(tmp_path / "runs" / "exp" / "dynsdpb-s0")
    rd.path.mkdir(parents=True)
    rd.config_path.write_text("{}")
    rd.status_path.write_bytes(b'{"state": "runn')  # as if torn (atomic writes prevent it)
    assert rd.status() == {} and rd.raw_status() == {}
    assert [r.id for r in find_runs(tmp_path / "runs")] == ["dynsdpb-s0"]
    rd.set_status("running")  # a live writer in this process: not interrupted
    assert rd.status()["state"] == "running"
    st = json.loads(rd.status_path.read_text())
    rd.status_path.write_text(json.dumps(dict(st, owner="another-process", pid=2 ** 22 + 12345)))
    assert rd.status()["state"] == "interrupted"


def test_checkpoint_writes_are_atomic(tiny_csv, tmp_path, monkeypatch):
    """A crash while writing the checkpoint (here: a failing rename or fsync) leaves the
    previous checkpoint intact and no partial file in its place."""
    cfg = tiny_config(tiny_csv, method="dynsdpb", steps=6, checkpoint_every=2)
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    arm = Arm(cfg, prepare(cfg), rd)
    arm.step()
    arm.step()
    arm.save_checkpoint()  # at step 2, as the loop does (checkpoint_every=2)
    good = rd.checkpoint_path.read_bytes()
    for target in ("replace", "fsync"):
        with monkeypatch.context() as m:
            m.setattr(os, target, lambda *a: (_ for _ in ()).throw(OSError("killed")))
            with pytest.raises(OSError):
                arm.save_checkpoint()
        assert rd.checkpoint_path.read_bytes() == good
        assert [p.name for p in rd.checkpoint_path.parent.iterdir()] == ["state.pt"]
    assert torch.load(rd.checkpoint_path, weights_only=True)["step"] == 2
    arm.writer.close()


def test_atomic_write_bytes_never_leaves_a_partial_file(tmp_path, monkeypatch):
    p = tmp_path / "a" / "f.json"
    atomic_write_bytes(p, b"old")
    orig_fdopen = os.fdopen

    def torn_fdopen(fd, mode="r", *a, **kw):
        f = orig_fdopen(fd, mode, *a, **kw)
        real_write = f.write

        def write(data):
            real_write(data[: len(data) // 2])
            raise OSError("killed mid-write")
        f.write = write
        return f
    monkeypatch.setattr(os, "fdopen", torn_fdopen)
    with pytest.raises(OSError):
        atomic_write_bytes(p, b"new contents")
    assert p.read_bytes() == b"old"
    assert [q.name for q in p.parent.iterdir()] == ["f.json"]


# --------------------------------------------------------------------------------------
# Concurrency

def test_concurrent_submits_queue_safely(tmp_path):
    csv = write_tiny_csv(tmp_path / "d.csv")
    cfg = tiny_config(csv, steps=4)
    jm = JobManager(tmp_path / "runs")
    barrier = threading.Barrier(3)
    jobs, errors, done = [], [], threading.Event()

    def submit(i):
        barrier.wait()
        try:
            up = ("class data.csv", csv.read_bytes()) if i == 1 else None
            jobs.append(jm.submit(cfg, ["dynsdpb"], [i], name="class-demo", upload=up))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def read():  # another session's page polling the store meanwhile
        barrier.wait()
        while not done.is_set():
            try:
                for rd in find_runs(jm.runs_dir):
                    rd.status()
                    recs = rd.metrics()
                    assert [r["step"] for r in recs] == list(range(1, len(recs) + 1))
                jm.experiments()
                jm.queue()
            except Exception as e:  # noqa: BLE001
                errors.append(e)
            time.sleep(0.01)

    threads = [threading.Thread(target=submit, args=(i,)) for i in (0, 1)]
    threads.append(threading.Thread(target=read))
    try:
        for t in threads:
            t.start()
        for t in threads[:2]:
            t.join(30)
        assert jm.wait_idle(120)
    finally:
        done.set()
        threads[2].join(10)
        jm.close(wait=5)
    assert not errors, errors
    assert len(jobs) == 2 and len({j.exp_dir for j in jobs}) == 2
    for j in jobs:
        assert j.exp_dir.parent == jm.runs_dir and j.exp_dir.name.startswith("class-demo")
        assert [rd.status()["state"] for rd in jm.arms(j.id)] == ["finished"]
        assert len(jm.arms(j.id)[0].metrics()) == 4


def test_unique_dir_under_a_race(tmp_path):
    n = 16
    barrier = threading.Barrier(n)
    got, errors = [], []

    def make():
        barrier.wait()
        try:
            got.append(unique_dir(tmp_path, "same-name"))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    ts = [threading.Thread(target=make) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert not errors and len(set(got)) == n


def test_metrics_writer_is_thread_safe(tmp_path):
    w = MetricsWriter(tmp_path / "m.jsonl")
    pad = "x" * 2000  # long lines, so an unlocked interleaving would show

    def write(k):
        for i in range(40):
            w.write({"step": k * 100 + i, "pad": pad})
    ts = [threading.Thread(target=write, args=(k,)) for k in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    w.close()
    recs = read_metrics(tmp_path / "m.jsonl")
    assert sorted(r["step"] for r in recs) == sorted(k * 100 + i for k in range(6)
                                                     for i in range(40))


# --------------------------------------------------------------------------------------
# Safety: no pickles of unknown origin, no remote code unless asked

class _Payload:
    """Unpickling this would create a file: proof that it never ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _pickle_bomb(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        torch.save({"step": 2, "model": _Payload(marker)}, f)


@pytest.mark.parametrize("content", ["pickle-bomb", "garbage"])
def test_untrusted_or_corrupt_checkpoint_is_refused(content, tiny_csv, tmp_path, capsys):
    cfg = tiny_config(tiny_csv, steps=3)
    exp = create_experiment(tmp_path / "runs", cfg, ["vanilla"], [0])
    rd = RunDir(exp / "vanilla-s0")
    marker = tmp_path / "pwned"
    if content == "pickle-bomb":
        _pickle_bomb(rd.checkpoint_path, marker)
    else:
        rd.checkpoint_path.parent.mkdir(parents=True)
        rd.checkpoint_path.write_bytes(b"PK\x03\x04 not a checkpoint")
    rd.set_status("stopped")
    capsys.readouterr()
    rc = cli.main(["resume", str(exp)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "checkpoint=" in err and "start the run again" in err
    assert ("never unpickled" if content == "pickle-bomb" else "damaged") in err
    assert not marker.exists()
    assert rd.status()["state"] == "failed"


def test_checkpoint_is_plain_tensors(tiny_csv, tmp_path):
    cfg = tiny_config(tiny_csv, steps=2)
    exp = create_experiment(tmp_path / "runs", cfg, ["dynsdpb"], [0])
    run_experiment(exp)
    ck = torch.load(RunDir(exp / "dynsdpb-s0").checkpoint_path, weights_only=True)
    assert ck["step"] == 2 and finite_state(ck) and ck["config"]["method"] == "dynsdpb"


def _tiny_model_folder(path: Path, marker: Path) -> None:
    """A transformers folder whose only weights are a pickle (pytorch_model.bin)."""
    from dynsdpb.encoder.models import tiny_bert_config
    path.mkdir(parents=True)
    tiny_bert_config(100, 2, "classification").save_pretrained(path)
    _pickle_bomb(path / "pytorch_model.bin", marker)


def test_model_weights_only_from_safetensors(tiny_csv, tmp_path):
    from dynsdpb.encoder.models import build_model, load_tokenizer
    marker = tmp_path / "pwned"
    folder = tmp_path / "pickled-model"
    _tiny_model_folder(folder, marker)
    tok = load_tokenizer(tiny_config(tiny_csv))
    with pytest.raises(ConfigError) as ei:
        build_model(tiny_config(tiny_csv, model=str(folder)), 2, "classification", tok)
    assert ei.value.for_field("model") and "could not load it" in str(ei.value)
    assert not marker.exists()


def test_trust_remote_code_is_off_unless_asked(tiny_csv, tmp_path, monkeypatch):
    import transformers
    from dynsdpb.encoder import models as M
    seen = []

    class FakeTok:
        @staticmethod
        def from_pretrained(src, **kw):
            seen.append(("tokenizer", kw))
            return "tok"

    class FakeModel:
        @staticmethod
        def from_pretrained(src, **kw):
            seen.append(("model", kw))
            return transformers.AutoModelForSequenceClassification.from_config(
                M.tiny_bert_config(100, 2, "classification"))

    monkeypatch.setattr(transformers, "AutoTokenizer", FakeTok)
    real_auto = transformers.AutoModelForSequenceClassification
    monkeypatch.setattr(transformers, "AutoModelForSequenceClassification", FakeModel)
    FakeModel.from_config = real_auto.from_config
    assert M.RunConfig().trust_remote_code is False
    for flag in (None, True):
        over = {} if flag is None else {"trust_remote_code": True}
        cfg = tiny_config(tiny_csv, model="some-org/some-model", **over)
        M.load_tokenizer(cfg)
        M.build_model(cfg, 2, "classification", tokenizer=None)
        want = bool(flag)
        assert seen[-2] == ("tokenizer", {"trust_remote_code": want})
        assert seen[-1][1]["trust_remote_code"] is want
        assert seen[-1][1]["use_safetensors"] is True


# --------------------------------------------------------------------------------------
# Resuming what cannot or must not be resumed

def _killed_experiment(tmp_path, csv, steps_done=3, checkpoint=True):
    """An experiment as a killed process leaves it: `running`, its writer gone."""
    cfg = tiny_config(csv, checkpoint_every=2 if checkpoint else 0)
    exp = create_experiment(tmp_path / "runs", cfg, ["dynsdpb"], [0])
    stop = threading.Event()
    run_experiment(exp, stop=stop,
                   progress=lambda a, r: r.get("step") == steps_done and stop.set())
    rd = RunDir(exp / "dynsdpb-s0")
    if not checkpoint:  # the stop checkpoint would not exist after a kill before step 2
        rd.checkpoint_path.unlink()
    st = rd.raw_status()
    rd.status_path.write_text(json.dumps(dict(st, state="running", owner="dead-process",
                                              pid=2 ** 22 + 4321)))
    return cfg, exp, rd


def test_interrupted_before_the_first_checkpoint_starts_over(tiny_csv, tmp_path):
    cfg, exp, rd = _killed_experiment(tmp_path, tiny_csv, steps_done=1, checkpoint=False)
    assert rd.status()["state"] == "interrupted" and len(rd.metrics()) == 1
    assert run_experiment(exp, resume=True)["states"] == {"dynsdpb-s0": "finished"}
    ref = create_experiment(tmp_path / "ref", cfg, ["dynsdpb"], [0])
    run_experiment(ref)
    assert_same_records(rd.metrics(), RunDir(ref / "dynsdpb-s0").metrics())


def test_resume_refuses_a_run_still_alive_in_another_process(tiny_csv, tmp_path, capsys):
    cfg, exp, rd = _killed_experiment(tmp_path, tiny_csv)
    st = rd.raw_status()
    # as written by another live process (the app, or a second terminal)
    from dynsdpb.store import _proc_start
    rd.status_path.write_text(json.dumps(dict(st, state="running", owner="other",
                                              pid=os.getppid(),
                                              pid_start=_proc_start(os.getppid()))))
    assert rd.status()["state"] == "running"
    before = rd.metrics_path.read_bytes()
    capsys.readouterr()
    assert cli.main(["resume", str(exp)]) == 2
    err = capsys.readouterr().err
    assert "still running in another process" in err and len(err.strip().splitlines()) == 1
    jm = JobManager(tmp_path / "runs", autostart=False)
    with pytest.raises(ConfigError, match="still running in another process"):
        jm.resume(exp.name)
    assert rd.raw_status()["owner"] == "other" and rd.metrics_path.read_bytes() == before


@pytest.mark.parametrize("damage", ["experiment.json", "config.json"])
def test_resume_with_damaged_files_says_so(damage, tiny_csv, tmp_path, capsys):
    cfg, exp, rd = _killed_experiment(tmp_path, tiny_csv)
    (exp / damage if damage == "experiment.json" else rd.config_path).write_text('{"arms": [')
    capsys.readouterr()
    assert cli.main(["resume", str(exp)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert damage in err and "damaged" in err
    assert len(rd.metrics()) == 3  # nothing was overwritten



def test_ctrl_c_on_the_cli_leaves_a_resumable_run(tmp_path, capsys):
    csv = write_tiny_csv(tmp_path / "d.csv")
    exp = tmp_path / "exp"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, "train", "--set",
                             "model=tiny-random-bert", "--set", f"dataset={csv}", "--set",
                             "steps=8", "--set", "batch_size=4", "--set", "val_size=10",
                             "--set", "test_size=10", "--set", "max_len=16", "--set",
                             "checkpoint_every=2", "--set", "save_model=false", "--out",
                             str(exp)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    rd = RunDir(exp / "dynsdpb-s0")
    try:
        assert _wait_for(lambda: rd.has_checkpoint() or proc.poll() is not None, 120)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and f"dynsdpb resume {exp}" in err
    assert rd.status()["state"] == "interrupted"
    capsys.readouterr()
    assert cli.main(["resume", str(exp)]) == 0
    assert rd.status()["state"] == "finished"
    assert [r["step"] for r in rd.metrics()] == list(range(1, 9))


class _FullDisk:
    """A metrics file on a full disk: every write, flush and close fails like ENOSPC."""

    closed = False

    def _fail(self, *a):
        raise OSError(28, "No space left on device")
    write = flush = fileno = _fail

    def close(self):
        self.closed = True
        self._fail()


@contextmanager
def full_disk(arm):
    arm.writer._f.close()
    arm.writer._f = _FullDisk()
    yield


def test_disk_full_fails_one_arm_with_a_hint_and_it_resumes(tiny_csv, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_csv)
    exp = create_experiment(tmp_path / "runs", cfg, ["vanilla", "dlb"], [0])
    inject(monkeypatch, lambda a: a.cfg.method == "dlb" and a.step_idx == 2, full_disk)
    out = run_experiment(exp)
    assert out["states"] == {"vanilla-s0": "finished", "dlb-s0": "failed"}
    rd = RunDir(exp / "dlb-s0")
    st = rd.status()
    assert "No space left on device" in st["error"] and "disk" in st["hint"]
    assert "resume" in st["hint"]
    assert [r["step"] for r in rd.metrics()] == [1, 2]
    monkeypatch.undo()  # space freed
    assert run_experiment(exp, resume=True)["states"] == {"dlb-s0": "finished"}
    ref = create_experiment(tmp_path / "ref", cfg, ["dlb"], [0])
    run_experiment(ref)
    assert_same_records(rd.metrics(), RunDir(ref / "dlb-s0").metrics())


def _enospc(*a, **kw):
    raise OSError(28, "No space left on device")


def test_disk_too_full_for_status_json_fails_that_arm_without_escaping(tiny_csv, tmp_path,
                                                                       monkeypatch):
    """status.json of one arm cannot be written any more (not even `failed`): the loop ends
    that arm as failed, says why through `progress`, and the other arm finishes."""
    cfg = tiny_config(tiny_csv)
    exp = create_experiment(tmp_path / "runs", cfg, ["vanilla", "dlb"], [0])
    orig = RunDir.set_status

    def set_status(self, state, **kw):
        if self.id == "dlb-s0" and len(self.metrics()) >= 3:
            _enospc()
        return orig(self, state, **kw)
    monkeypatch.setattr(RunDir, "set_status", set_status)
    events = []
    out = run_experiment(exp, progress=lambda arm, rec: events.append((arm, rec)))
    assert out["states"] == {"vanilla-s0": "finished", "dlb-s0": "failed"}
    fail = [r for a, r in events if a == "dlb-s0" and r.get("state") == "failed"]
    assert len(fail) == 1 and "No space left on device" in fail[0]["error"]
    assert "free space, then resume" in fail[0]["hint"]
    assert [r["step"] for r in RunDir(exp / "dlb-s0").metrics()] == [1, 2, 3]
    assert (exp / "summary.json").is_file()


def test_disk_too_full_for_the_stop_checkpoint_fails_that_arm_and_it_resumes(
        tiny_csv, tmp_path, monkeypatch):
    """Stop after step 3: the stop checkpoint cannot be written for the dlb arm. It ends as
    failed with the hint (the step-2 checkpoint is kept); vanilla is stopped as asked.
    Once space is freed, the arm resumes and ends as an uninterrupted run ends."""
    cfg = tiny_config(tiny_csv)  # checkpoints at steps 2, 4, 6
    exp = create_experiment(tmp_path / "runs", cfg, ["vanilla", "dlb"], [0])
    orig = Arm.save_checkpoint

    def save(self):
        if self.cfg.method == "dlb" and self.step_idx == 3:
            _enospc()
        return orig(self)
    monkeypatch.setattr(Arm, "save_checkpoint", save)
    stop = threading.Event()
    out = run_experiment(exp, stop=stop, progress=lambda a, r: r.get("step") == 3
                         and a == "dlb-s0" and stop.set())
    assert out["states"] == {"vanilla-s0": "stopped", "dlb-s0": "failed"}
    rd = RunDir(exp / "dlb-s0")
    st = rd.status()
    assert "No space left on device" in st["error"] and "free space, then resume" in st["hint"]
    assert torch.load(rd.checkpoint_path, weights_only=True)["step"] == 2
    monkeypatch.undo()  # space freed
    assert run_experiment(exp, resume=True)["states"] == {"vanilla-s0": "finished",
                                                          "dlb-s0": "finished"}
    ref = create_experiment(tmp_path / "ref", cfg, ["dlb"], [0])
    run_experiment(ref)
    assert_same_records(rd.metrics(), RunDir(ref / "dlb-s0").metrics())


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(tiny_csv, tmp_path):
    """A kill between the temp file and the rename leaves a partial temp file beside the
    last complete checkpoint: resume uses the complete one."""
    cfg, exp, rd = _killed_experiment(tmp_path, tiny_csv, steps_done=3)
    partial = rd.checkpoint_path.parent / ".state.pt.k1ll3d.tmp"
    partial.write_bytes(rd.checkpoint_path.read_bytes()[:1000])
    assert rd.status()["state"] == "interrupted"
    assert run_experiment(exp, resume=True)["states"] == {"dynsdpb-s0": "finished"}
    assert [r["step"] for r in rd.metrics()] == list(range(1, 7))
    assert torch.load(rd.checkpoint_path, weights_only=True)["step"] == 6
    assert not partial.exists()  # swept by the next successful save


def test_closing_the_job_manager_stops_and_saves_then_a_new_one_resumes(tiny_csv, tmp_path,
                                                                        monkeypatch):
    """The app's JobManager is released (server restart, code reload): the running arms are
    saved as `stopped`, and a new JobManager on the same folder resumes them."""
    cfg = tiny_config(tiny_csv)
    _slow_steps(monkeypatch, 0.1)
    jm = JobManager(tmp_path / "runs")
    job = jm.submit(cfg, ["vanilla", "dynsdpb"], [0], name="restart")
    rd = RunDir(job.exp_dir / "dynsdpb-s0")
    assert _wait_for(lambda: len(rd.metrics()) >= 2)
    jm.close(wait=30)
    assert not jm._worker.is_alive()
    for arm in jm.arms(job.id):
        st = arm.status()
        assert st["state"] == "stopped" and st["step"] == len(arm.metrics()) < 6
    monkeypatch.undo()
    jm2 = JobManager(tmp_path / "runs")
    try:
        jm2.resume(job.id)
        assert jm2.wait_idle(60)
        assert [a.status()["state"] for a in jm2.arms(job.id)] == ["finished", "finished"]
        assert all([r["step"] for r in a.metrics()] == list(range(1, 7))
                   for a in jm2.arms(job.id))
    finally:
        jm2.close(wait=5)


def test_stop_then_resume_at_once_is_not_lost(tiny_csv, tmp_path, monkeypatch):
    """An impatient Stop then Resume while the current step is still running: the resume
    is queued behind the stopping run, not swallowed by it."""
    cfg = tiny_config(tiny_csv)
    _slow_steps(monkeypatch, 0.1)
    jm = JobManager(tmp_path / "runs")
    try:
        job = jm.submit(cfg, ["dynsdpb"], [0], name="impatient")
        rd = RunDir(job.exp_dir / "dynsdpb-s0")
        assert _wait_for(lambda: len(rd.metrics()) >= 2)
        jm.stop(job.id)
        again = jm.resume(job.id)
        assert again is not job
        assert jm.wait_idle(60)
        assert rd.status()["state"] == "finished"
        assert [r["step"] for r in rd.metrics()] == list(range(1, 7))
    finally:
        jm.close(wait=5)


@contextmanager
def overflowing_update(arm):
    """The loss and gradients are finite, but the update itself leaves a NaN weight."""
    orig = arm.opt.step

    def step(*a, **kw):
        out = orig(*a, **kw)
        with torch.no_grad():
            arm.model.classifier.weight.view(-1)[0] = float("nan")
        return out
    arm.opt.step = step
    try:
        yield
    finally:
        del arm.opt.step


def test_non_finite_weights_are_never_checkpointed(tiny_csv, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_csv)  # checkpoints at 2, 4, 6
    exp = create_experiment(tmp_path / "runs", cfg, ["dlb"], [0])
    inject(monkeypatch, lambda a: a.step_idx == 3, overflowing_update)  # step 4
    assert run_experiment(exp)["states"] == {"dlb-s0": "failed"}
    rd = RunDir(exp / "dlb-s0")
    st = rd.status()
    assert st["failed_step"] == 4 and "non-finite" in st["error"] and st["hint"] == NAN_HINT
    ck = torch.load(rd.checkpoint_path, weights_only=True)
    assert ck["step"] == 2 and finite_state(ck)


def test_a_reused_pid_does_not_keep_a_dead_run_running(tiny_csv, tmp_path):
    """The writer was killed and its pid now belongs to another live process: the run is
    still `interrupted` (the status records when its writer started) and resumes."""
    from dynsdpb.store import _proc_start
    cfg, exp, rd = _killed_experiment(tmp_path, tiny_csv)
    other = os.getppid()  # alive, but not the process that wrote the status
    if _proc_start(other) is None:
        pytest.skip("no /proc here to tell processes apart")
    st = rd.raw_status()
    rd.status_path.write_text(json.dumps(dict(st, state="running", owner="dead", pid=other,
                                              pid_start="1")))
    assert rd.status()["state"] == "interrupted"
    assert rd.busy_elsewhere() is None
    # the same pid with its real start time is the live writer: running, resume refused
    rd.status_path.write_text(json.dumps(dict(st, state="running", owner="other", pid=other,
                                              pid_start=_proc_start(other))))
    assert rd.status()["state"] == "running" and rd.busy_elsewhere() == other
    rd.status_path.write_text(json.dumps(dict(st, state="running", owner="dead", pid=other,
                                              pid_start="1")))
    assert run_experiment(exp, resume=True)["states"] == {"dynsdpb-s0": "finished"}


def test_every_arm_failing_still_ends_cleanly(tiny_csv, tmp_path, monkeypatch, capsys):
    """NaN in every arm at step 1 (before any checkpoint): each arm is failed with the
    step and hint, the experiment summary is still written, the CLI exits 1 without a
    traceback."""
    inject(monkeypatch, lambda a: True,
           lambda arm: forward_returns(arm, lambda z: z * float("nan")))
    rc = cli.main(["compare", "--model", "tiny-random-bert", "--dataset", str(tiny_csv),
                   "--methods", "vanilla,dlb", "--seeds", "0,1", "--steps", "3",
                   "--batch-size", "4", "--max-len", "16", "--set", "val_size=10",
                   "--set", "test_size=10", "--set", "save_model=false",
                   "--out", str(tmp_path / "exp")])
    cap = capsys.readouterr()
    assert rc == 1 and "Traceback" not in cap.out + cap.err
    assert "loss is nan at step 1" in cap.out + cap.err
    for arm in ("vanilla-s0", "dlb-s0", "vanilla-s1", "dlb-s1"):
        st = RunDir(tmp_path / "exp" / arm).status()
        assert st["state"] == "failed" and st["failed_step"] == 1 and st["hint"] == NAN_HINT
        assert not RunDir(tmp_path / "exp" / arm).has_checkpoint()
    assert (tmp_path / "exp" / "summary.json").is_file()


def test_killed_while_finishing_resumes_to_a_complete_run(tiny_csv, tmp_path):
    """Killed after the last step, while writing the summary and the model: resume only
    finishes (no step is repeated) and the saved model is safetensors, never a pickle."""
    import shutil
    cfg = tiny_config(tiny_csv, save_model=True)
    exp = create_experiment(tmp_path / "runs", cfg, ["dynsdpb"], [0])
    run_experiment(exp)
    rd = RunDir(exp / "dynsdpb-s0")
    before = rd.metrics()
    rd.summary_path.unlink()
    shutil.rmtree(rd.model_path)
    st = rd.raw_status()
    rd.status_path.write_text(json.dumps(dict(st, state="running", owner="dead",
                                              pid=2 ** 22 + 777)))
    assert rd.status()["state"] == "interrupted"
    assert run_experiment(exp, resume=True)["states"] == {"dynsdpb-s0": "finished"}
    assert rd.metrics() == before and rd.summary()["steps"] == 6
    files = {p.name for p in rd.model_path.iterdir()}
    assert "model.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".pth")) for f in files)
