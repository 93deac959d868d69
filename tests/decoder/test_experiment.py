"""Decoders through the real engine: create_experiment / run_experiment on a tiny random Llama
(LoRA arms sharing one base, full fine-tuning), stop/resume equality, samples.jsonl and
tokens.jsonl, summaries, validate messages and CLI flags of the decoder fields."""
from __future__ import annotations

import threading

import pytest
import torch

from dynsdpb import config as C
from dynsdpb.cli.main import main
from dynsdpb.compare import format_table
from dynsdpb.errors import ConfigError
from dynsdpb.experiment import create_experiment, run_experiment
from dynsdpb.catalog import GENERATION_DATASETS as BUILTIN_LM_DATASETS
from dynsdpb.decoder.task import AdapterView, CausalLMTask
from dynsdpb.store import ExperimentDir, RunDir
from dynsdpb.tasks import prepare
from tests.lm_tiny import tiny_decoder_files, tiny_llama

VOLATILE = {"time", "wall_time", "samples_per_s"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_decoder_files(tmp_path_factory.mktemp("tiny-lm"), 48)


def lm_cfg(tiny, **kw):
    model, data = tiny
    base = dict(model=model, dataset=data, max_len=32, val_size=4, test_size=4,
                max_train_samples=0, batch_size=4, steps=5, lr=1e-2, top_k=8, seed=0,
                eval_every=2, checkpoint_every=0, probe_size=4, lora_r=4, lora_alpha=8,
                lora_dropout=0.0, lora_target_modules="q_proj,v_proj", max_new_tokens=4,
                eval_generations=2, save_model=False)
    base.update(kw)
    return C.check_config(C.RunConfig(**base))


def _run(cfg, root, methods, seeds=(0,), stop_after=None):
    exp = create_experiment(root, cfg, list(methods), list(seeds))
    stop = threading.Event()

    def progress(arm, rec):
        if stop_after and rec.get("step") == stop_after:
            stop.set()
    return exp, run_experiment(exp, stop=stop, progress=progress)


def _strip(recs):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in recs]


def test_routing_picks_the_causal_lm_task(tiny):
    cfg = lm_cfg(tiny)
    assert C.model_family(cfg.model) == "decoder" and C.is_causal_lm(cfg)
    task = prepare(cfg)
    assert isinstance(task, CausalLMTask) and task.primary_metric == "exact_match"
    assert (len(task.val), len(task.test)) == (4, 4)
    assert task.opt.lora.r == 4 and task.opt.lora.target_modules == ("q_proj", "v_proj")
    assert not C.is_causal_lm(C.RunConfig())                      # minilm on tweets


