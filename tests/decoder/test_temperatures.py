"""Decoder temperatures the top-k teacher cache can carry: the decoder defaults everywhere a
config is built (from_dict, the CLI, presets' files, the self-training demo), the cached top-k
mass logged per step (kd_topk_mass), and the warnings (before a run, in status.json)."""
from __future__ import annotations

import threading

import pytest

from dynsdpb import config as C
from dynsdpb.cli.main import main
from dynsdpb.experiment import create_experiment, run_experiment
from dynsdpb.presets import dump_experiment, experiment_from_dict
from dynsdpb.store import RunDir
from tests.lm_tiny import tiny_decoder_files

import yaml


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_decoder_files(tmp_path_factory.mktemp("tiny-lm"), 32)


def test_decoder_configs_get_decoder_temperatures_unless_given():
    dec = C.from_dict({"model": "smollm2-135m", "dataset": "arith-easy"})
    assert (dec.tau, dec.tau_0, dec.tau_min, dec.tau_max) == (1.0, 1.0, 1.0, 1.5)
    assert C.from_dict({"model": "smollm2-135m", "dataset": "arith-easy", "tau_max": 2}
                       ).tau_max == 2.0                          # a value given stays
    enc = C.from_dict({"model": "minilm-l6"})
    assert (enc.tau, enc.tau_0, enc.tau_max) == (3.0, 3.0, 6.0)  # encoders as before
    # an experiment file without temperatures, and a decoder config saved at tau 3 reads back
    exp = experiment_from_dict({"model": "smollm2-135m", "dataset": "arith-easy",
                                "methods": ["vanilla", "dynsdpb"]})
    assert exp.base.tau_max == 1.5
    hot = dec.replace(tau=3.0, tau_max=6.0)
    back = experiment_from_dict(yaml.safe_load(dump_experiment(hot, ["dlb"], [0])))
    assert (back.base.tau, back.base.tau_max) == (3.0, 6.0)


def test_a_config_built_in_python_gets_its_family_temperatures(tiny):
    """RunConfig(...) called directly (a library user, tests): the decoder temperatures for a
    decoder (built-in name or a local folder whose config.json says ForCausalLM), the encoder
    ones for an encoder; a value given stays."""
    model, _ = tiny
    for name in ("smollm2-135m", model):
        dec = C.RunConfig(model=name, dataset="arith-easy", method="dynsdpb")
        assert (dec.tau, dec.tau_0, dec.tau_min, dec.tau_max) == (1.0, 1.0, 1.0, 1.5)
    assert C.RunConfig(model="smollm2-135m", tau=2.0).tau == 2.0
    assert C.RunConfig(model="smollm2-135m", tau=2.0).tau_0 == 1.0
    enc = C.RunConfig()
    assert (enc.tau, enc.tau_0, enc.tau_min, enc.tau_max) == (3.0, 3.0, 1.0, 6.0)
    assert C.RunConfig(**C.RunConfig(model="smollm2-135m").to_dict()).tau_max == 1.5


def test_trainer_on_a_causal_lm_uses_decoder_temperatures_unless_given(tiny, tmp_path):
    """DynSDPBTrainer tells the task from the logits: a causal LM distils at the decoder
    temperatures for the tau fields the user did not give, from its first step on."""
    import datasets
    from functools import partial
    from transformers import TrainingArguments

    from dynsdpb import tasks
    from dynsdpb.decoder.data import collate
    from dynsdpb.integrations.hf import DynSDPBTrainer
    model, data = tiny
    cfg = C.check_config(C.RunConfig(model=model, dataset=data, max_len=32, val_size=4,
                                     test_size=4, batch_size=4, steps=2, finetune="full",
                                     eval_every=100, checkpoint_every=0, save_model=False,
                                     eval_generations=0, probe_size=4, max_new_tokens=4))
    task = tasks.prepare(cfg)
    rows = task.train.rows
    ds = datasets.Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows],
                                     "labels": [r["labels"] for r in rows]})
    taus = []
    for given in ({}, {"tau_max": 4.0}):
        args = TrainingArguments(output_dir=str(tmp_path / str(len(taus))),
                                 per_device_train_batch_size=4, max_steps=2, report_to=[],
                                 use_cpu=True, disable_tqdm=True, save_strategy="no")
        tr = DynSDPBTrainer(model=task.build_model(cfg, "hf"), args=args, train_dataset=ds,
                            data_collator=partial(collate, pad_id=task.tokenizer.pad_token_id),
                            method="dynsdpb", **given)
        assert tr.dynsdpb.tau_max == given.get("tau_max", 6.0)   # not known before a batch
        tr.train()
        c = tr.dynsdpb
        taus.append((c.tau, c.tau_0, c.tau_min, c.tau_max))
        assert max(r["tau"] for r in tr.dynsdpb_records if r.get("tau")) <= c.tau_max
    assert taus == [(1.0, 1.0, 1.0, 1.5), (1.0, 1.0, 1.0, 4.0)]


