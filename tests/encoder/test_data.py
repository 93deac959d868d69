"""CLI end to end on a tiny CSV, data sources and splits, metrics, the comparison table."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from dynsdpb import metrics as M
from dynsdpb.cli.main import main
from dynsdpb.config import RunConfig, dumps, from_dict, load
from dynsdpb.catalog import CLASSIFICATION_DATASETS as BUILTIN_DATASETS
from dynsdpb.encoder.data import load_data
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
    assert "diff_vs_vanilla" in acc and "dynsdpb" in text and "difference to vanilla" in text
    assert "test items" in text and "seeds" in text
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
    # assets.md: 10,680 + 7,658 + 2,472 rows at >= 0.7; the dedup before splitting then
    # drops 238 repeats and the 208 rows of 12 texts with conflicting labels
    assert kept.dedup == {"rows": 20810, "repeats_dropped": 238, "conflicting_texts": 12,
                          "conflicting_rows_dropped": 208, "kept": 20364}
    assert len(kept.train) + len(kept.val) + len(kept.test) == 20364


def test_unknown_model_offline_lists_builtins(tmp_path):
    from dynsdpb.encoder.models import load_tokenizer
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

    def split(n, label, start=0):
        # distinct pairs across splits (`start`): repeats would be dropped by the dedup
        return datasets.Dataset.from_dict(
            {"sentence1": [f"premise {i}" for i in range(start, start + n)],
             "sentence2": [f"hypothesis {i}" for i in range(start, start + n)],
             "label": [label(i) for i in range(n)]}, features=feats)
    dd = datasets.DatasetDict({"train": split(60, lambda i: i % 2),
                               "validation": split(20, lambda i: 0, start=60),
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


# ----------------------------------------------------------------------------------------
# Dedup before splitting; split sizes that scale with the data (issue 7)

def _norm(s):
    return " ".join(s.split()).casefold()


def _split_keys(d):
    pairs = lambda s: s.pairs if s.pairs is not None else [None] * len(s)  # noqa: E731
    return [{(_norm(t), p and _norm(p)) for t, p in zip(s.texts, pairs(s))}
            for s in (d.train, d.val, d.test)]


@pytest.mark.parametrize("name", list(BUILTIN_DATASETS))
def test_builtin_datasets_share_no_text_across_splits(name):
    """tweets-sentiment had 11 of 600 test tweets in train (after normalising case and
    spacing) and 46 tweets with conflicting labels; the BBC corpus repeats articles."""
    d = load_data(RunConfig(dataset=name, max_train_samples=0))
    tr, va, te = _split_keys(d)
    assert not (tr & va) and not (tr & te) and not (va & te)
    dd = d.dedup
    assert dd["repeats_dropped"] > 0 and dd["kept"] == len(d.train) + len(d.val) + len(d.test)
    assert dd["rows"] == dd["kept"] + dd["repeats_dropped"] + dd["conflicting_rows_dropped"]
    assert any(w.startswith(f"dropped {dd['repeats_dropped']} repeated rows") for w in d.warnings)
    if name == "tweets-sentiment":
        assert dd["conflicting_texts"] == 49 and dd["conflicting_rows_dropped"] == 623


def test_dedup_of_a_file_counts_what_it_dropped(tmp_path):
    rows = [f"text {i},{'pos' if i % 2 else 'neg'}" for i in range(60)]
    rows += ["text 1,pos", "  TEXT   1 ,pos", "Text 3,pos"]       # 3 repeats of kept rows
    rows += ["same words,pos", "Same  words,neg", "same words,pos"]  # conflicting: all dropped
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "\n".join(rows) + "\n")
    d = load_data(tiny_config(p))
    assert d.dedup == {"rows": 66, "repeats_dropped": 3, "conflicting_texts": 1,
                       "conflicting_rows_dropped": 3, "kept": 60}
    assert "dropped 3 repeated rows" in d.warnings[0] and "3 rows of 1 texts" in d.warnings[0]
    assert "same words" not in {_norm(t) for s in (d.train, d.val, d.test) for t in s.texts}
    tr, va, te = _split_keys(d)
    assert len(tr | va | te) == 60 and not (tr & va) and not (tr & te) and not (va & te)
    # pairs: the same first sentence with another second one is another example
    p2 = tmp_path / "p.csv"
    p2.write_text("text,text_pair,label\n" + "\n".join(
        [f"premise {i // 2},hyp {i},{'a' if i % 3 else 'b'}" for i in range(60)]
        + ["Premise 0, hyp 0 ,b"]) + "\n")
    d2 = load_data(tiny_config(p2, text_pair_column="text_pair"))
    assert d2.dedup["kept"] == 60 and d2.dedup["repeats_dropped"] == 1


def test_default_split_sizes_scale_with_the_data(tmp_path):
    """A 300-row upload with the default config trains: 10% validation, 10% test."""
    p = tmp_path / "small.csv"
    p.write_text("text,label\n" + "\n".join(f"review number {i},{'ab'[i % 2]}"
                                            for i in range(300)) + "\n")
    assert RunConfig().val_size == 0 and RunConfig().test_size == 0      # 0 = auto
    d = load_data(RunConfig(dataset=str(p)))
    assert (len(d.train), len(d.val), len(d.test)) == (240, 30, 30)
    # large data: the caps (the fixed sizes of earlier versions)
    assert RunConfig().split_sizes(37154) == (400, 800)
    assert RunConfig(val_size=7, test_size=0).split_sizes(300) == (7, 30)
    # still too small with auto sizes: the message names the fix
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("text,label\n" + "\n".join(f"t {i},{'ab'[i % 2]}" for i in range(15)) + "\n")
    with pytest.raises(ConfigError) as ei:
        load_data(RunConfig(dataset=str(tiny)))                     # 1 + 1 held out, 13 < 16
    p0 = ei.value.problems[0]
    assert p0.field == "batch_size" and "15 usable rows" in p0.fix
    assert "lower batch_size" in p0.fix
    assert len(load_data(RunConfig(dataset=str(tiny), batch_size=8)).train) == 13
    # sizes given that do not fit: say how to get the automatic ones back
    with pytest.raises(ConfigError) as ei:
        load_data(RunConfig(dataset=str(p), val_size=400, test_size=800))
    assert "set test_size=0 and val_size=0" in str(ei.value)


def test_failed_compare_leaves_no_out_folder(tiny_csv, tmp_path, capsys):
    out = tmp_path / "cmp"
    base = ["compare", "--set", "model=tiny-random-bert", "--set", f"dataset={tiny_csv}",
            "--set", "val_size=10", "--set", "test_size=10", "--set", "max_len=16",
            "--set", "steps=2", "--set", "batch_size=4", "--out", str(out)]
    for bad in (["--seeds", "0,0"],                                  # refused at submit
                ["--methods", "vanilla", "--set", "label_column=nope"]):  # refused at load
        assert main(base + bad) == 2
        assert "dynsdpb: error:" in capsys.readouterr().err
        assert not out.exists()