def test_lockstep_lora_arms_share_one_base_and_write_decoder_logs(tiny, tmp_path):
    exp, out = _run(lm_cfg(tiny, save_model=True), tmp_path, ["vanilla", "dynsdpb"])
    assert out["states"] == {"vanilla-s0": "finished", "dynsdpb-s0": "finished"}
    van, dyn = (RunDir(exp / a) for a in ("vanilla-s0", "dynsdpb-s0"))
    rv, rd = van.metrics(), dyn.metrics()
    assert len(rv) == len(rd) == 5
    assert rv[0]["ce"] == pytest.approx(rd[0]["ce"])       # same seed: the same start
    assert all(r["kd"] == 0 and r["kd_cache_bytes"] is None for r in rv)
    assert rd[0]["kd"] == 0 and all(r["kd"] > 0 for r in rd[1:])
    assert all(r["kd_cache_bytes"] > 0 and r["dropped_tokens"] == 0 for r in rd[1:])
    assert all(r["aligned_tokens"] > 0 and r["alpha"] is not None for r in rd[1:])
    evals = [r for r in rd if r["val_exact_match"] is not None]
    assert [r["step"] for r in evals] == [2, 4, 5]
    assert all(0 <= r["val_exact_match"] <= 1 and r["val_perplexity"] > 1 for r in evals)
    assert evals[0]["probe_drift"] is None and evals[1]["probe_drift"] > 0

    # samples.jsonl: eval_generations per evaluation, both arms
    for run in (van, dyn):
        s = run.samples()
        assert [r["step"] for r in s] == [2, 2, 4, 4, 5, 5]
        assert set(s[0]) == {"step", "prompt", "generation", "extracted", "gold", "correct",
                             "truncated", "strict_correct"}
        assert all(isinstance(r["truncated"], bool) for r in s)
        assert run.samples(-1) == s[-2:]
    # tokens.jsonl: distilling arm only, one carried sample per evaluation step
    assert not van.tokens_path.exists()
    toks = dyn.tokens()
    assert [t["step"] for t in toks] == [2, 4, 5]
    t = toks[0]
    assert len(t["tokens"]) == len(t["alpha"]) == len(t["kd"]) == len(t["token_ids"]) > 1
    assert t["tokens"][:3] == ["the", "answer", "is"] and all(a is not None for a in t["alpha"])
    assert "what is" in t["prompt"] and "the answer is" not in t["prompt"]   # prompt only
    assert any(k > 0 for k in t["kd"])

    # summaries: test exact match and perplexity per arm, a table for the experiment
    s = dyn.summary()
    assert s["task"] == "causal-lm" and s["primary_metric"] == "exact_match"
    assert 0 <= s["test_exact_match"] <= 1 and s["test_perplexity"] > 1
    summ = ExperimentDir(exp).summary()
    assert summ["primary_metric"] == "test_exact_match"
    assert set(summ["methods"]) == {"vanilla", "dynsdpb"}
    assert "Test exact match (%)" in format_table(summ)
    # strict next to flexible, with the truncated share and the echo baseline
    assert 0 <= s["test_strict_exact_match"] <= s["test_exact_match"]
    assert 0 <= s["test_truncated"] <= 1 and 0 <= s["test_echo_share"] <= 1
    table = format_table(summ)
    assert "Test strict exact match (%)" in table and "echo of the question" in table
    # LoRA: the adapter in PEFT format with the tokenizer
    assert (dyn.model_path / "adapter_model.safetensors").is_file()
    assert (dyn.model_path / "tokenizer.json").is_file()


def test_arms_share_one_frozen_base(tiny, tmp_path):
    from dynsdpb.engine.train import Arm
    cfg = lm_cfg(tiny)
    task = prepare(cfg)
    arms = [Arm(cfg.replace(method=m), task, RunDir(tmp_path / f"{m}-s0"))
            for m in ("vanilla", "dynsdpb")]
    assert all(isinstance(a.model, AdapterView) for a in arms)
    assert arms[0].model.shared is arms[1].model.shared
    assert task._base.arms == ["vanilla-s0", "dynsdpb-s0"]
    own = {id(p) for p in arms[0].model.parameters()}
    assert own and not own & {id(p) for p in arms[1].model.parameters()}


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_stop_then_resume_reproduces_uninterrupted_run(tiny, tmp_path, finetune):
    cfg = lm_cfg(tiny, steps=6, finetune=finetune, kd_cache="full" if finetune == "full"
                 else "topk", granularity="token" if finetune == "full" else "sample")
    full, _ = _run(cfg, tmp_path / "a", ["vanilla", "dynsdpb"])
    part, out = _run(cfg, tmp_path / "b", ["vanilla", "dynsdpb"], stop_after=3)
    assert set(out["states"].values()) == {"stopped"}
    # the stop lands after step 3 of one arm: logs hold no step after its checkpoint
    out2 = run_experiment(part, resume=True)
    assert set(out2["states"].values()) == {"finished"}
    for arm in ("vanilla-s0", "dynsdpb-s0"):
        a, b = RunDir(full / arm), RunDir(part / arm)
        ra, rb = _strip(a.metrics()), _strip(b.metrics())
        assert len(ra) == len(rb) == 6
        for x, y in zip(ra, rb):
            assert x.keys() == y.keys()
            for k in x:
                if isinstance(x[k], float):
                    assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-7), (arm, x["step"], k)
                else:
                    assert x[k] == y[k], (arm, x["step"], k)
        assert a.samples() == b.samples() and a.tokens() == b.tokens()
        assert a.summary()["test_exact_match"] == b.summary()["test_exact_match"]
        assert a.summary()["test_loss"] == pytest.approx(b.summary()["test_loss"], rel=1e-5)


