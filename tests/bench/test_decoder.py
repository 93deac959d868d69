"""`dynsdpb bench --decoder`: its JSON keys, ratio arithmetic, MFU formula, cache-bytes ratio
and the transformers.Trainer path, on the tiny random Llama (no network, no SmolLM2; not its
timings)."""
from __future__ import annotations

import dataclasses
import json
import statistics

import pytest
import torch

from dynsdpb.bench import speed as B
from dynsdpb.bench import decoder as D
from dynsdpb.cli import main as cli
from dynsdpb.decoder.data import collate
from dynsdpb.tasks import prepare
from tests.lm_tiny import WORDS, tiny_decoder_files, tiny_llama
from tests.bench.test_speed import assert_ratio_arithmetic

K = 8                                  # the tiny runs' top_k
V = len(WORDS)                         # the tiny Llama's vocabulary (116)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_decoder_files(tmp_path_factory.mktemp("tiny-bench-lm"))


TINY_KW = dict(max_len=32, val_size=4, test_size=4, max_train_samples=0, batch_size=4,
               lr=1e-2, top_k=K, probe_size=4, lora_r=4, lora_alpha=8, lora_dropout=0.0,
               lora_target_modules="q_proj,v_proj", max_new_tokens=4, eval_generations=2,
               warmup_ratio=0.0)


def tiny_cfg(tiny, steps=6, **kw):
    model, data = tiny
    return D.decoder_config(model, data, steps, **{**TINY_KW, **kw})


# ----------------------------------------------------------------------------------------
# pure arithmetic

def test_config_is_the_preset_at_budget_compute_without_evaluations():
    cfg = D.decoder_config("smollm2-135m", "arith-easy", 30)
    assert (cfg.finetune, cfg.kd_cache, cfg.top_k, cfg.lora_r, cfg.batch_size) == (
        "lora", "topk", 64, 8, 4)
    assert cfg.budget == "compute" and cfg.steps == 30 and cfg.eval_every >= 10 ** 6
    assert not cfg.save_model and cfg.checkpoint_every == 0


def test_mfu_formula_counts_a_frozen_parameter_4_and_a_trained_one_6():
    assert B.flops_per_token(1000) == 6000                   # full fine-tuning: 6 N
    assert B.flops_per_token(1000, frozen=900) == 4 * 900 + 6 * 100
    # 1e6 parameters of which 0.75e6 frozen: 4.5e6 FLOPs per token; 100 tokens/s on a
    # 0.9 GFLOP/s machine is 0.5
    assert B.mfu(10 ** 6, 100.0, 0.9e9, frozen=750_000) == pytest.approx(0.5)
    assert B.mfu(10 ** 6, 100.0, 1.2e9) == pytest.approx(0.5)  # the encoder's, unchanged
    assert "4 N_frozen + 6 N_lora" in D.MFU_FORMULA


def test_lora_param_counts_split_the_frozen_base_from_the_adapter():
    from peft import LoraConfig, get_peft_model
    m = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    n, frozen = D.lora_param_counts(m)
    lora = sum(p.numel() for nm, p in m.named_parameters() if "lora_" in nm)
    emb = m.get_input_embeddings().weight.numel()          # tied: the LM head too
    assert lora == 2 * 2 * (32 + 32)                       # 2 layers x (A 2x32 + B 32x2)
    assert n == sum(p.numel() for p in m.parameters()) - emb
    assert frozen == n - lora
    assert B.flops_per_token(n, frozen) == 4 * frozen + 6 * lora


