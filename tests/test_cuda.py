"""The CUDA path: bf16 autocast, out-of-memory handling, training in the app's worker process.

These run on a machine with a GPU (scripts/gpu-check.sh runs them and `dynsdpb bench --json`
there). Without CUDA they are skipped with that reason: the CPU suite covers the same code
paths with torch's CPU allocator and simulated CUDA errors (tests/test_faults_runs.py).
"""
from __future__ import annotations

import pytest
import torch

from dynsdpb.experiment import create_experiment, run_experiment
from dynsdpb.store import RunDir
from tests.conftest import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (run scripts/gpu-check.sh there)")


def test_bf16_autocast_trains_with_fp32_loss_and_finite_numbers(tiny_csv, tmp_path):
    cfg = tiny_config(tiny_csv, device="cuda", steps=6)
    exp = create_experiment(tmp_path / "runs", cfg, ["vanilla", "dynsdpb"], [0])
    assert run_experiment(exp)["states"] == {"vanilla-s0": "finished", "dynsdpb-s0": "finished"}
    recs = RunDir(exp / "dynsdpb-s0").metrics()
    assert all(r["loss"] == r["loss"] and r["loss"] < 10 for r in recs)
    assert RunDir(exp / "dynsdpb-s0").summary()["device"].startswith("cuda")


def test_a_real_cuda_out_of_memory_fails_the_arm_with_the_hint(tiny_csv, tmp_path):
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(int(free * 0.98), dtype=torch.uint8, device="cuda")   # leave ~2 %
    try:
        cfg = tiny_config(tiny_csv, device="cuda", steps=3, batch_size=512, max_len=128,
                          model="minilm-l6")
        exp = create_experiment(tmp_path / "runs", cfg, ["dynsdpb"], [0])
        try:
            out = run_experiment(exp)
            states = out["states"]
        except Exception as e:  # noqa: BLE001 - loading itself may hit it
            states = {"dynsdpb-s0": "failed"}
            assert "out of memory" in str(e)
    finally:
        del hog
        torch.cuda.empty_cache()
    st = RunDir(exp / "dynsdpb-s0").status()
    assert states["dynsdpb-s0"] == "failed" and "batch_size" in st.get("hint", ""), st


def test_the_app_worker_process_trains_on_the_gpu(tiny_csv, tmp_path):
    from dynsdpb.jobs.queue import JobManager
    jm = JobManager(tmp_path / "runs", isolation="process")
    try:
        job = jm.submit(tiny_config(tiny_csv, device="cuda", steps=4), ["dynsdpb"], [0])
        assert jm.wait_idle(300) and not job.error, job.error
        assert RunDir(job.exp_dir / "dynsdpb-s0").summary()["device"].startswith("cuda")
    finally:
        jm.close(wait=30)
