"""Views for text (encoder/views.py): what each training forward sees, and refeed as the exact
control with views on."""
from __future__ import annotations

import pytest
import torch

from dynsdpb.config import RunConfig, validate
from dynsdpb.encoder.views import augment, view_rng, word_groups
from dynsdpb.engine.task import View
from dynsdpb.errors import ConfigError
from dynsdpb.experiment import create_experiment, run_experiment
from dynsdpb.store import read_metrics
from dynsdpb.tasks import prepare
from tests.conftest import tiny_config

KINDS = ["token-mask", "word-dropout", "span-cutoff"]


@pytest.fixture(scope="module")
def task_of(tmp_path_factory):
    from tests.conftest import write_tiny_csv
    csv = write_tiny_csv(tmp_path_factory.mktemp("views") / "d.csv")
    made = {}

    def make(kind, p=0.3):
        if (kind, p) not in made:
            made[kind, p] = prepare(tiny_config(csv, augment=kind, augment_p=p))
        return made[kind, p]
    return make


def _ids(task, i, view):
    b = task.batch(task.train, [i], torch.device("cpu"), view)
    return b.inputs["input_ids"][0][b.inputs["attention_mask"][0].bool()].tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_two_passes_over_one_sample_see_different_views(task_of, kind):
    task = task_of(kind)
    n_diff = 0
    for i in range(len(task.train)):
        new, carried = _ids(task, i, View(0, 5)), _ids(task, i, View(0, 6))
        n_diff += new != carried
        assert _ids(task, i, View(0, 5)) == new      # reproducible from (seed, id, step)
        assert new[0] == task.train.input_ids[i][0] and new[-1] == task.train.input_ids[i][-1]
    # most samples differ between their new and carried pass (5-token texts with repeated
    # words: a span of 2 cut at another place can still leave the same tokens)
    assert n_diff >= 0.6 * len(task.train)


def test_views_off_gives_the_same_inputs_on_both_passes(task_of):
    task = task_of("none")
    for i in range(len(task.train)):
        assert _ids(task, i, View(0, 5)) == _ids(task, i, View(0, 6)) \
            == task.train.input_ids[i]


def test_views_on_leave_evaluation_alone(task_of):
    task = task_of("token-mask")
    # batch() without a view (every evaluation path) gives the tokens as they are
    for split in (task.train, task.val, task.test):
        for i in range(len(split)):
            b = task.batch(split, [i], torch.device("cpu"))
            assert b.inputs["input_ids"][0].tolist() == split.input_ids[i]


def test_each_augmenter_does_what_it_says():
    ids = [101, 11, 12, 13, 14, 15, 16, 17, 102, 21, 22, 23, 102]
    types = [0] * 9 + [1] * 4
    words = word_groups([None, 0, 1, 1, 2, 3, 4, 5, None, 0, 1, 2, None],
                        [None, 0, 0, 0, 0, 0, 0, 0, None, 1, 1, 1, None])
    special = {0, 8, 12}
    for step in range(30):
        x, t = augment(ids, types, words, "token-mask", 0.5, view_rng(0, 3, step), 103)
        assert len(x) == len(ids) and t == types
        assert all(x[i] == ids[i] for i in special)
        assert all(v in (ids[i], 103) for i, v in enumerate(x))
        x, t = augment(ids, types, words, "word-dropout", 0.9, view_rng(0, 3, step), 103)
        assert x[0] == 101 and x.count(102) == 2 and len(t) == len(x)
        assert any(v in (11, 12, 13, 14, 15, 16, 17) for v in x)   # a word of segment 0 stays
        assert any(v in (21, 22, 23) for v in x)                   # and one of segment 1
        if 12 in x or 13 in x:          # a word's pieces go together
            assert 12 in x and 13 in x
        x, t = augment(ids, types, words, "span-cutoff", 0.3, view_rng(0, 3, step), 103)
        # ceil(0.3 * 7) = 3 tokens of segment 0 and ceil(0.3 * 3) = 1 of segment 1
        assert len(x) == len(ids) - 4 and t.count(1) == 3
    assert augment(ids, types, words, "none", 0.5, view_rng(0, 3, 1), 103) == (ids, types)


def test_refeed_with_views_equals_dlb_with_views_and_alpha_zero(tiny_csv, tmp_path):
    cfg = tiny_config(tiny_csv, steps=6, eval_every=3, lr=1e-2, tau=2.0, augment="word-dropout",
                      augment_p=0.3)
    runs = {}
    for name, c in (("refeed", cfg.replace(method="refeed")),
                    ("dlb", cfg.replace(method="dlb", alpha=0.0))):
        exp = create_experiment(tmp_path / name, c, [c.method], [0])
        run_experiment(exp)
        runs[name] = read_metrics(exp / f"{c.method}-s0" / "metrics.jsonl")
    skip = {"time", "wall_time", "samples_per_s", "method", "schedule"}
    assert len(runs["refeed"]) == len(runs["dlb"]) == 6
    for r, d in zip(runs["refeed"], runs["dlb"]):
        assert {k: v for k, v in r.items() if k not in skip} == \
               {k: v for k, v in d.items() if k not in skip}
    # and the views changed the run: without them the losses differ
    exp = create_experiment(tmp_path / "plain", cfg.replace(method="refeed", augment="none"),
                            ["refeed"], [0])
    run_experiment(exp)
    plain = read_metrics(exp / "refeed-s0" / "metrics.jsonl")
    assert [r["loss"] for r in plain] != [r["loss"] for r in runs["refeed"]]


def test_views_are_refused_for_decoders_and_checked():
    probs = {p.field for p in validate(RunConfig(model="smollm2-135m", dataset="arith-easy",
                                                 augment="token-mask"))}
    assert "augment" in probs
    probs = {p.field for p in validate(RunConfig(augment="span-cutoff", augment_p=0.0))}
    assert probs == {"augment_p"}
    probs = {p.field for p in validate(RunConfig(augment="shuffle"))}
    assert probs == {"augment"}
    with pytest.raises(ConfigError):
        from dynsdpb.config import check_config
        check_config(RunConfig(augment="token-mask", augment_p=1.5))


def test_the_formula_says_views():
    from dynsdpb.engine.schedules import describe
    assert "Views" not in describe(RunConfig(method="dlb"))
    text = describe(RunConfig(method="dlb", augment="token-mask", augment_p=0.15))
    assert "token-mask" in text and "0.15" in text and "another view" in text
