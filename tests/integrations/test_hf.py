"""DynSDPBTrainer (integrations/hf.py) against the engine's arm: same data order, seed and tiny
model with dropout off give the same loss parts step for step; resume equals an uninterrupted
run; wrong combinations are refused."""
from __future__ import annotations

import shutil

import datasets
import pytest
import torch
from transformers import DataCollatorWithPadding, TrainingArguments

from dynsdpb.errors import ConfigError
from dynsdpb.experiment import create_experiment, run_experiment
from dynsdpb.integrations import DynSDPBTrainer, method_config
from dynsdpb.store import read_metrics
from tests.conftest import tiny_config

PARTS = ("loss", "ce", "kd", "alpha", "alpha_lo", "alpha_hi", "tau", "tau_lo", "tau_hi",
         "logit_drift", "agreement", "u_mean", "d_mean")
TOL = 1e-5


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(csv, model, method, **kw):
    base = dict(model=str(model), method=method, steps=6, eval_every=100, checkpoint_every=0,
                lr=1e-2, alpha=1.0, tau=2.0)
    base.update(kw)
    return tiny_config(csv, **base)


def engine_records(cfg, root):
    exp = create_experiment(root, cfg, [cfg.method], [cfg.seed])
    run_experiment(exp)
    return read_metrics(exp / f"{cfg.method}-s{cfg.seed}" / "metrics.jsonl")


def _task_and_model(cfg):
    from dynsdpb import tasks
    task = tasks.prepare(cfg)
    torch.manual_seed(cfg.seed)       # as the engine's Arm draws the model
    return task, task.build_model(cfg, "hf")


def _dataset(task):
    cols = {"input_ids": task.train.input_ids, "labels": [int(y) for y in task.train.labels]}
    if task.train.token_type_ids is not None:
        cols["token_type_ids"] = task.train.token_type_ids
    return datasets.Dataset.from_dict(cols)


def make_trainer(cfg, out, batch=None, accumulation=1, save_steps=None, **kw):
    task, model = _task_and_model(cfg)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch or cfg.batch_size,
        gradient_accumulation_steps=accumulation, max_steps=cfg.steps,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=0,
        lr_scheduler_type="linear", max_grad_norm=cfg.grad_clip, optim="adamw_torch",
        seed=cfg.seed, logging_steps=1, report_to=[], use_cpu=True,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        disable_tqdm=True, **kw)
    return DynSDPBTrainer(model=model, args=args, train_dataset=_dataset(task),
                          data_collator=DataCollatorWithPadding(task.tokenizer),
                          method=cfg.method, alpha=cfg.alpha, tau=cfg.tau)


def assert_parts_equal(got, want, steps):
    assert [r["step"] for r in got] == list(steps)
    worst = 0.0
    for g, w in zip(got, want):
        assert g["step"] == w["step"]
        for k in PARTS:
            if w.get(k) is None:
                assert g.get(k) is None, (k, g)
                continue
            assert g.get(k) is not None, (k, g)
            worst = max(worst, abs(g[k] - w[k]))
            assert abs(g[k] - w[k]) <= TOL, (g["step"], k, g[k], w[k])
    return worst


@pytest.mark.parametrize("method", ["dlb", "dynsdpb"])
def test_trainer_equals_engine_arm(method, tiny_csv, no_dropout_model, tmp_path, one_thread,
                                   report):
    cfg = _cfg(tiny_csv, no_dropout_model, method)
    want = engine_records(cfg, tmp_path / "runs")
    tr = make_trainer(cfg, tmp_path / "hf")
    tr.train()
    got = tr.dynsdpb_records
    worst = assert_parts_equal(got, want, range(1, cfg.steps + 1))
    assert got[0]["kd"] == 0.0 and got[0].get("alpha") is None     # step 1: plain CE
    assert got[1]["kd"] > 0                                          # then the teacher
    # Trainer.log carried the engine's keys to the trackers
    logged = [h for h in tr.state.log_history if "ce" in h]
    assert len(logged) == cfg.steps and {"kd", "alpha", "tau", "logit_drift",
                                         "agreement"} <= set(logged[-1])
    report(f"DynSDPBTrainer vs engine arm ({method}, {cfg.steps} steps): largest difference "
           f"of a loss part {worst:.2e}")