def test_cache_bytes_per_token_and_the_records_ratio():
    assert D.cache_bytes_per_token("topk", K, V) == 24 + 8 * K + 16 == 104
    assert D.cache_bytes_per_token("full", K, V) == 24 + 2 * V == 256
    assert D.cache_bytes_per_token("topk", 500, V) == D.cache_bytes_per_token("topk", V, V)
    smol = D.cache_bytes_per_token("topk", 64, 49152) / D.cache_bytes_per_token("full", 64, 49152)
    assert smol == pytest.approx(552 / 98328) and smol <= D.GOALS["kd_cache_bytes_ratio"][1]
    with pytest.raises(ValueError):
        D.cache_bytes_per_token("fp8", K, V)
    top = [{"step": 1, "kd_cache_bytes": None}, {"step": 2, "kd_cache_bytes": 10},
           {"step": 3, "kd_cache_bytes": 30}, {"step": 4, "kd_cache_bytes": 999}]
    full = [{"step": 1}, {"step": 2, "kd_cache_bytes": 100}, {"step": 3, "kd_cache_bytes": 300}]
    assert D.kd_cache_bytes_ratio(top, full) == pytest.approx(40 / 400)   # steps 2, 3 only
    assert D.kd_cache_bytes_ratio(top, [{"step": 1}]) is None


def test_decoder_goals_are_their_own_and_the_encoder_goals_unchanged():
    assert B.GOALS["dynsdpb_vs_vanilla_step_time"] == ("<=", 1.05)
    assert D.GOALS["dynsdpb_vs_vanilla_step_time"] == ("<=", 1.10)
    out = {"dynsdpb_vs_vanilla_step_time": 1.08, "vanilla_vs_hf_trainer_throughput": 1.2,
           "mfu": 0.01, "kd_cache_bytes_ratio": 0.02}
    assert B.check_goals(out, D.GOALS) == {"dynsdpb_vs_vanilla_step_time": True,
                                           "vanilla_vs_hf_trainer_throughput": True,
                                           "kd_cache_bytes_ratio": False}
    assert B.check_goals(out)["dynsdpb_vs_vanilla_step_time"] is False      # encoder: 1.05
    assert "mfu" not in B.check_goals(out, D.GOALS)


def test_the_task_packs_the_bytes_cache_bytes_per_token_says(tiny):
    cfg = tiny_cfg(tiny)
    task = prepare(cfg)
    model = task.build_model(cfg, "vanilla-s0")
    b = task.batch(task.train, [0, 1, 2, 3], "cpu")
    with torch.no_grad():
        logits = task.forward(model, b)
    n_tok = sum(len(r["labels"]) - r["labels"].count(-100) for r in
                (task.train.rows[i] for i in range(4)))
    for kind in ("topk", "full"):
        task.opt = dataclasses.replace(task.opt, cache=kind)
        entries = task.pack(cfg, logits, b.labels, 1)
        nbytes = sum(v.numel() * v.element_size() for e in entries for v in e.values())
        assert nbytes == n_tok * D.cache_bytes_per_token(kind, K, V), kind


# ----------------------------------------------------------------------------------------
# the Trainer path and the whole run on the tiny model

def _loss(model, rows, pad):
    model.eval()
    with torch.no_grad():
        return float(model(**collate(rows, pad)).loss)


def test_hf_trainer_trains_the_same_lora_model_in_our_order(tiny, tmp_path):
    from peft import get_peft_model_state_dict
    cfg = tiny_cfg(tiny, steps=5)
    task = prepare(cfg)
    pad = task.tokenizer.pad_token_id
    fresh = D.hf_lora_model(task, cfg)
    # the same initial adapter as our arm of this seed (LoRA A drawn from it, B = 0)
    ours = task.build_model(cfg, "vanilla-s0").state_dict()
    theirs = get_peft_model_state_dict(fresh)
    assert set(ours) == set(theirs) and len(ours) == 2 * 2 * 2     # q,v x 2 layers x A,B
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    order = B.vanilla_order(cfg, len(task.train))
    assert len(order) == 5 * 4
    rows = [task.train.rows[i] for i in order[:4]]
    before = _loss(fresh, rows, pad)

    res = D.hf_trainer_throughput(cfg, tmp_path, task)
    model = res["model"]
    after = _loss(model, rows, pad)
    assert abs(after - before) > 1e-3, (before, after)               # it trained
    assert res["samples_per_s"] > 0 and len(res["step_s"]) == 4
    assert res["train_loss"] == res["train_loss"]                     # not nan
    sd = get_peft_model_state_dict(model)
    assert any(float(v.abs().sum()) > 0 for k, v in sd.items() if "lora_B" in k)
    base = dict(fresh.named_parameters())
    for n, p in model.named_parameters():                              # the base stays frozen
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n
    assert res["tokens_per_sample"] == pytest.approx(
        statistics.mean(len(task.train.rows[i]["input_ids"]) for i in order))
    assert res["vocab_size"] == V
    assert res["frozen_params"] < res["non_embedding_params"]


