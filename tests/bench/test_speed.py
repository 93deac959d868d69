"""`dynsdpb bench`: its JSON keys and ratio arithmetic on a tiny model (not its timings)."""
from __future__ import annotations

import json

import pytest

from dynsdpb.bench import speed as B
from dynsdpb.cli import main as cli


def test_pure_arithmetic():
    assert B.ratio(3.0, 2.0) == 1.5 and B.ratio(1.0, 0) is None and B.ratio(None, 1) is None
    recs = [{"wall_time": w} for w in (0.5, 1.5, 2.0, 4.0)]
    assert B.median_step_times(recs) == [1.0, 0.5, 2.0]
    assert B.median_step_times(recs, skip=2) == [0.5, 2.0]
    # 6 N FLOPs per token: 1e6 parameters at 100 tokens/s on a 1.2 GFLOP/s machine = 0.5
    assert B.mfu(10 ** 6, 100.0, 1.2e9) == pytest.approx(0.5)
    assert B.check_goals({"mfu": 0.6, "dynsdpb_vs_vanilla_step_time": 1.2}) == {
        "mfu": True, "dynsdpb_vs_vanilla_step_time": False}


def test_non_embedding_params_leave_out_embeddings():
    import torch
    m = torch.nn.Sequential(torch.nn.Embedding(100, 8), torch.nn.Linear(8, 4))
    assert B.non_embedding_params(m) == 8 * 4 + 4


def test_run_on_a_tiny_model_reports_every_figure_consistently(tiny_csv):
    out = B.run(model="tiny-random-bert", dataset=str(tiny_csv), steps=6, log=lambda m: None,
                batch_size=4, max_len=16, val_size=10, test_size=10, max_train_samples=0)
    for k in ("dynsdpb_vs_vanilla_step_time", "vanilla_vs_hf_trainer_throughput", "mfu",
              "experiment_overhead", "peak_rss_ratio"):
        assert isinstance(out[k], float) and out[k] > 0, (k, out[k])
    med, sps = assert_ratio_arithmetic(out, batch_size=4)
    rss = out["peak_rss_bytes"]
    assert rss["vanilla"] > 50 * 2 ** 20           # a process with torch loaded
    assert out["peak_rss_ratio"] == pytest.approx(rss["dynsdpb"] / rss["vanilla"])
    assert out["experiment_overhead"] > 1.0        # loading and testing cost something
    assert set(out["goals_met"]) == {"dynsdpb_vs_vanilla_step_time",
                                     "vanilla_vs_hf_trainer_throughput", "mfu"}
    json.dumps(out)                                 # the CLI prints it as one JSON line


def test_cli_bench_prints_the_figures_then_one_json_line(monkeypatch, capsys):
    fake = {"dynsdpb_vs_vanilla_step_time": 1.02, "vanilla_vs_hf_trainer_throughput": 0.9,
            "mfu": 0.1, "experiment_overhead": 3.0, "peak_rss_ratio": 1.01,
            "goals": {k: f"{op} {g}" for k, (op, g) in B.GOALS.items()}}
    fake["goals_met"] = B.check_goals(fake)
    monkeypatch.setattr(B, "run", lambda **kw: fake)
    assert cli.main(["bench"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == fake
    assert any("vanilla_vs_hf_trainer_throughput" in x and "MISSED" in x for x in out)
    assert any("dynsdpb_vs_vanilla_step_time" in x and "met" in x for x in out)
    assert cli.main(["bench", "--json"]) == 0
    cap = capsys.readouterr()
    assert len(cap.out.strip().splitlines()) == 1 and "mfu" in cap.err


def test_a_bench_run_whose_arm_failed_is_an_error_not_a_figure(monkeypatch, tmp_path):
    import dynsdpb.experiment as E
    monkeypatch.setattr(E, "run_experiment", lambda exp: {"states": {"vanilla-s0": "finished",
                                                                     "dynsdpb-s0": "failed"}})
    with pytest.raises(RuntimeError, match="dynsdpb-s0 ended failed"):
        B.run_finished(tmp_path)
    monkeypatch.setattr(E, "run_experiment", lambda exp: {"states": {"vanilla-s0": "finished"}})
    assert B.run_finished(tmp_path) >= 0


def assert_ratio_arithmetic(out: dict, batch_size: int) -> tuple[dict, dict]:
    """The step-time and Trainer ratios are the quotients of the figures next to them (either
    bench mode). Returns (median_step_s, samples_per_s)."""
    med = out["median_step_s"]
    assert out["dynsdpb_vs_vanilla_step_time"] == pytest.approx(med["dynsdpb"] / med["vanilla"])
    sps = out["samples_per_s"]
    assert sps["ours_vanilla"] == pytest.approx(batch_size / med["vanilla_alone"])
    assert sps["ours_vanilla_lockstep"] == pytest.approx(batch_size / med["vanilla"])
    assert out["vanilla_vs_hf_trainer_throughput"] == pytest.approx(
        sps["ours_vanilla"] / sps["hf_trainer"])
    return med, sps
