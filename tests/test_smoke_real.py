"""One smoke test on the real built-ins: pretrained MiniLM-L6 on tweets-sentiment."""
import pytest

from dynsdpb.config import RunConfig
from dynsdpb.store import RunDir
from dynsdpb.experiment import create_experiment, run_experiment


@pytest.mark.slow
def test_minilm_on_tweets_few_steps(tmp_path):
    cfg = RunConfig(model="minilm-l6", dataset="tweets-sentiment", steps=4, batch_size=8,
                    max_len=32, val_size=32, test_size=32, max_train_samples=64, eval_every=2,
                    save_model=True)
    exp = create_experiment(tmp_path, cfg, ["vanilla", "dynsdpb"], [0])
    out = run_experiment(exp)
    assert set(out["states"].values()) == {"finished"}
    rd = RunDir(exp / "dynsdpb-s0")
    recs = rd.metrics()
    assert len(recs) == 4 and all(r["loss"] > 0 for r in recs)
    assert recs[-1]["val_accuracy"] is not None and recs[1]["alpha"] is not None
    assert (rd.model_path / "model.safetensors").is_file()
    # the saved model reloads with transformers, from safetensors
    from transformers import AutoModelForSequenceClassification
    m = AutoModelForSequenceClassification.from_pretrained(rd.model_path, use_safetensors=True)
    assert m.config.num_labels == 3