def test_run_on_the_tiny_llama_reports_every_figure_consistently(tiny):
    model, data = tiny
    out = D.run(model=model, dataset=data, steps=6, log=lambda m: None,
                **TINY_KW)
    for k in D.FIGURES:
        assert isinstance(out[k], float) and out[k] > 0, (k, out[k])
    assert out["mode"] == "decoder" and out["top_k"] == K and out["kd_cache"] == "topk"
    med, sps = assert_ratio_arithmetic(out, batch_size=4)
    n, fr = out["non_embedding_params"], out["frozen_params"]
    assert out["mfu"] == pytest.approx((4 * fr + 6 * (n - fr)) * sps["ours_vanilla"]
                                       * out["tokens_per_sample"] / out["matmul_flops"])
    # every cached token costs the same bytes, so the measured ratio is the expected one
    assert out["kd_cache_bytes_ratio"] == pytest.approx(104 / 256)
    assert out["kd_cache_bytes_ratio_expected"] == pytest.approx(104 / 256)
    assert "full" in out["kd_cache_bytes_source"]
    assert out["experiment_overhead"] > 1.0
    rss = out["peak_rss_bytes"]
    assert out["peak_rss_ratio"] == pytest.approx(rss["dynsdpb"] / rss["vanilla"])
    assert set(out["goals_met"]) == set(D.GOALS)
    assert out["goals_met"]["kd_cache_bytes_ratio"] is False          # 0.41 > 0.01
    assert set(out["phase_s"]) == {"compare", "hf_trainer", "mfu", "kd_cache", "peak_rss"}
    json.dumps(out)                                                    # one JSON line


def test_cli_bench_decoder_picks_the_decoder_and_its_goals(monkeypatch, capsys):
    fake = {"dynsdpb_vs_vanilla_step_time": 1.08, "vanilla_vs_hf_trainer_throughput": 1.3,
            "mfu": 0.02, "experiment_overhead": 5.0, "kd_cache_bytes_ratio": 0.0056,
            "peak_rss_ratio": 1.0}
    B.with_goals(fake, D.GOALS)
    seen = {}

    def fake_run(**kw):
        seen.update(kw)
        return fake
    monkeypatch.setattr(D, "run", fake_run)
    monkeypatch.setattr(B, "run", lambda **kw: pytest.fail("the encoder bench ran"))
    assert cli.main(["bench", "--decoder", "--steps", "4"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == fake
    assert (seen["model"], seen["dataset"], seen["steps"]) == ("smollm2-135m", "arith-easy", 4)
    assert any("dynsdpb_vs_vanilla_step_time" in x and "<= 1.1" in x and "met" in x
               for x in out)
    assert any("kd_cache_bytes_ratio" in x and "met" in x for x in out)
    assert any(x.startswith("mfu") and "goal" not in x for x in out)
    assert cli.main(["bench", "--decoder", "--json"]) == 0
    cap = capsys.readouterr()
    assert len(cap.out.strip().splitlines()) == 1 and "kd_cache_bytes_ratio" in cap.err
    assert cli.main(["bench", "--decoder", "--app"]) == 2
    assert "choose one" in capsys.readouterr().err