def test_gradient_accumulation_equals_a_larger_batch(tiny_csv, no_dropout_model, tmp_path,
                                                     one_thread, report):
    """2 micro-batches of 2 new rows per step = the engine with batch_size 4."""
    cfg = _cfg(tiny_csv, no_dropout_model, "dynsdpb", steps=5)
    want = engine_records(cfg, tmp_path / "runs")
    tr = make_trainer(cfg, tmp_path / "hf", batch=2, accumulation=2)
    tr.train()
    worst = assert_parts_equal(tr.dynsdpb_records, want, range(1, cfg.steps + 1))
    report(f"DynSDPBTrainer 2 x 2 accumulation vs engine batch 4: largest difference {worst:.2e}")


def test_resume_equals_uninterrupted(tiny_csv, no_dropout_model, tmp_path, one_thread):
    cfg = _cfg(tiny_csv, no_dropout_model, "dynsdpb")
    full = make_trainer(cfg, tmp_path / "a", save_steps=3)
    full.train()
    ckpt = tmp_path / "a" / "checkpoint-3"
    assert (ckpt / "dynsdpb_chain.pt").is_file()
    resumed = make_trainer(cfg, tmp_path / "b")
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert_parts_equal(resumed.dynsdpb_records, full.dynsdpb_records[3:], range(4, 7))
    # without the chain file the chain restarts: step 4 trains with CE only, said plainly
    bare = tmp_path / "bare"
    shutil.copytree(ckpt, bare)
    (bare / "dynsdpb_chain.pt").unlink()
    again = make_trainer(cfg, tmp_path / "c")
    again.train(resume_from_checkpoint=str(bare))
    assert again.dynsdpb_records[0]["step"] == 4 and again.dynsdpb_records[0]["kd"] == 0.0
    assert again.dynsdpb_records[0].get("alpha") is None
    assert again.dynsdpb_records[1]["alpha"] is not None   # the chain runs again from step 5


def test_wrong_combinations_are_refused(tiny_csv, no_dropout_model, tmp_path):
    cfg = _cfg(tiny_csv, no_dropout_model, "dynsdpb", steps=2)
    with pytest.raises(ConfigError, match="train_sampling_strategy"):
        make_trainer(cfg, tmp_path / "a", train_sampling_strategy="group_by_length")
    with pytest.raises(ConfigError, match="label_smoothing"):
        make_trainer(cfg, tmp_path / "b", label_smoothing_factor=0.1)
    with pytest.raises(ConfigError, match="alpha"):
        method_config(method="dynsdpb", alpha=float("nan"))
    with pytest.raises(ConfigError, match="augment"):
        method_config(method="dynsdpb", augment="token-mask")

    class Reversing(DataCollatorWithPadding):
        def __call__(self, features):
            return super().__call__(list(reversed(features)))
    tr = make_trainer(cfg, tmp_path / "c")
    tr.data_collator = Reversing(tr.data_collator.tokenizer)
    with pytest.raises(ConfigError, match="reorders"):
        tr.train()


# -- causal-LM SFT (label masks: -100 on the prompt and padding) -------------------------------

@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from tests.lm_tiny import tiny_decoder_files
    return tiny_decoder_files(tmp_path_factory.mktemp("tiny-lm"), 48)


def _lm_cfg(tiny_lm, method, **kw):
    from dynsdpb import config as C
    model, data = tiny_lm
    base = dict(model=model, dataset=data, max_len=32, val_size=4, test_size=4,
                max_train_samples=0, batch_size=4, steps=5, lr=1e-2, top_k=8, seed=0,
                eval_every=100, checkpoint_every=0, probe_size=4, finetune="full",
                max_new_tokens=4, eval_generations=0, save_model=False, warmup_ratio=0.0,
                method=method, alpha=1.0, tau=2.0)
    base.update(kw)
    return C.check_config(C.RunConfig(**base))


def _lm_trainer(cfg, out, model=None, save_steps=None):
    from functools import partial

    from dynsdpb import tasks
    from dynsdpb.decoder.data import collate
    task = tasks.prepare(cfg)
    if model is None:
        torch.manual_seed(cfg.seed)
        model = task.build_model(cfg, "hf")
    rows = task.train.rows
    ds = datasets.Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows],
                                     "labels": [r["labels"] for r in rows]})
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.batch_size, max_steps=cfg.steps,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=0,
        lr_scheduler_type="linear", max_grad_norm=cfg.grad_clip, optim="adamw_torch",
        seed=cfg.seed, logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500)
    return DynSDPBTrainer(model=model, args=args, train_dataset=ds,
                          data_collator=partial(collate, pad_id=task.tokenizer.pad_token_id),
                          method=cfg.method, alpha=cfg.alpha, tau=cfg.tau, top_k=cfg.top_k)


