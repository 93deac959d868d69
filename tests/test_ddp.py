"""Data parallel on CPU: `torchrun --nproc_per_node 2` (gloo) runs the CLI unchanged.

Two ranks with a batch of 4 each must train what one process trains with a batch of 8: the
same samples per step (BatchLayout shards each global chunk), every rank's carried half
distilled toward its own cache (the step asserts it), gradients averaged by DDP. With
dropout off the two runs agree to float tolerance. Rank 0 alone writes: one metrics file,
one checkpoint (holding both ranks' caches), one summary. A resume with another world size
is refused.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynsdpb.bench.app import free_port

from dynsdpb.cli import main as cli
from dynsdpb.store import RunDir
from tests.conftest import write_tiny_csv

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("loss", "ce", "kd", "alpha", "tau", "alpha_lo", "alpha_hi", "logit_drift",
        "grad_norm", "val_accuracy", "val_loss", "samples_seen", "epoch")


def _args(model: Path, csv: Path, out: Path, batch: int) -> list[str]:
    return ["train", "--model", str(model), "--dataset", str(csv), "--method", "dynsdpb",
            "--steps", "6", "--batch-size", str(batch), "--val-size", "16", "--test-size", "16",
            "--max-len", "16", "--eval-every", "3", "--checkpoint-every", "3", "--lr", "1e-3",
            "--warmup-ratio", "0", "--probe-size", "8", "--no-save-model", "--out", str(out)]


def _torchrun(args: list[str], cwd: Path, timeout: float = 600,
              **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **env_extra)
    torchrun = Path(sys.executable).parent / "torchrun"
    return subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(free_port()), "-m",
                           "dynsdpb.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _run_with_fault(tmp_path: Path, model: Path, fault: str, *extra: str) -> RunDir:
    """A 2-rank dynsdpb run with the test fault `fault` (train.TEST_FAIL_ENV): it must end
    (no rank may hang) with a non-zero exit. Returns the arm's run folder."""
    from dynsdpb.engine.train import TEST_FAIL_ENV
    csv = write_tiny_csv(tmp_path / "d.csv", n=200)
    try:
        p = _torchrun([*_args(model, csv, tmp_path / "ddp", 4), *extra], tmp_path,
                      timeout=120, **{TEST_FAIL_ENV: fault})
    except subprocess.TimeoutExpired:
        pytest.fail(f"a rank hung after the fault {fault}")
    assert p.returncode != 0, p.stderr[-3000:]
    return RunDir(tmp_path / "ddp" / "dynsdpb-s0")


def test_two_gloo_ranks_equal_one_process_with_the_global_batch(tmp_path, no_dropout_model):
    csv = write_tiny_csv(tmp_path / "d.csv", n=200)
    assert cli.main(_args(no_dropout_model, csv, tmp_path / "one", 8)) == 0
    p = _torchrun(_args(no_dropout_model, csv, tmp_path / "ddp", 4), tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]

    one = RunDir(tmp_path / "one" / "dynsdpb-s0")
    ddp = RunDir(tmp_path / "ddp" / "dynsdpb-s0")
    a, b = one.metrics(), ddp.metrics()
    assert [r["step"] for r in b] == list(range(1, 7))       # one record per step, one file
    for ra, rb in zip(a, b):
        for k in KEYS:
            if ra.get(k) is None:
                assert rb.get(k) is None, (ra["step"], k)
                continue
            assert rb[k] == pytest.approx(ra[k], rel=2e-4, abs=1e-6), (ra["step"], k)
    # rank 0 alone wrote the folder: one metrics file, one checkpoint, one summary
    assert sorted(x.name for x in ddp.path.iterdir() if not x.name.startswith(".")) == sorted(
        x.name for x in one.path.iterdir() if not x.name.startswith("."))
    import torch
    ck = torch.load(ddp.checkpoint_path, map_location="cpu", weights_only=True)
    assert len(ck["ranks"]) == 2 and ck["step"] == 6
    assert json.loads(ddp.summary_path.read_text())["test_accuracy"] == pytest.approx(
        json.loads(one.summary_path.read_text())["test_accuracy"])


def test_a_fault_on_one_rank_fails_the_run_on_every_rank_at_once(tmp_path, no_dropout_model):
    """Rank 1 raises inside step 5 (the test-only hook). Rank 0 must not wait in the gradient
    all-reduce until gloo's timeout (30 min): both ranks agree before the backward pass, the
    arm fails with rank 1's reason (rank 0 writes it), both exit non-zero, and the step-3
    checkpoint is the last good one, intact. (The whole run, start-up included, takes ~20 s
    here; it is given 120 s on a loaded machine.)"""
    import time

    import torch

    t0 = time.monotonic()
    rd = _run_with_fault(tmp_path, no_dropout_model, "1:5")
    took = time.monotonic() - t0
    st = rd.status()
    assert st["state"] == "failed", st
    assert "injected fault on rank 1 at step 5" in st["error"], st
    assert "(on rank 1 of 2)" in st["error"] and st["failed_step"] == 5, st
    assert [r["step"] for r in rd.metrics()] == [1, 2, 3, 4]
    ck = torch.load(rd.checkpoint_path, map_location="cpu", weights_only=True)
    assert ck["step"] == 3 and len(ck["ranks"]) == 2
    assert all(bool(torch.isfinite(v).all()) for v in ck["model"].values()
               if v.is_floating_point())
    print(f"fault on rank 1: both ranks exited after {took:.1f} s in all")


