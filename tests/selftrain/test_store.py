"""dynsdpb/selftrain/store.py: the per-round table says what its numbers stand on."""
from __future__ import annotations

from dynsdpb.selftrain.store import format_rounds


def _summary(per_seed: dict[str, dict[str, float]], test_size: int = 8) -> dict:
    from dynsdpb.metrics import mean_std, paired_diff
    seeds = sorted(per_seed["vanilla"])
    methods = {}
    for m, vals in per_seed.items():
        mean, std = mean_std([vals[s] for s in seeds])
        row = {"seeds": seeds, "test_exact_match": {"mean": mean, "std": std,
                                                    "per_seed": vals}}
        if m != "vanilla":
            row["test_exact_match"]["diff_vs_vanilla"] = paired_diff(
                [vals[s] for s in seeds], [per_seed["vanilla"][s] for s in seeds])
        methods[m] = row
    return {"loop": {"loop": "star"}, "seeds": seeds, "test_size": test_size,
            "primary_metric": "test_exact_match",                # as summarize writes it
            "baseline": {"test_exact_match": 0.375},
            "rounds": [{"round": 1, "methods": methods}]}


def test_rounds_table_gives_seeds_test_items_and_intervals():
    """Seen on the Self-training page: "diff vs vanilla +0.0" for one seed on 8 test items,
    with nothing saying that one item is 12.5 points and that one seed has no interval."""
    one = format_rounds(_summary({"vanilla": {"0": 0.5}, "dynsdpb": {"0": 0.625}}))
    assert "1 seed per method x 8 test items; one test item = 12.50 points" in one
    assert "one seed: no interval, no winner" in one
    assert "+12.50 [no interval: one seed]" in one
    three = format_rounds(_summary({"vanilla": {"0": 0.5, "1": 0.5, "2": 0.625},
                                    "dynsdpb": {"0": 0.625, "1": 0.5, "2": 0.75}}, 16))
    assert "3 seeds per method x 16 test items; one test item = 6.25 points" in three
    assert "no winner" not in three
    line = next(x for x in three.splitlines() if x.startswith("1  ") and "dynsdpb" in x)
    assert "+8.33 [" in line and "], n=3" in line
