"""Results with their sample size (issue 20): n next to every difference, what one test item
is worth, no winner without an interval that excludes 0, warnings for weak results."""
from __future__ import annotations

import json

from dynsdpb.compare import cautions, format_table, summarize, table_rows
from dynsdpb.report import write_report


def _sum(method: str, seed: int, acc: float, test_size: int = 400, mcc: float = 0.3,
         **kw) -> dict:
    return {"run": f"{method}-s{seed}", "method": method, "seed": seed,
            "schedule": "none" if method == "vanilla" else "dynsdpb-v1", "formula": "",
            "task": "classification", "primary_metric": "test_accuracy",
            "labels": ["a", "b", "c"], "test_size": test_size, "wall_time": 1.0,
            "test_accuracy": acc, "test_macro_f1": acc, "test_mcc": mcc, **kw}


def test_a_one_seed_tiny_constant_result_says_why_it_is_weak():
    """The issue's case: 6 test rows, one seed, every arm at 18.5 % (below chance for 3
    classes, a constant prediction) and '+0.50' with no interval."""
    s = summarize([_sum("vanilla", 0, 0.185, 6, 0.0, test_predicted_classes=1),
                   _sum("dynsdpb", 0, 0.19, 6, 0.0, test_predicted_classes=1)])
    said = " ".join(cautions(s))
    assert "Tiny test set: 6 items" in said and "16.67 points" in said
    assert "One seed per method" in said
    assert "Below chance (33.3 % for 3 classes): vanilla 18.50 %, dynsdpb 19.00 %" in said
    assert "A constant predictor (one class for every test item): vanilla (seed 0), " \
        "dynsdpb (seed 0)" in said
    rows = {r["method"]: r for r in table_rows(s)}
    assert rows["dynsdpb"]["Test accuracy (%)"] == "19.00"       # a column header in words
    assert rows["dynsdpb"]["seeds"] == 1 and rows["dynsdpb"]["test items"] == 6
    assert rows["dynsdpb"]["difference to vanilla (points) [95% CI]"] == \
        "+0.50 [no interval: one seed]"
    text = format_table(s)
    assert "one test item = 16.67 points" in text and "Caution: Tiny test set" in text


def test_old_runs_without_predicted_classes_still_warn_about_a_constant_predictor():
    s = summarize([_sum(m, k, 0.185, 400, 0.0) for m in ("vanilla", "dynsdpb")
                   for k in (0, 1)])
    assert any("constant prediction" in c for c in cautions(s))
    good = summarize([_sum("vanilla", k, 0.80 + k / 100) for k in (0, 1)]
                     + [_sum("dynsdpb", k, 0.82 + k / 100) for k in (0, 1)])
    assert cautions(good) == []
    rows = {r["method"]: r for r in table_rows(good)}
    assert rows["dynsdpb"]["difference to vanilla (points) [95% CI]"].endswith("n=2")


def _experiment(root, runs: list[dict]):
    exp = root / "exp"
    arms = []
    for r in runs:
        d = exp / r["run"]
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"method": r["method"], "seed": r["seed"]}))
        (d / "summary.json").write_text(json.dumps(r))
        arms.append(r["run"])
    (exp / "experiment.json").write_text(json.dumps({"id": "exp", "arms": arms,
                                                     "base_config": {}}))
    return exp


def test_the_report_bolds_no_winner_of_a_one_seed_difference(tmp_path):
    exp = _experiment(tmp_path, [_sum("vanilla", 0, 0.645, 6), _sum("dynsdpb", 0, 0.65, 6)])
    md = write_report([str(exp)], tmp_path / "rep")
    table = [ln for ln in md.splitlines() if ln.startswith("| dynsdpb") or
             ln.startswith("| vanilla")]
    assert table and not any("**" in ln for ln in table), table
    assert "Test accuracy (%)" in md and "one test item = 16.67 points" in md
    assert "Caution:** Tiny test set: 6 items" in md
    assert "[no interval: one seed]" in md


def test_the_report_bolds_a_winner_only_when_every_interval_excludes_0(tmp_path):
    runs = ([_sum("vanilla", k, 0.70 + k / 1000) for k in range(3)]
            + [_sum("dynsdpb", k, 0.75 + k / 1000) for k in range(3)])
    md = write_report([str(_experiment(tmp_path, runs))], tmp_path / "rep")
    row = next(ln for ln in md.splitlines() if ln.startswith("| dynsdpb | 3 |"))
    assert "**75.10 ± 0.10**" in row
    # a gap within seed noise: no bold
    noisy = ([_sum("vanilla", k, v) for k, v in enumerate((0.70, 0.80, 0.75))]
             + [_sum("dynsdpb", k, v) for k, v in enumerate((0.78, 0.72, 0.77))])
    md = write_report([str(_experiment(tmp_path / "b", noisy))], tmp_path / "rep2")
    assert not [ln for ln in md.splitlines() if ln.startswith("| ") and "**" in ln]
