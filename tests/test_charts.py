"""Chart builders of the app, tested on their figure specs (no Streamlit run needed)."""
from app import common
from dynsdpb.store import RunDir


def _arm(records, method="dynsdpb"):
    return common.Arm(RunDir(f"/nonexistent/{method}-s0"), "exp", "exp", {"method": method},
                      {"state": "running"}, records)


def test_empty_drift_panel_note_sits_in_its_own_panel():
    """plotly.js drops axes that have no trace; a note tied to such an axis would land in the
    first panel and stretch its y range (seen in the browser). It must use paper coordinates
    inside the empty panel's domain."""
    recs = [{"step": s, "logit_drift": 1e-4 * s, "agreement": 1.0, "probe_drift": None}
            for s in range(2, 6)]
    fig = common.fig_drift([_arm(recs)])
    notes = [a for a in fig.layout.annotations if "no values yet" in (a.text or "")]
    assert len(notes) == 1
    note = notes[0]
    lo, hi = fig.layout.xaxis3.domain
    assert note.xref == "paper" and note.yref == "paper" and lo <= note.x <= hi
    # the data panels carry the points
    assert [t.xaxis for t in fig.data] == ["x", "x2"]
    assert list(fig.data[0].y) == [r["logit_drift"] for r in recs]


def test_every_method_keeps_one_colour_across_charts():
    recs = [{"step": s, "loss": 1.0, "ce": 1.0, "kd": 0.0, "alpha": 0.1, "alpha_lo": 0.0,
             "alpha_hi": 0.2, "tau": 3.0, "tau_lo": 3.0, "tau_hi": 3.0, "logit_drift": 0.1,
             "agreement": 1.0, "probe_drift": 0.1, "val_accuracy": 0.5} for s in range(1, 4)]
    arms = [_arm(recs, "vanilla"), _arm(recs, "dynsdpb")]
    colours: dict[str, set] = {}
    for fig in (common.fig_loss(arms), common.fig_drift(arms),
                common.fig_metric(arms, "val_accuracy")):
        for t in fig.data:
            if t.line and t.line.color:
                colours.setdefault(t.name.split("-")[0], set()).add(t.line.color)
    assert all(len(c) == 1 for c in colours.values()), colours
    assert colours["vanilla"] != colours["dynsdpb"]


def _ys(fig):
    """Every trace's y values, whether the builder returns a plotly Figure or a spec dict."""
    data = fig["data"] if isinstance(fig, dict) else fig.data
    return [list(t["y"]) for t in data]


def test_alpha_tau_band_spans_the_lowest_and_highest_carried_values():
    recs = [{"step": s, "alpha": 0.5, "alpha_lo": 0.25, "alpha_hi": 0.75, "tau": 2.0,
             "tau_lo": 1.5, "tau_hi": 3.0} for s in range(1, 4)]
    ys = _ys(common.fig_alpha_tau([_arm(recs)]))
    for key in ("alpha_lo", "alpha_hi", "tau_lo", "tau_hi", "alpha", "tau"):
        assert [r[key] for r in recs] in ys, key


def test_old_metrics_files_still_chart_their_alpha_tau_band():
    """A metrics line written before the rename (alpha_min/alpha_max/tau_min/tau_max, drift)
    reads with today's keys, so the band still shows."""
    import json

    from dynsdpb.store import parse_records
    old = [{"step": s, "alpha": 0.5, "alpha_min": 0.25, "alpha_max": 0.75, "tau": 2.0,
            "tau_min": 1.5, "tau_max": 3.0, "drift": 0.1} for s in range(1, 4)]
    recs = parse_records([json.dumps(r).encode() for r in old])
    assert all("alpha_min" not in r and r["alpha_lo"] == 0.25 and r["logit_drift"] == 0.1
               for r in recs)
    ys = _ys(common.fig_alpha_tau([_arm(recs)]))
    assert [0.25] * 3 in ys and [0.75] * 3 in ys and [3.0] * 3 in ys