def test_full_finetuning_saves_a_whole_model(tiny, tmp_path):
    from transformers import AutoModelForCausalLM
    cfg = lm_cfg(tiny, steps=2, finetune="full", save_model=True)
    exp, out = _run(cfg, tmp_path, ["dlb"])
    rd = RunDir(exp / "dlb-s0")
    assert out["states"] == {"dlb-s0": "finished"} and rd.metrics()[1]["kd"] > 0
    m = AutoModelForCausalLM.from_pretrained(rd.model_path)
    assert sum(p.numel() for p in m.parameters()) == sum(
        p.numel() for p in tiny_llama().parameters())


def test_merged_save_is_a_plain_model(tiny, tmp_path):
    from transformers import AutoModelForCausalLM
    exp, _ = _run(lm_cfg(tiny, steps=2, save_model=True, save_format="merged"), tmp_path,
                  ["vanilla"])
    m = AutoModelForCausalLM.from_pretrained(RunDir(exp / "vanilla-s0").model_path)
    assert not any("lora" in k for k in m.state_dict())


def test_top_k_cache_is_smaller_than_the_full_one(tiny, tmp_path):
    got = {}
    for cache in ("topk", "full"):
        exp, _ = _run(lm_cfg(tiny, steps=3, kd_cache=cache, top_k=4), tmp_path / cache,
                      ["dynsdpb"])
        got[cache] = RunDir(exp / "dynsdpb-s0").metrics()[1]["kd_cache_bytes"]
    assert 0 < got["topk"] < got["full"]


@pytest.mark.parametrize("kw, field, words", [
    (dict(model="smollm2-135m", dataset="tweets-sentiment"), "dataset",
     "arith-easy, gsm-symbolic"),
    (dict(model="minilm-l6", dataset="arith-easy"), "dataset", "decoder model such as smollm2"),
    (dict(model="minilm-l6", task="causal-lm"), "task", "needs a decoder model"),
    (dict(model="smollm2-135m", dataset="arith-easy", task="classification"), "task",
     "use task auto or causal-lm"),
    (dict(granularity="token"), "granularity", "decoder models"),
    (dict(lora_r=0), "lora_r", "at least 1"),
    (dict(lora_alpha=0), "lora_alpha", "> 0"),
    (dict(lora_dropout=1.0), "lora_dropout", "[0, 1)"),
    (dict(lora_target_modules=" , "), "lora_target_modules", "at least one"),
    (dict(lora_target_modules="q_proj v_proj"), "lora_target_modules", "commas"),
    (dict(finetune="qlora"), "finetune", "lora, full"),
    (dict(kd_cache="top64"), "kd_cache", "topk, full"),
    (dict(save_format="gguf"), "save_format", "adapter, merged"),
    (dict(max_new_tokens=0), "max_new_tokens", "at least 1"),
    (dict(eval_generations=-1), "eval_generations", "0"),
])
def test_validate_names_the_field_and_the_fix(kw, field, words):
    problems = C.validate(C.RunConfig(**kw))
    assert [p.field for p in problems] == [field], problems
    assert words in problems[0].fix


def test_local_decoder_folder_with_a_classification_dataset_is_refused(tiny):
    with pytest.raises(ConfigError) as e:
        lm_cfg(tiny, dataset="tweets-sentiment")
    assert e.value.problems[0].field == "dataset"


def test_builtins_are_listed(capsys):
    assert set(C.check.GENERATION_DATASETS) == set(BUILTIN_LM_DATASETS)
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "decoder" in out
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "arith-easy" in out and "gsm-symbolic" in out and "generation" in out