def test_cli_compare_and_selftrain_demo_use_decoder_temperatures(capsys):
    assert main(["compare", "--model", "smollm2-135m", "--dataset", "arith-easy",
                 "--dump"]) == 0
    d = yaml.safe_load(capsys.readouterr().out)
    assert d.get("tau", 1.0) == 1.0 and d.get("tau_max") in (None, 1.5)
    assert C.from_dict({k: v for k, v in d.items() if k in C.FIELDS}).tau_max == 1.5
    # a preset of the other family, switched to a decoder on the command line
    assert main(["compare", "--preset", "quick-demo", "--model", "smollm2-135m",
                 "--dataset", "arith-easy", "--dump"]) == 0
    d = yaml.safe_load(capsys.readouterr().out)
    assert C.from_dict({k: v for k, v in d.items() if k in C.FIELDS}).tau_0 == 1.0
    from dynsdpb.selftrain.loops import CPU_DEMO
    demo = C.from_dict(CPU_DEMO["config"], check=False)
    assert demo.tau_max <= 1.5 and demo.kd_cache == "topk"


def test_warning_before_a_decoder_run_at_high_tau():
    cfg = C.from_dict({"model": "smollm2-135m", "dataset": "arith-easy", "method": "dynsdpb"})
    assert C.topk_temperature_warning(cfg) is None
    w = C.topk_temperature_warning(cfg.replace(tau_max=6.0))
    assert w and "kd_cache full" in w and "tau up to 6" in w
    assert C.topk_temperature_warning(cfg.replace(tau_max=6.0, kd_cache="full")) is None
    assert C.topk_temperature_warning(C.from_dict({"model": "minilm-l6", "tau": 5})) is None


def _cfg(tiny, **kw):
    model, data = tiny
    base = dict(model=model, dataset=data, max_len=32, val_size=4, test_size=4, batch_size=4,
                steps=4, lr=1e-2, seed=0, eval_every=4, checkpoint_every=0, probe_size=2,
                lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules="q_proj,v_proj",
                max_new_tokens=2, eval_generations=1, save_model=False)
    base.update(kw)
    return C.check_config(C.from_dict(base))


def _run(cfg, root):
    exp = create_experiment(root, cfg, ["dynsdpb"], [0])
    warned = []
    run_experiment(exp, stop=threading.Event(),
                   progress=lambda arm, rec: warned.append(rec) if rec.get("state") ==
                   "warning" and "top-k" in str(rec.get("warnings")) else None)
    return RunDir(exp / "dynsdpb-s0"), warned


def test_kd_topk_mass_is_logged_and_a_coarse_cache_warns(tiny, tmp_path):
    # the decoder defaults with a generous k: the cache holds most of the mass, no warning
    rd, warned = _run(_cfg(tiny, top_k=64), tmp_path / "ok")
    recs = [r for r in rd.metrics() if r.get("step")]
    mass = [r["kd_topk_mass"] for r in recs]
    assert mass[0] is None                       # step 1: nothing carried yet
    assert all(0.5 < m <= 1.0 + 1e-6 for m in mass[1:])
    assert not warned and not [w for w in rd.raw_status().get("warnings") or []
                               if "top-k" in w]
    # k = 2 of 116 tokens at tau 3-6: far below the threshold; warned once, in status.json
    rd, warned = _run(_cfg(tiny, top_k=2, tau_0=3.0, tau_min=3.0, tau_max=6.0),
                      tmp_path / "coarse")
    mass = [r["kd_topk_mass"] for r in rd.metrics() if r.get("step")][1:]
    assert all(m < C.KD_MASS_WARN for m in mass)
    assert len(warned) == 1 and "top-k teacher cache" in warned[0]["warnings"][0]
    st = rd.raw_status()
    assert st["state"] == "finished" and "kd_cache full" in st["warnings"][-1]
    # a full cache keeps everything: no mass to report
    rd, _ = _run(_cfg(tiny, kd_cache="full"), tmp_path / "full")
    assert all(r["kd_topk_mass"] is None for r in rd.metrics())
