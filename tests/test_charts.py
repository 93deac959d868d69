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
    recs = [{"step": s, "loss": 1.0, "ce": 1.0, "kd": 0.0, "alpha": 0.1, "alpha_min": 0.0,
             "alpha_max": 0.2, "tau": 3.0, "tau_min": 3.0, "tau_max": 3.0, "logit_drift": 0.1,
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
