"""CLI end to end on a tiny CSV, data sources and splits, metrics, the comparison table."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from dynsdpb import metrics as M
from dynsdpb.cli import main
from dynsdpb.config import RunConfig, dumps, from_dict, load
from dynsdpb.data import BUILTIN_DATASETS, load_data
from dynsdpb.errors import ConfigError
from tests.conftest import tiny_config

TINY = ["--set", "val_size=10", "--set", "test_size=10", "--set", "eval_every=2",
        "--set", "save_model=false", "--set", "lr=1e-3"]


def test_cli_compare_end_to_end(tiny_csv, tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--model", "tiny-random-bert", "--dataset", str(tiny_csv),
               "--methods", "vanilla,dynsdpb", "--seeds", "0,1", "--steps", "3",
               "--batch-size", "4", "--max-len", "16", *TINY, "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s["methods"]) == {"vanilla", "dynsdpb"}
    acc = s["methods"]["dynsdpb"]["test_accuracy"]
    assert len(acc["per_seed"]) == 2 and acc["std"] >= 0
    assert "diff_vs_vanilla" in acc and "dynsdpb" in text and "diff vs vanilla" in text
    # a second compare into the same folder is refused with a clear message
    rc = main(["compare", "--model", "tiny-random-bert", "--dataset", str(tiny_csv),
               "--steps", "3", "--out", str(out)])
    assert rc == 2 and "already holds an experiment" in capsys.readouterr().err


def test_cli_train_with_config_file_and_dump(tiny_csv, tmp_path, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(dumps(tiny_config(tiny_csv, steps=2, method="dlb")))
    assert main(["train", "--config", str(cfg_path), "--set", "seed=3", "--dump"]) == 0
    dumped = capsys.readouterr().out
    assert "seed: 3" in dumped and "method: dlb" in dumped
    rc = main(["train", "--config", str(cfg_path), "--out", str(tmp_path / "t")])
    assert rc == 0
    assert json.loads((tmp_path / "t" / "dlb-s0" / "summary.json").read_text())["steps"] == 2


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dynsdpb.cli", "train", "--set", "lr=-1",
                        "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "lr=-1.0" in r.stderr and "> 0" in r.stderr


def test_cli_list():
    r = subprocess.run([sys.executable, "-m", "dynsdpb.cli", "list", "models"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "minilm-l6" in r.stdout
    r = subprocess.run([sys.executable, "-m", "dynsdpb.cli", "list", "datasets"],
                       capture_output=True, text=True)
    assert all(n in r.stdout for n in BUILTIN_DATASETS)


def test_config_roundtrip_and_overrides(tmp_path):
    cfg = RunConfig(method="dlb", alpha=0.3, seed=5)
    for ext in ("yaml", "json"):
        p = tmp_path / f"c.{ext}"
        p.write_text(dumps(cfg, ext))
        assert load(p) == cfg
    c2 = from_dict({"lr": "3e-5", "steps": "10", "save_model": "false"})
    assert c2.lr == 3e-5 and c2.steps == 10 and c2.save_model is False
    with pytest.raises(ConfigError) as e:
        from_dict({"lr": "fast", "stepz": 3})
    fields = {p.field for p in e.value.problems}
    assert fields == {"lr", "stepz"}


def test_splits_are_deterministic_and_disjoint(tiny_csv):
    cfg = tiny_config(tiny_csv)
    a, b = load_data(cfg), load_data(cfg.replace(seed=7))  # run seed does not move splits
    assert a.train.texts == b.train.texts and a.test.texts == b.test.texts
    c = load_data(cfg.replace(split_seed=1))
    assert c.test.texts != a.test.texts
    assert len(a.val) == 10 and len(a.test) == 10 and len(a.train) == 140
    assert a.label_names == ["neg", "pos"]


@pytest.mark.parametrize("name", list(BUILTIN_DATASETS))
def test_builtin_datasets_load_offline(name):
    d = load_data(RunConfig(dataset=name, val_size=50, test_size=50, max_train_samples=100))
    assert len(d.train) == 100 and len(d.val) == 50 and len(d.test) == 50
    expect = {"tweets-sentiment": 3, "bbc-news": 5, "bbc-headline-pairs": 2}[name]
    assert d.num_labels == expect
    assert (d.train.pairs is not None) == (name == "bbc-headline-pairs")
    assert all(t.strip() for t in d.train.texts)


def test_tweets_confidence_filter():
    full = load_data(RunConfig(max_train_samples=0))
    kept = load_data(RunConfig(max_train_samples=0, min_confidence=0.7))
    assert len(kept.train) < len(full.train)
    # assets.md: 10,680 + 7,658 + 2,472 rows at >= 0.7
    assert len(kept.train) + len(kept.val) + len(kept.test) == 20810


def test_unknown_model_offline_lists_builtins(tmp_path):
    from dynsdpb.models import load_tokenizer
    with pytest.raises(ConfigError) as e:
        load_tokenizer(RunConfig(model="no-such-org/no-such-model"))
    assert e.value.problems[0].field == "model" and "minilm-l6" in str(e.value)


def test_hub_dataset_offline_fails_clearly():
    with pytest.raises(ConfigError) as e:
        load_data(RunConfig(dataset="nyu-mll/glue:rte", text_column="sentence1",
                            text_pair_column="sentence2"))
    assert e.value.problems[0].field == "dataset" and "tweets-sentiment" in str(e.value)


def test_metrics_against_hand_computed_values():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    assert M.accuracy(y, p) == pytest.approx(4 / 6)
    # per-class F1: c0 p=1/2 r=1/2 -> .5; c1 p=2/3 r=1 -> .8; c2 p=1 r=1/2 -> 2/3
    assert M.macro_f1(y, p, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert M.mcc(y, y, 3) == pytest.approx(1.0)
    assert M.mcc(np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0]), 2) == pytest.approx(-1.0)
    assert M.spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    d = M.paired_diff([0.8, 0.82, 0.81], [0.78, 0.80, 0.80])
    assert d["mean"] == pytest.approx(0.05 / 3) and d["ci_low"] < d["mean"] < d["ci_high"]
    half = 4.303 * np.std([0.02, 0.02, 0.01], ddof=1) / math.sqrt(3)
    assert d["ci_high"] - d["mean"] == pytest.approx(half)


def test_hub_dataset_path_pools_labelled_splits_and_maps_label_names(monkeypatch):
    """The hub code path without a network: `datasets.load_dataset` is replaced by a local
    DatasetDict shaped like GLUE RTE (ClassLabel names, test labels -1)."""
    import datasets
    feats = datasets.Features({"sentence1": datasets.Value("string"),
                               "sentence2": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["entailment",
                                                                   "not_entailment"])})

    def split(n, label):
        return datasets.Dataset.from_dict(
            {"sentence1": [f"premise {i}" for i in range(n)],
             "sentence2": [f"hypothesis {i}" for i in range(n)],
             "label": [label(i) for i in range(n)]}, features=feats)
    dd = datasets.DatasetDict({"train": split(60, lambda i: i % 2),
                               "validation": split(20, lambda i: 0),
                               "test": split(30, lambda i: -1)})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or dd)
    d = load_data(RunConfig(dataset="nyu-mll/glue:rte", text_column="sentence1",
                            text_pair_column="sentence2", val_size=10, test_size=10,
                            batch_size=4))
    assert calls == [("nyu-mll/glue", "rte")]
    assert d.label_names == ["entailment", "not_entailment"]
    assert len(d.train) + len(d.val) + len(d.test) == 80   # test split (label -1) dropped
    assert d.train.pairs is not None and d.train.pairs[0].startswith("hypothesis")
