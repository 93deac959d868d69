"""CausalLMTask end to end on a tiny local Llama: arms in lockstep (LoRA sharing one base, and
full fine-tuning), the DLB layout, top-k cache, evaluation, and stop/resume equality. The
step below mirrors train.Arm._step (tests/test_lm_engine.py runs the real loop)."""
from __future__ import annotations

import json

import pytest
import torch

from dynsdpb.config import RunConfig
from dynsdpb.engine.layout import BatchLayout
from dynsdpb.decoder.task import AdapterView, CausalLMTask, LMTaskOptions
from dynsdpb.decoder.models import LoraSettings
from tests.lm_tiny import tiny_llama, tiny_tokenizer

LORA = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj"))


@pytest.fixture
def setup(tmp_path):
    d = tmp_path / "tiny-llama"
    tiny_llama(seed=0).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    data = tmp_path / "arith.jsonl"
    import random
    rng = random.Random(0)
    lines = []
    for _ in range(40):
        a, b = rng.randrange(10), rng.randrange(10)
        lines.append(json.dumps({"prompt": f"what is {a} plus {b}",
                                 "target": f"the answer is {a + b}", "answer": str(a + b)}))
    data.write_text("\n".join(lines))
    return str(d), str(data)


def cfg_for(model, data, **kw):
    base = dict(model=model, dataset=data, max_len=32, val_size=4, test_size=4,
                max_train_samples=0, batch_size=4, steps=5, lr=1e-2, top_k=8, seed=0)
    base.update(kw)
    return RunConfig(**base)


class MiniArm:
    """train.Arm._step's order of work, with task.build_model and task.loss."""

    def __init__(self, cfg, task, name):
        self.cfg, self.task = cfg, task
        self.model = task.build_model(cfg, name)
        self.model.train()
        self.opt = torch.optim.AdamW(list(self.model.parameters()), lr=cfg.lr)
        self.layout = BatchLayout(len(task.train), cfg.chunk_size, cfg.seed, distill=cfg.distills)
        self.cache, self.t, self.recs = {}, 0, []

    def step(self):
        cfg, task, t = self.cfg, self.task, self.t
        b = self.layout.batch(t)
        batch = task.batch(task.train, b.ids, "cpu")
        entries = [self.cache[i] for i in b.carried]
        teacher = task.unpack(entries, batch, "cpu") if entries else None
        logits = task.forward(self.model, batch)
        parts = task.loss(logits, batch, teacher)
        self.opt.zero_grad(set_to_none=True)
        parts.total.backward()
        self.opt.step()
        self.cache = {}
        if cfg.distills:
            n = len(b.carried)
            self.cache = dict(zip(b.new, task.pack(cfg, logits[n:], batch.labels[n:], t + 1)))
        rec = {"ce": parts.ce.item(), "kd": parts.kd.item()}
        if entries:
            rec.update(task.signal_record(entries, parts))
        self.recs.append(rec)
        self.t += 1


def test_lora_arms_in_lockstep_share_one_base(setup):
    model, data = setup
    cfg = cfg_for(model, data)
    task = CausalLMTask(cfg, LMTaskOptions(lora=LORA, max_new_tokens=4))
    arms = [MiniArm(cfg_for(model, data, method=m), task, f"{m}-s0")
            for m in ("vanilla", "dynsdpb")]
    assert isinstance(arms[0].model, AdapterView)
    assert task._base.arms == ["vanilla-s0", "dynsdpb-s0"]
    n_adapter = sum(p.numel() for p in arms[0].model.parameters())
    assert 0 < n_adapter < sum(p.numel() for p in task._base.model.parameters()) / 10
    for _ in range(5):
        for a in arms:
            a.step()
    van, dyn = arms[0].recs, arms[1].recs
    assert van[0]["ce"] == pytest.approx(dyn[0]["ce"])     # same seed: identical start
    assert all(r["kd"] == 0 for r in van) and any(r["kd"] > 0 for r in dyn[1:])
    assert all(r["dropped_tokens"] == 0 < r["aligned_tokens"] for r in dyn[1:])  # plain SFT:
    # alignment is a no-op
    assert dyn[-1]["ce"] < dyn[0]["ce"]
    m, cur = task.evaluate(arms[1].model, list(range(4)), None, "cpu", False)
    assert set(m) >= {"val_loss", "val_perplexity", "val_exact_match", "probe_drift"}
    assert 0.0 <= m["val_exact_match"] <= 1.0 and task.samples
    m2, _ = task.evaluate(arms[1].model, list(range(4)), cur, "cpu", False)
    assert m2["probe_drift"] == pytest.approx(0.0, abs=1e-6)


def test_full_finetuning_arm(setup):
    model, data = setup
    cfg = cfg_for(model, data, method="dlb")
    task = CausalLMTask(cfg, LMTaskOptions(finetune="full", cache="full"))
    arm = MiniArm(cfg, task, "dlb-s0")
    assert sum(p.numel() for p in arm.model.parameters()) == sum(
        p.numel() for p in tiny_llama().parameters())
    for _ in range(4):
        arm.step()
    assert arm.recs[-1]["ce"] < arm.recs[0]["ce"] and arm.recs[-1]["kd"] > 0


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_stop_and_resume_equals_an_uninterrupted_run(setup, finetune):
    model, data = setup
    cfg = cfg_for(model, data)
    opts = LMTaskOptions(finetune=finetune, lora=LORA)

    straight = MiniArm(cfg, CausalLMTask(cfg, opts), "dynsdpb-s0")
    for _ in range(4):
        straight.step()

    first = MiniArm(cfg, CausalLMTask(cfg, opts), "dynsdpb-s0")
    for _ in range(2):
        first.step()
    ckpt = {"model": {k: v.clone() for k, v in first.model.state_dict().items()},
            "opt": first.opt.state_dict(), "cache": first.cache, "t": first.t}
    resumed = MiniArm(cfg, CausalLMTask(cfg, opts), "dynsdpb-s0")   # a fresh process's view
    resumed.model.load_state_dict(ckpt["model"])
    resumed.opt.load_state_dict(ckpt["opt"])
    resumed.cache, resumed.t = ckpt["cache"], ckpt["t"]
    for _ in range(2):
        resumed.step()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["ce"] for r in straight.recs[2:]] == [r["ce"] for r in resumed.recs]


def test_save_adapter_and_merged(setup, tmp_path):
    from transformers import AutoModelForCausalLM
    model, data = setup
    cfg = cfg_for(model, data)
    for save in ("adapter", "merged"):
        task = CausalLMTask(cfg, LMTaskOptions(lora=LORA, save=save))
        arm = MiniArm(cfg, task, "dynsdpb-s0")
        arm.step()
        out = tmp_path / save
        arm.model.save_pretrained(out)
        if save == "adapter":
            assert (out / "adapter_model.safetensors").is_file()
        else:
            m = AutoModelForCausalLM.from_pretrained(out)
            assert not any("lora" in k for k in m.state_dict())