def test_cli_flags_for_the_decoder_fields(capsys):
    assert main(["compare", "--model", "smollm2-135m", "--dataset", "arith-easy",
                 "--finetune", "full", "--lora-r", "4", "--lora-alpha", "8",
                 "--lora-dropout", "0", "--lora-target-modules", "q_proj,v_proj",
                 "--kd-cache", "full", "--top-k", "16", "--granularity", "token",
                 "--save-format", "merged", "--max-new-tokens", "8",
                 "--eval-generations", "3", "--dump"]) == 0
    import yaml
    d = yaml.safe_load(capsys.readouterr().out)
    assert (d["finetune"], d["lora_r"], d["lora_alpha"], d["lora_dropout"]) == ("full", 4, 8.0, 0.0)
    assert (d["lora_target_modules"], d["kd_cache"], d["top_k"]) == ("q_proj,v_proj", "full", 16)
    assert (d["granularity"], d["save_format"], d["max_new_tokens"], d["eval_generations"]) == \
        ("token", "merged", 8, 3)
    assert main(["compare", "--model", "smollm2-135m", "--dataset", "arith-easy",
                 "--lora-r", "0", "--dump"]) == 2
    assert "lora_r" in capsys.readouterr().err


def test_decoder_preset_loads_and_is_a_decoder_run():
    from dynsdpb.presets import load_preset
    exp = load_preset("decoder-quick-demo")
    assert exp.base.model == "smollm2-135m" and exp.base.dataset == "arith-easy"
    assert C.is_causal_lm(exp.base) and exp.methods == ["vanilla", "dynsdpb"]
    assert exp.base.tau_0 == 1.0 and exp.base.tau_max <= 2.0


def test_record_keys_have_units():
    from dynsdpb.records import KEYS, RECORD_KEYS
    for k in ("kd_cache_bytes", "aligned_tokens", "dropped_tokens", "val_exact_match",
              "val_perplexity"):
        assert k in RECORD_KEYS and KEYS[k].unit
    assert KEYS["val_exact_match"].percent


def test_logits_of_the_last_positions_give_the_full_loss(tiny):
    """task.batch keeps only the last K positions' logits (targets end every row): the loss
    and the teacher cache equal those computed from the full (B, T, V) logits."""
    from dynsdpb.decoder.data import collate
    from dynsdpb.decoder.loss import make_teachers, token_loss
    cfg = lm_cfg(tiny, method="dlb")
    task = prepare(cfg)
    model = task.build_model(cfg, "probe")
    ids = [0, 1, 2, 3]
    b = task.batch(task.train, ids, "cpu")
    k = b.inputs["logits_to_keep"]
    assert 1 < k < b.inputs["input_ids"].shape[1] and b.labels.shape[1] == k
    full_labels = collate([task.train.rows[i] for i in ids], task.tokenizer.pad_token_id)["labels"]
    with torch.no_grad():
        cut = task.forward(model, b)
        full = model(**dict(b.inputs, logits_to_keep=0)).logits
    assert cut.shape[1] == k and full.shape[1] == full_labels.shape[1]
    assert float(token_loss(cut, b.labels).ce) == pytest.approx(
        float(token_loss(full, full_labels).ce), rel=1e-5)
    tc, tf = (make_teachers(z, y, cfg, 1, k=8) for z, y in ((cut, b.labels), (full, full_labels)))
    assert all(torch.equal(x.target_ids, y.target_ids) and torch.allclose(x.logq, y.logq, atol=1e-5)
               for x, y in zip(tc, tf))


def test_an_uploaded_decoder_file_is_checked_as_prompt_target_and_queued(tiny, tmp_path):
    """The app uploads a decoder's JSONL through JobManager.submit: it is checked as
    prompt/target data (not as classification columns) before anything is written."""
    from dynsdpb.jobs.queue import JobManager
    model, data = tiny
    jm = JobManager(tmp_path / "runs", autostart=False)       # nothing trains
    cfg = lm_cfg(tiny)
    job = jm.submit(cfg, ["vanilla", "dynsdpb"], [0], name="upload",
                    upload=("my data.jsonl", open(data, "rb").read()))
    saved = ExperimentDir(job.exp_dir).meta()["base_config"]["dataset"]
    assert saved.endswith("my-data.jsonl") and open(saved, "rb").read() == open(data, "rb").read()
    bad = b'{"question": "what is 1 plus 2", "target": "3"}\n' * 40
    with pytest.raises(ConfigError) as e:
        jm.submit(cfg, ["vanilla"], [0], name="bad", upload=("bad.jsonl", bad))
    assert "prompt" in str(e.value) and "rename" in str(e.value)
    assert not (tmp_path / "runs" / "bad").exists()