@pytest.mark.parametrize("method", ["dlb", "dynsdpb"])
def test_causal_lm_trainer_equals_engine_arm(method, tiny_lm, tmp_path, one_thread, report):
    cfg = _lm_cfg(tiny_lm, method)
    want = engine_records(cfg, tmp_path / "runs")
    tr = _lm_trainer(cfg, tmp_path / "hf")
    tr.train()
    got = tr.dynsdpb_records
    worst = assert_parts_equal(got, want, range(1, cfg.steps + 1))
    for g, w in zip(got[1:], want[1:]):
        assert g["aligned_tokens"] == w["aligned_tokens"] > 0
    report(f"DynSDPBTrainer vs engine arm (causal LM, {method}, {cfg.steps} steps): largest "
           f"difference of a loss part {worst:.2e}")


def test_peft_lora_causal_lm_resumes_as_uninterrupted(tiny_lm, tmp_path, one_thread):
    from peft import LoraConfig, get_peft_model

    from tests.lm_tiny import tiny_llama

    def lora():
        torch.manual_seed(0)
        m = get_peft_model(tiny_llama(seed=0), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                           target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():   # B = 0 at init: nudge it so the adapter moves the logits
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)
        return m
    cfg = _lm_cfg(tiny_lm, "dlb", steps=6)
    full = _lm_trainer(cfg, tmp_path / "a", model=lora(), save_steps=3)
    full.train()
    recs = full.dynsdpb_records
    assert recs[0]["kd"] == 0.0 and all(r["kd"] > 0 for r in recs[1:])
    ckpt = tmp_path / "a" / "checkpoint-3"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "dynsdpb_chain.pt").is_file()
    resumed = _lm_trainer(cfg, tmp_path / "b", model=lora())
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert_parts_equal(resumed.dynsdpb_records, recs[3:], range(4, 7))
    # the saved adapter carries a Hub-format card (checkpoints do not)
    resumed.save_model(str(tmp_path / "final"))
    card = (tmp_path / "final" / "README.md").read_text(encoding="utf-8")
    assert "library_name: peft" in card and "pipeline_tag: text-generation" in card
    assert "DLB [paper]" in card and "6 optimizer steps" in card
    assert not (ckpt / "README.md").exists() or "DynSDPBTrainer" not in \
        (ckpt / "README.md").read_text(encoding="utf-8")


def test_rows_padded_beforehand_pass_the_collator_check(tiny_csv, no_dropout_model, tmp_path):
    """padding="max_length" at tokenization: the check compares the rows' real tokens."""
    cfg = _cfg(tiny_csv, no_dropout_model, "dynsdpb", steps=2)
    tr = make_trainer(cfg, tmp_path / "a")
    L = cfg.max_len

    def pad(r):
        n = len(r["input_ids"])
        return {"input_ids": r["input_ids"] + [0] * (L - n), "attention_mask": [1] * n +
                [0] * (L - n), "token_type_ids": r["token_type_ids"] + [0] * (L - n)}
    tr.train_dataset = tr.train_dataset.map(pad)
    tr.train()
    assert [r["step"] for r in tr.dynsdpb_records] == [1, 2]


def test_a_regression_head_is_refused_before_any_update(tiny_csv, no_dropout_model, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification
    cfg = _cfg(tiny_csv, no_dropout_model, "dynsdpb", steps=2)
    tr = make_trainer(cfg, tmp_path / "a")
    mc = AutoConfig.from_pretrained(no_dropout_model)
    mc.problem_type, mc.num_labels = "regression", 1
    model = AutoModelForSequenceClassification.from_config(mc)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ds = tr.train_dataset.map(lambda r: {"labels": float(r["labels"])})
    reg = DynSDPBTrainer(model=model, args=tr.args, train_dataset=ds,
                         data_collator=tr.data_collator, method="dynsdpb")
    with pytest.raises(ConfigError, match="regression"):
        reg.train()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
