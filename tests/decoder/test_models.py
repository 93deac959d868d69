"""Decoder models: local folders, LoRA arms sharing one frozen base, saving, a few training
steps with the token-level loss; one slow test of the real built-in smollm2-135m."""
from __future__ import annotations

import time

import pytest
import torch

from dynsdpb.config import RunConfig
from dynsdpb.errors import ConfigError
from dynsdpb.decoder.data import collate, encode
from dynsdpb.decoder.loss import make_teachers, token_loss
from dynsdpb.decoder.models import (LoraSettings, SharedLoraBase, cache_root, count_params,
                               load_causal_lm, load_lm_tokenizer)
from tests.lm_tiny import arith_rows, tiny_llama, tiny_tokenizer

LORA = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj"))


def _batch(tok, rows, max_len=32):
    return collate([encode(tok, e, max_len) for e in rows], tok.pad_token_id)


def _logits(model, b):
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                 position_ids=b["position_ids"]).logits


def _train(model, params, tok, steps, seed=0, method="dynsdpb"):
    """A DLB-layout mini loop: step t trains on chunk t-1 (carried, distilled toward the
    logits recorded at t-1) plus chunk t (new). Returns the CE per step."""
    cfg = RunConfig(method=method)
    opt = torch.optim.AdamW(params, lr=1e-2)
    chunks = [arith_rows(4, seed=seed * 100 + t) for t in range(steps)]
    cache, ces = None, []
    for t in range(steps):
        rows = (chunks[t - 1] if t else []) + chunks[t]
        b = _batch(tok, rows)
        logits = _logits(model, b)
        n_old = 4 if t else 0
        teachers = [*cache, *[None] * 4] if cache else None
        parts = token_loss(logits, b["labels"], teachers)
        opt.zero_grad()
        parts.total.backward()
        opt.step()
        if t:
            assert parts.aligned[:n_old].tolist() == [len(c.target_ids) for c in cache]
        cache = make_teachers(logits[n_old:], b["labels"][n_old:], cfg, t + 1)
        ces.append(parts.ce.item())
    return ces


@pytest.fixture
def tiny_folder(tmp_path):
    d = tmp_path / "tiny-llama"
    tiny_llama(seed=0).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