def test_no_rank_ends_before_rank_0_has_written_why(tmp_path, no_dropout_model):
    """Rank 1 fails at step 5 and rank 0 is 3 s slow to record the agreed fault: rank 1 must
    not exit (and get rank 0 stopped by the launcher) before rank 0 has written the failed
    status and the summary. Without the ranks' last barrier the status reads `interrupted`
    (seen in CI, where the launcher was quicker than rank 0)."""
    st = _run_with_fault(tmp_path, no_dropout_model, "1:5,0:5:late").status()
    assert st["state"] == "failed" and "injected fault on rank 1 at step 5" in st["error"], st
    assert (tmp_path / "ddp" / "summary.json").is_file()


def test_a_fault_in_the_step_0_evaluation_on_one_rank_ends_both(tmp_path, no_dropout_model):
    """eval_on_start: rank 1 fails in the evaluation before the first step, where no agreement
    follows. Both ranks end (no hang) and nothing is trained."""
    rd = _run_with_fault(tmp_path, no_dropout_model, "1:0:start", "--eval-on-start", "true")
    assert rd.status()["state"] in ("failed", "interrupted"), rd.status()
    assert not [r for r in rd.metrics() if r["step"] > 0]


def test_a_fault_after_the_agreement_ends_both_ranks_too(tmp_path, no_dropout_model):
    """Rank 1 raises after its optimizer step 5, where no agreement follows: it fails every
    arm and exits rather than pairing its next collectives with the wrong ones of rank 0;
    rank 0 sees the closed connection (gloo) and ends too. The step-3 checkpoint stays."""
    import torch

    rd = _run_with_fault(tmp_path, no_dropout_model, "1:5:after")
    # Rank 0 writes why it ended, unless the launcher killed it first: then its `running`
    # status has a dead writer and reads as `interrupted` (resumable from step 3).
    st = rd.status()
    assert st["state"] == "interrupted" or (st["state"] == "failed"
                                            and "another rank" in st["hint"]), st
    ck = torch.load(rd.checkpoint_path, map_location="cpu", weights_only=True)
    assert ck["step"] == 3 and len(ck["ranks"]) == 2


def test_a_resume_with_another_world_size_is_refused(tmp_path, no_dropout_model, capsys):
    csv = write_tiny_csv(tmp_path / "d.csv", n=200)
    p = _torchrun(_args(no_dropout_model, csv, tmp_path / "ddp", 4), tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rd = RunDir(tmp_path / "ddp" / "dynsdpb-s0")
    st = json.loads(rd.status_path.read_text())
    st["state"] = "stopped"                      # as if stopped at the step-6 checkpoint
    rd.status_path.write_text(json.dumps(st))
    assert cli.main(["resume", str(tmp_path / "ddp")]) == 2
    err = capsys.readouterr().err
    assert "written by 2 process(es)" in err and "--nproc_per_node 2" in err


def test_the_decoder_path_with_lora_runs_data_parallel_too(tmp_path):
    """A tiny Llama with LoRA (one adapter on a shared base): 2 ranks x 2 sequences equal one
    process with 4, step for step."""
    import random

    from tests.lm_tiny import tiny_llama, tiny_tokenizer
    tiny_llama(seed=0).save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    rng = random.Random(0)
    rows = []
    for _ in range(64):
        a, b = rng.randrange(10), rng.randrange(10)
        rows.append(json.dumps({"prompt": f"what is {a} plus {b}",
                                "target": f"the answer is {a + b}", "answer": str(a + b)}))
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")

    def args(batch, out):
        return ["train", "--model", str(tmp_path / "m"), "--dataset", str(tmp_path / "d.jsonl"),
                "--method", "dynsdpb", "--steps", "4", "--batch-size", str(batch),
                "--val-size", "4", "--test-size", "4", "--max-len", "32", "--eval-every", "2",
                "--checkpoint-every", "2", "--lr", "1e-2", "--top-k", "8", "--lora-r", "4",
                "--lora-alpha", "8", "--lora-dropout", "0", "--lora-target-modules",
                "q_proj,v_proj", "--max-new-tokens", "4", "--eval-generations", "2",
                "--no-save-model", "--probe-size", "4", "--out", str(tmp_path / out)]
    assert cli.main(args(4, "one")) == 0
    p = _torchrun(args(2, "ddp"), tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    a = RunDir(tmp_path / "one" / "dynsdpb-s0").metrics()
    b = RunDir(tmp_path / "ddp" / "dynsdpb-s0").metrics()
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for k in ("loss", "ce", "kd", "samples_seen"):
            assert rb[k] == pytest.approx(ra[k], rel=2e-4, abs=1e-6), (ra["step"], k)
