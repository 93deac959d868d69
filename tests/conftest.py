"""Shared fixtures: a tiny generated CSV and a config that trains in about a second."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from dynsdpb.config import RunConfig  # noqa: E402

WORDS = {"pos": ["good", "great", "love", "nice", "fine", "happy"],
         "neg": ["bad", "awful", "hate", "poor", "sad", "worse"]}


def write_tiny_csv(path: Path, n: int = 160, seed: int = 0, pair: bool = False,
                   regression: bool = False) -> Path:
    rng = random.Random(seed)
    lines = ["text,text_pair,label" if pair else "text,label"]
    for _ in range(n):
        lab = rng.choice(["pos", "neg"])
        text = " ".join(rng.choice(WORDS[lab]) for _ in range(5))
        if regression:
            score = sum(w in WORDS["pos"] for w in text.split()) / 5 + rng.random() * 0.01
            lines.append(f"{text},{score:.4f}")
        elif pair:
            lines.append(f"{text},{rng.choice(WORDS[lab])} day,{lab}")
        else:
            lines.append(f"{text},{lab}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# Measurements worth seeing in every test run (screenshot paths, delays): tests append lines
# through the `report` fixture and they are printed at the end, captured output or not. They
# travel in the test's report, so they reach the summary from pytest-xdist's workers too.
REPORT: list[str] = []


@pytest.fixture
def report(request):
    return lambda line: request.node.user_properties.append(("workbench", str(line)))


def pytest_runtest_logreport(report):
    if report.when == "teardown":      # the teardown report carries every line of the test
        REPORT.extend(v for k, v in report.user_properties if k == "workbench")


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("workbench measurements")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture
def tiny_csv(tmp_path) -> Path:
    return write_tiny_csv(tmp_path / "tiny.csv")


def tiny_config(csv: Path, **kw) -> RunConfig:
    base = dict(model="tiny-random-bert", dataset=str(csv), steps=6, batch_size=4, val_size=10,
                test_size=10, max_len=16, eval_every=2, checkpoint_every=2, lr=1e-3,
                probe_size=8, save_model=False, warmup_ratio=0.0)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture
def tiny_cfg(tiny_csv) -> RunConfig:
    return tiny_config(tiny_csv)


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory) -> Path:
    """tiny-random-bert's shape, saved as a folder, with dropout off (so runs that should
    agree number for number, e.g. two DDP ranks vs one process or compiled vs eager, can)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dynsdpb.encoder.models import minilm_dir, tiny_bert_config
    d = tmp_path_factory.mktemp("nodrop") / "tiny-bert-nodrop"
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    cfg = tiny_bert_config(len(tok), 2, "classification")
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d
