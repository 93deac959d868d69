"""A sweep through the app (AppTest, no browser): Setup queues a grid, the runs finish on the
JobManager, Compare draws the paired gain per cell with the engine's numbers, and Runs lists
the sweep with its progress and deletes it after a confirmation."""
from __future__ import annotations

import math
import time

from tests import test_app as A
from tests.test_app import PAGES, fill_setup, new_app

runs_dir, csv = A.runs_dir, A.csv      # the app tests' fixtures: a fresh runs dir, a tiny CSV


def _queue_sweep(at, csv_path, name="tiny-grid"):
    fill_setup(at, csv_path, methods=("vanilla", "dynsdpb"))
    at.session_state["w_sweep_grid"] = "alpha_max=0.5,2"
    at.session_state["w_sweep_name"] = name
    at.run()
    at.button(key="btn_sweep").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return "\n".join(s.value for s in at.success)


def test_app_sweep_queues_runs_compare_draws_engine_numbers_runs_lists_and_deletes(
        runs_dir, csv):
    from app import common
    from dynsdpb.sweep import spec as SW
    from dynsdpb.sweep import read as SR
    at = new_app()
    msg = _queue_sweep(at, csv)
    # one seed (keeps the test short): vanilla once (it does not read alpha_max), dynsdpb once
    # per cell
    assert "Queued 3 runs for 2 cells in `tiny-grid`" in msg, msg
    folder = runs_dir / "tiny-grid"
    assert len(SW.plan_runs(folder)) == 3
    assert common.manager().wait_idle(240), "the sweep's runs did not finish"
    ov = SR.overview(folder)
    assert (ov["runs_finished"], ov["runs_total"], ov["runs_running"]) == (3, 3, 0)

    # Compare: the heatmap's cells are the engine's paired differences, in points
    at.switch_page(str(PAGES / "compare.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    figs = [c for c in at.get("plotly_chart")]
    import json
    specs = [json.loads(f.proto.spec) for f in figs]
    heat = [s for s in specs if s["data"] and s["data"][0].get("type") == "heatmap"]
    assert heat, "no heatmap on Compare"
    cl = SR.cells(folder)
    want = SR.heatmap(cl, "alpha_max", "", "dynsdpb", "vanilla")
    # grid values are categories: a numeric axis would stretch cells over empty neighbours
    assert heat[0]["layout"]["xaxis"]["type"] == "category"
    z = heat[0]["data"][0]["z"]
    assert len(z[0]) == 2
    for got, m in zip(z[0], want["z"][0]):
        assert math.isclose(got, 100 * m, rel_tol=1e-9, abs_tol=1e-12)

    # every run the app starts can be overlaid on Compare and followed on Live, under a
    # readable name (the sweep and its cell values), with the same run count as Runs
    opts = at.multiselect(key="w_cmp_pick").options
    mine = [o for o in opts if o.startswith("tiny-grid: alpha_max=")]
    assert len(mine) == 3 and all("(finished)" in o for o in mine), opts
    assert any("(dynsdpb, seed 0) / dynsdpb-s0" in o for o in mine), mine
    assert not any("dynsdpb-s0-" in o.split(" / ")[0] for o in mine), mine   # no bare keys
    assert any("3 of 3 runs finished, 2 cells" in c.value for c in at.caption)
    at.switch_page(str(PAGES / "live.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    live = at.selectbox(key="w_live_pick").options
    assert sum(o.startswith("tiny-grid: alpha_max=") for o in live) == 3, live

    # Runs: the sweep is listed with its progress; Delete asks first, then removes it all
    at.switch_page(str(PAGES / "runs.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    table = [d for d in at.dataframe if "sweep" in d.value.columns]
    assert table and table[0].value["runs finished"].tolist() == ["3 of 3"]
    assert table[0].value["varies"].tolist() == ["alpha_max"]
    at.button(key="btn_sweep_delete").click().run()
    assert folder.exists() and any("cannot be undone" in w.value for w in at.warning)
    at.button(key="btn_sweep_delete_yes").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not folder.exists()
    assert any("No experiments in" in i.value and "outside sweeps" not in i.value
               for i in at.info)


def test_runs_page_refuses_to_delete_a_sweep_with_queued_runs(runs_dir, csv):
    from app import common
    from dynsdpb.sweep import read as SR
    jm = common.manager()
    at = new_app()
    # a long first run keeps the rest of the sweep in the queue while the page is looked at
    fill_setup(at, csv, methods=("vanilla", "dynsdpb"), steps="400", eval_every="400")
    at.session_state["w_sweep_grid"] = "alpha_max=0.5,2"
    at.session_state["w_sweep_name"] = "busy-grid"
    at.run()
    at.button(key="btn_sweep").click().run()
    folder = runs_dir / "busy-grid"
    deadline = time.time() + 60
    while time.time() < deadline and not jm.queue():
        time.sleep(0.2)
    try:
        at.switch_page(str(PAGES / "runs.py")).run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.button(key="btn_sweep_delete").disabled
        stop = at.button(key="btn_sweep_stop")
        assert not stop.disabled
        queued = [k for k in jm.queue() if k in SR.overview(folder)["keys"]]
        assert queued
        stop.click().run()
        assert not [k for k in jm.queue() if k in SR.overview(folder)["keys"]]
    finally:
        for k in [jm.current(), *jm.queue()]:
            if k:
                jm.stop(k)
        jm.wait_idle(120)
    assert folder.exists()
