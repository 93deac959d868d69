"""The Self-training page's status block (app/loopstatus.py): what each round's row says while
a loop runs, read from the files the loop writes."""
from __future__ import annotations

from app import loopstatus
from dynsdpb.store import RunDir
from tests.test_browser import _fake_loop, _write_round_training


def _phases(d) -> list[str]:
    return [r["phase"] for r in loopstatus.loop_view(d)["rows"]]


def test_rows_follow_an_arm_through_its_round(tmp_path):
    """Seen in a real loop: an arm that had finished its training (and its test) read
    "generated, waiting to train" until the round's end; stopped or failed arms fell through
    to the same words."""
    d = _fake_loop(tmp_path)
    RunDir(d).set_status("running", round=1, rounds=1, phase="training")
    rd = _write_round_training(d, 4)
    (rd.path / "train.jsonl").write_text('{"prompt": "p", "target": "t"}\n')
    rd.set_status("running", step=2, steps=4)
    assert _phases(d) == ["training, step 2/4"]
    rd.set_status("finished", step=4, steps=4)
    assert _phases(d) == ["trained, waiting for the other arms"]
    rd.set_status("stopped", step=3, steps=4)
    assert _phases(d) == ["stopped at step 3/4"]
    RunDir(d).set_status("stopped", phase="stopped")
    assert _phases(d) == ["stopped at step 3/4"]
