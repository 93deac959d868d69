"""Paired differences: the interval and the power figure the verdicts quote."""
import math

from dynsdpb.metrics import paired_diff


def test_paired_diff_gives_the_interval_and_the_smallest_detectable_effect():
    d = paired_diff([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])       # differences 1, 2, 3: sd 1
    se = 1 / math.sqrt(3)
    assert d["n"] == 3 and d["mean"] == 2.0
    assert math.isclose(d["ci_high"] - d["mean"], 4.303 * se, rel_tol=1e-9)
    assert math.isclose(d["mde"], (4.303 + 1.061) * se, rel_tol=1e-9)   # t_.975 + t_.80, df 2
    # more pairs with the same spread detect a smaller effect
    more = paired_diff([2.0, 4.0, 6.0] * 3, [1.0, 2.0, 3.0] * 3)
    assert more["mde"] < d["mde"]
    assert math.isnan(paired_diff([1.0], [0.0])["mde"])
