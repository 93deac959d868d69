"""A saved model folder carries a Hub-format model card and still loads with from_pretrained."""
from __future__ import annotations

import yaml

from dynsdpb.experiment import create_experiment, run_experiment
from tests.conftest import tiny_config


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_saved_model_has_a_card_with_vanilla_comparison(tiny_csv, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from dynsdpb.engine.model_card import reproduce_command
    cfg = tiny_config(tiny_csv, steps=2, save_model=True, alpha_max=2.0)
    exp = create_experiment(tmp_path / "runs", cfg, ["vanilla", "dynsdpb"], [0])
    run_experiment(exp)
    card = (exp / "dynsdpb-s0" / "model" / "README.md").read_text(encoding="utf-8")
    meta = _front_matter(card)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-classification" and "dynsdpb" in meta["tags"]
    assert "base_model" not in meta           # tiny-random-bert is no Hub model
    summ = (exp / "dynsdpb-s0" / "summary.json").read_text()
    import json
    s, v = json.loads(summ), json.loads((exp / "vanilla-s0" / "summary.json").read_text())
    assert s["formula"] in card
    assert "| metric | this model | vanilla (same seed) | difference |" in card
    assert f"| accuracy | {s['test_accuracy']:.4f} | {v['test_accuracy']:.4f} |" in card
    assert "alpha_max: 2.0" in card
    cmd = reproduce_command(cfg.replace(method="dynsdpb", seed=0))
    assert cmd in card and "--alpha-max 2.0" in cmd and "--save-model true" not in cmd
    vcard = (exp / "vanilla-s0" / "model" / "README.md").read_text(encoding="utf-8")
    assert "vanilla (same seed)" not in vcard
    model = AutoModelForSequenceClassification.from_pretrained(exp / "dynsdpb-s0" / "model")
    assert model.config.num_labels == 2


def test_reproduce_command_runs_the_same_config(tiny_csv):
    """The card's command, parsed by the CLI, gives back the run's config."""
    import shlex

    from dynsdpb.cli.args import resolve
    from dynsdpb.cli.main import build_parser
    from dynsdpb.engine.model_card import reproduce_command
    cfg = tiny_config(tiny_csv, steps=3, method="dlb", alpha=0.7, save_model=False, seed=4)
    argv = shlex.split(reproduce_command(cfg))[1:]
    a = build_parser().parse_args(argv)
    base, methods, seeds, _ = resolve(a, compare=False)
    assert base.replace(method=methods[0], seed=seeds[0]) == cfg


def test_card_names_the_hub_base_model():
    from dynsdpb.config import RunConfig
    from dynsdpb.engine.model_card import card_text
    meta = _front_matter(card_text(RunConfig(model="minilm-l6")))
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    meta = _front_matter(card_text(RunConfig(model="smollm2-135m", dataset="arith-easy"),
                                   task="causal-lm", adapter=True))
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
