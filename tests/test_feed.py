"""The live feed (app/feed.py): the JSON routes that the status blocks and charts of Live and
Self-training fetch while a run trains, instead of rerunning the page (issue 20: each rerun of
a visible tab cost 30-45 ms of browser CPU even when nothing changed). The browser side is in
tests/test_browser.py (test_browser_live_updates_without_rerunning_the_page,
test_browser_selftrain_updates_without_rerunning_the_page)."""
from __future__ import annotations

import json

from starlette.requests import Request

from app import feed, figures, livechart, livestatus
from tests.test_app import csv, runs_dir, train_experiment  # noqa: F401 - fixtures
from tests.test_charts import _arm, _recs


def _get(endpoint, **query) -> tuple[int, dict]:
    from urllib.parse import urlencode
    req = Request({"type": "http", "method": "GET", "path": "/", "headers": [],
                   "query_string": urlencode(query).encode()})
    resp = endpoint(req)
    return resp.status_code, json.loads(resp.body)


def test_feed_update_sends_nothing_new_points_or_the_whole_figure():
    """A chart that holds the newest revision gets only it; one that holds a revision sent
    before gets the points that extend it (its figure plus them is the new one); one whose
    revision the server does not know gets the whole figure."""
    arms = [_arm(_recs(20), "vanilla"), _arm(_recs(20), "dynsdpb")]
    f1 = figures.figure(figures.fig_loss, arms, "step", uirev="feed")
    first = livechart.feed_update(f1, None)
    assert "figure" in first
    assert livechart.feed_update(f1, first["rev"]) == {"rev": first["rev"]}
    for a in arms:
        a.records.extend(dict(a.records[-1], step=s, time=1000.0 + s) for s in (21, 22))
    f2 = figures.figure(figures.fig_loss, arms, "step", uirev="feed")
    upd = livechart.feed_update(f2, first["rev"])
    assert upd["base"] == first["rev"] != upd["rev"] and "figure" not in upd
    old = json.loads(first["figure"])
    for i, xs, ys in zip(upd["extend"]["indices"], upd["extend"]["x"], upd["extend"]["y"]):
        old["data"][i]["x"] += xs
        old["data"][i]["y"] += ys
    assert old == json.loads(figures.figure_json(f2))
    assert "figure" in livechart.feed_update(f2, "0123456789abcdef")


def test_feed_routes_read_only_experiments_under_the_runs_directory(runs_dir, csv, tmp_path):  # noqa: F811
    """The status route answers the status block of an experiment of the runs directory and
    the key the page reruns on; the chart route a registered chart. Anything else (a path
    out of the runs directory, a folder that is no experiment, an unknown chart) is 404 with
    one line, never a traceback."""
    train_experiment(runs_dir, csv, name="fed")
    exp = next(p.name for p in runs_dir.iterdir() if (p / "experiment.json").is_file())
    code, body = _get(feed.status_endpoint, exp=exp)
    assert code == 200
    assert "latest step 3 of" in body["html"] and "finished" in body["html"]
    assert "<table" in body["html"] and "dynsdpb-s0" in body["html"]
    assert "'finished'" in body["key"]
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "experiment.json").write_text("{}")
    for bad in ("../outside", str(tmp_path / "outside"), "", "nope", "fed/../../outside"):
        assert _get(feed.status_endpoint, exp=bad) == (404, {"error": "no such experiment"})

    ident = feed.register_chart(exp, figures.fig_loss, "step", uirev="t")
    code, body = _get(feed.chart_endpoint, id=ident)
    assert code == 200 and "figure" in body
    assert _get(feed.chart_endpoint, id=ident, rev=body["rev"]) == (200, {"rev": body["rev"]})
    assert _get(feed.chart_endpoint, id="unknown")[0] == 404


def test_status_html_says_what_the_streamlit_status_says():
    """The feed's block and the page's Streamlit elements come from one view: the same words,
    caption and table cells."""
    class JM:
        def queue(self):
            return []

        def current(self):
            return None

        def is_active(self):
            return False

        def job(self, _):
            return None

    arms = [_arm(_recs(12), "vanilla"), _arm(_recs(12), "dynsdpb")]
    view = livestatus.status_view(JM(), "exp", arms)
    html = livestatus.status_html(view)
    from html import escape
    assert view["words"] and all(escape(w) in html for w in view["words"])
    assert escape(view["caption"]) in html
    for row in view["rows"]:
        for v in row.values():
            assert f"<td>{v}</td>" in html


def test_feed_routes_answer_under_the_base_url_path():
    """With server.baseUrlPath set, the pages ask for /BASE/_dynsdpb/live/... (common.server_url), and
    Streamlit mounts an app's own routes without the prefix: both must reach the feed."""
    from starlette.routing import Match
    for path in (feed.STATUS_PATH, "/work/bench" + feed.STATUS_PATH, feed.CHART_PATH,
                 "/x" + feed.CHART_PATH):
        scope = {"type": "http", "method": "GET", "path": path}
        hits = [r for r in feed.routes() if r.matches(scope)[0] == Match.FULL]
        assert hits and hits[0].endpoint in (feed.status_endpoint, feed.chart_endpoint), path
    scope = {"type": "http", "method": "GET", "path": "/_dynsdpb/live/other"}
    assert not any(r.matches(scope)[0] == Match.FULL for r in feed.routes())


def test_loop_route_reads_only_self_training_folders(runs_dir, tmp_path):  # noqa: F811
    """The loop route answers the Self-training page's block (the state, where the loop is,
    the rounds table) and a key that changes when a round's files arrive, not with each
    step; anything but a self-training folder of the runs directory is 404 with one line."""
    from dynsdpb.store import RunDir, atomic_write_json
    from tests.test_browser import _fake_loop, _write_kept_round, _write_round_training
    d = _fake_loop(runs_dir)
    RunDir(d).set_status("running", round=1, rounds=1, phase="training", arm="vanilla-s0")
    rd = _write_round_training(d, 100)
    rd.set_status("running", step=7, steps=100)
    code, body = _get(feed.loop_endpoint, loop="loop")
    assert code == 200
    assert "round 1/1: training (vanilla-s0)" in body["html"]
    assert "training, step 7/100" in body["html"] and "<table" in body["html"]
    rd.set_status("running", step=8, steps=100)
    again = _get(feed.loop_endpoint, loop="loop")[1]
    assert "training, step 8/100" in again["html"] and again["key"] == body["key"]
    _write_kept_round(d)
    assert _get(feed.loop_endpoint, loop="loop")[1]["key"] != body["key"]
    (tmp_path / "outside").mkdir()
    atomic_write_json(tmp_path / "outside" / "selftrain.json", {})
    exp = runs_dir / "an-experiment"
    exp.mkdir()
    (exp / "experiment.json").write_text("{}")
    for bad in ("../outside", str(tmp_path / "outside"), "", "nope", "an-experiment",
                "loop/../../outside"):
        assert _get(feed.loop_endpoint, loop=bad) == (404, {"error": "no such self-training "
                                                                     "folder"})