def test_local_folder_loads_with_left_padding(tiny_folder):
    tok = load_lm_tokenizer(str(tiny_folder))
    model = load_causal_lm(str(tiny_folder))
    assert tok.padding_side == "left" and tok.pad_token_id is not None and tok.chat_template
    assert model.training and count_params(model, trainable_only=True) == count_params(model)
    ref = tiny_llama(seed=0)
    ids = torch.tensor([[2, 4, 6, 7, 3]])
    assert torch.allclose(model(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_bad_model_names(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no such folder"):
        load_causal_lm(str(tmp_path / "nope"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as e:
        load_causal_lm("someone/not-a-real-model-xyz")
    assert e.value.problems[0].field == "model" and "smollm2-135m" in str(e.value)
    monkeypatch.setenv("DYNSDPB_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"


def test_lora_settings_are_checked():
    with pytest.raises(ConfigError, match="lora_r"):
        SharedLoraBase(tiny_llama(), LoraSettings(r=0))
    shared = SharedLoraBase(tiny_llama(), LoraSettings(target_modules=("qkv_proj",)))
    with pytest.raises(ConfigError) as e:
        shared.add_arm("arm-a")
    assert e.value.problems[0].field == "lora_target_modules"
    with pytest.raises(ConfigError, match="adapter name"):
        SharedLoraBase(tiny_llama(), LORA).add_arm("a")


def test_lora_arms_share_one_frozen_base_and_stay_independent():
    tok = tiny_tokenizer()
    base = tiny_llama(seed=0)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    b = _batch(tok, arith_rows(3, seed=9))
    with torch.no_grad():
        ref = _logits(base.eval(), b)
    shared = SharedLoraBase(base, LORA)
    params = {arm: shared.add_arm(arm, seed=i) for i, arm in enumerate(["vanilla-s0", "dyn-s0"])}
    assert set(map(id, params["vanilla-s0"])).isdisjoint(map(id, params["dyn-s0"]))
    n_lora = sum(p.numel() for p in params["dyn-s0"])
    assert 0 < n_lora < count_params(base) / 10
    shared.model.eval()
    for arm in params:                                # LoRA B = 0: every arm starts as the base
        shared.use(arm)
        with torch.no_grad():
            assert torch.allclose(_logits(shared.model, b), ref, atol=1e-6)
    shared.model.train()
    shared.use("dyn-s0")
    ces = _train(shared.model, params["dyn-s0"], tok, steps=6)
    assert ces[-1] < ces[0]
    shared.model.eval()
    with torch.no_grad():
        shared.use("vanilla-s0")                      # untouched arm: still the base
        assert torch.allclose(_logits(shared.model, b), ref, atol=1e-6)
        shared.use("dyn-s0")
        assert not torch.allclose(_logits(shared.model, b), ref, atol=1e-3)
    # The frozen base weights did not move (their names gain a `base_layer.` under peft).
    now = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
           for k, v in shared.model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(now[k], v) for k, v in base_state.items())


def test_adapter_state_roundtrip_and_saving(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    tok = tiny_tokenizer()
    shared = SharedLoraBase(tiny_llama(seed=0), LORA)
    params = shared.add_arm("arm-a", seed=0)
    shared.add_arm("arm-b", seed=1)
    shared.use("arm-a")
    _train(shared.model, params, tok, steps=3)
    b = _batch(tok, arith_rows(3, seed=9))
    shared.model.eval()
    with torch.no_grad():
        want = _logits(shared.model, b)
    # Checkpoint state: copy a's weights into b, then b computes what a does.
    shared.load_adapter_state("arm-b", shared.adapter_state("arm-a"))
    shared.use("arm-b")
    with torch.no_grad():
        assert torch.allclose(_logits(shared.model, b), want, atol=1e-6)
    shared.use("arm-a")
    ad = shared.save_adapter("arm-a", tmp_path / "adapter")
    assert (ad / "adapter_model.safetensors").is_file() and (ad / "adapter_config.json").is_file()
    reloaded = PeftModel.from_pretrained(tiny_llama(seed=0), ad).eval()
    with torch.no_grad():
        assert torch.allclose(_logits(reloaded, b), want, atol=1e-5)
    md = shared.save_merged("arm-a", tmp_path / "merged", tokenizer=tok)
    merged = AutoModelForCausalLM.from_pretrained(md).eval()
    assert not any("lora" in k for k in merged.state_dict())
    with torch.no_grad():
        assert torch.allclose(_logits(merged, b), want, atol=1e-5)
    assert shared.arms == ["arm-a", "arm-b"]                 # the shared model kept both adapters


def test_full_finetuning_arms_are_independent_copies_that_train(tmp_path):
    """finetune: full gives each arm its own model (CausalLMTask.build_model): training one
    arm leaves the other untouched."""
    from dynsdpb.tasks import prepare
    from tests.lm_tiny import tiny_decoder_files
    model, data = tiny_decoder_files(tmp_path, 24)
    cfg = RunConfig(model=model, dataset=data, finetune="full", max_len=32, val_size=4,
                    test_size=4, max_train_samples=0, batch_size=4)
    task = prepare(cfg)
    a, b = task.build_model(cfg, "dlb-s0"), task.build_model(cfg, "vanilla-s0")
    assert all(p.requires_grad for p in a.parameters())
    before = {k: v.clone() for k, v in b.state_dict().items()}
    ces = _train(a, list(a.parameters()), tiny_tokenizer(), steps=6, method="dlb")
    assert ces[-1] < ces[0]
    assert all(torch.equal(b.state_dict()[k], v) for k, v in before.items())


@pytest.mark.slow
def test_real_smollm2_one_lora_step(report):
    """Converts once into the cache (~25-40 s on 2 cores the first time), then one LoRA step
    at 2 x 32 tokens with a top-k teacher."""
    t0 = time.perf_counter()
    seen = []
    tok = load_lm_tokenizer("smollm2-135m", progress=lambda f, m: seen.append(f))
    model = load_causal_lm("smollm2-135m")
    load_s = time.perf_counter() - t0
    assert count_params(model) == 134_515_008
    assert not seen or seen[-1] == 1.0
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    shared = SharedLoraBase(model, LoraSettings())
    params = shared.add_arm("dyn-s0", seed=0)
    rows = arith_rows(2, seed=0)
    b = _batch(tok, rows, max_len=32)
    t1 = time.perf_counter()
    logits = _logits(shared.model, b)
    teachers = make_teachers(logits.detach(), b["labels"], RunConfig(method="dynsdpb"), 1)
    parts = token_loss(logits, b["labels"], teachers)
    parts.total.backward()
    torch.optim.AdamW(params, lr=1e-4).step()
    step_s = time.perf_counter() - t1
    assert torch.isfinite(parts.total) and parts.aligned.tolist() == [
        len(t.target_ids) for t in teachers]
    assert all(p.grad is not None for p in params)
    report(f"smollm2-135m: load {load_s:.1f} s (conversion included if it ran), one LoRA "
           f"step at {tuple(b['input_ids'].shape)} {step_s:.2f} s")
