"""examples/hf_trainer.py end to end, offline on the built-ins (MiniLM, tweets): DynSDPBTrainer
writes TensorBoard event files with the engine's record keys, and the saved folder loads."""
from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_trainer.py"


def test_example_runs_offline_and_writes_tensorboard_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForSequenceClassification

    spec = importlib.util.spec_from_file_location("hf_trainer_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "run"
    metrics = mod.main(["--steps", "2", "--train-rows", "40", "--val-rows", "16",
                        "--batch-size", "4", "--out", str(out)])
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    tags = set()
    for f in out.glob("runs/*/events.out.tfevents.*"):
        ea = EventAccumulator(str(f))
        ea.Reload()
        tags |= set(ea.Tags()["scalars"])
    assert {"train/ce", "train/kd", "train/alpha", "train/tau", "train/logit_drift",
            "train/agreement", "eval/accuracy"} <= tags, tags
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.num_labels == 3
    card = (out / "model" / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n") and "base_model: sentence-transformers/all-MiniLM-L6-v2" \
        not in card      # a local folder (the package's copy), not named as a Hub id
    assert "DynSDPB" in card and "dynsdpb-v1" in card and "| accuracy |" in card
    assert "learning_rate: 5.0e-05" in card
