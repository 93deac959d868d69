"""The live feed: small JSON routes of the workbench's server (app/server.py) that the status
blocks and charts of Live and Self-training fetch by themselves while a run trains, instead of
rerunning the page.

Why: a Streamlit rerun costs a visible tab 30-45 ms of browser CPU even when nothing on the
page changed (measured in Chromium: React redraws the page's tree), and Plotly redraws a chart
in ~35 ms. At one rerun every 2 s for the status and one every 5 s for the charts, each open
tab took about 0.1 CPU cores from the training on the same 2-core machine. With the feed a poll
is one fetch of a few hundred bytes and a text update; a chart asks for the points newer than
the revision it holds and draws only when there are some.

- GET /_dynsdpb/live/status?exp=KEY -> {"html": the status block, "key": what the page draws
  around it}; the page reruns when "key" changes (app/livestatus.py).
- GET /_dynsdpb/live/loop?loop=KEY -> the same for the Self-training page's status block
  (app/loopstatus.py) of the self-training folder KEY.
- GET /_dynsdpb/live/chart?id=ID&rev=REV -> {"rev"} when nothing is new, else the new points
  that extend REV or the whole figure (app/livechart.py `feed_update`). ID names a chart the
  page registered (`register_chart`): experiment, figure function and arguments.

Both only read run folders under the runs directory. An unknown experiment or chart is 404
with one line of JSON; nothing is ever written.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

ENV = "DYNSDPB_LIVE_FEED"      # set by app/server.py: the routes exist in this process
STATUS_PATH = "/_dynsdpb/live/status"
LOOP_PATH = "/_dynsdpb/live/loop"
CHART_PATH = "/_dynsdpb/live/chart"

_CHARTS: OrderedDict[str, tuple] = OrderedDict()     # id -> (exp key, fn, args, kw)
_CHARTS_LOCK = threading.Lock()


def available() -> bool:
    """True in the workbench's own server (app/server.py), which serves the feed's routes;
    False under AppTest or a plain `streamlit run app/main.py` (pages then poll by rerunning)."""
    return os.environ.get(ENV) == "1"


def _folder(key: str, meta: str) -> Path | None:
    """The folder `key` under the runs directory if it holds the file `meta`, else None."""
    from app.common import runs_dir
    root = runs_dir()
    try:
        p = (root / key).resolve()
        p.relative_to(root)
    except (ValueError, OSError):
        return None
    return p if key and (p / meta).is_file() else None


def experiment(key: str) -> Path | None:
    """The experiment folder of a page's key, only if it is one under the runs directory."""
    from dynsdpb.store import ExperimentDir
    return _folder(key, ExperimentDir.META)


def loop(key: str) -> Path | None:
    """The self-training folder of a page's key, only if it is one under the runs directory."""
    from dynsdpb.selftrain.store import META
    return _folder(key, META)


def register_chart(exp_key: str, fn, *args, **kw) -> str:
    """An id for the chart `fn(arms of exp_key, *args, **kw)` that the chart route rebuilds
    from the run files (figures.figure); the same chart gets the same id in every session."""
    ident = hashlib.blake2b(repr((exp_key, fn.__module__, fn.__name__, args,
                                  sorted(kw.items()))).encode(), digest_size=8).hexdigest()
    with _CHARTS_LOCK:
        _CHARTS[ident] = (exp_key, fn, args, kw)
        _CHARTS.move_to_end(ident)
        while len(_CHARTS) > 512:
            _CHARTS.popitem(last=False)
    return ident


def chart_url(exp_key: str, fn, *args, **kw) -> str:
    """The URL that the live chart fn(arms of exp_key, *args, **kw) polls (registered here)."""
    from app.common import server_url
    return server_url(CHART_PATH, id=register_chart(exp_key, fn, *args, **kw))


def _arms(exp_key: str) -> list | None:
    """The arms of an experiment key as Live reads them (shared cache), None if none."""
    from app import views
    exp = experiment(exp_key)
    return (views.load_arms_live(exp)[1] or None) if exp is not None else None


def status_payload(exp_key: str) -> dict | None:
    """What the status route answers for an experiment key; None when there is none."""
    from app import common, livestatus
    arms = _arms(exp_key)
    if arms is None:
        return None
    view = livestatus.status_view(common.manager(), exp_key, arms)
    return {"html": livestatus.status_html(view), "key": view["key"]}


def loop_payload(loop_key: str) -> dict | None:
    """What the loop route answers for a self-training folder's key; None when there is none."""
    from app import loopstatus
    path = loop(loop_key)
    if path is None:
        return None
    view = loopstatus.loop_view(path)
    return {"html": loopstatus.loop_html(view), "key": view["key"]}


def chart_payload(ident: str, held: str | None) -> dict | None:
    """What the chart route answers: the points newer than the browser's revision `held`, the
    whole figure, or only the revision when nothing changed; None for an unknown chart."""
    from app import figures
    from app.livechart import feed_update
    with _CHARTS_LOCK:
        spec = _CHARTS.get(ident)
    if spec is None:
        return None
    exp_key, fn, args, kw = spec
    arms = _arms(exp_key)
    if arms is None:
        return None
    return feed_update(figures.figure(fn, arms, *args, **kw), held)


def _json(payload: dict | None, what: str):
    from starlette.responses import JSONResponse
    if payload is None:
        return JSONResponse({"error": f"no such {what}"}, status_code=404)
    return JSONResponse(payload, headers={"Cache-Control": "no-store"})


def status_endpoint(request):
    """GET STATUS_PATH?exp=KEY (a plain function: Starlette runs it in its thread pool, so
    reading the run files never blocks the server's event loop)."""
    return _json(status_payload(request.query_params.get("exp", "")), "experiment")


def loop_endpoint(request):
    """GET LOOP_PATH?loop=KEY."""
    return _json(loop_payload(request.query_params.get("loop", "")), "self-training folder")


def chart_endpoint(request):
    """GET CHART_PATH?id=ID&rev=REV."""
    q = request.query_params
    return _json(chart_payload(q.get("id", ""), q.get("rev") or None), "chart")


def routes() -> list:
    """The feed's routes, at the root and under any prefix: Streamlit serves its own routes
    under server.baseUrlPath but mounts an app's routes as given (common.server_url adds the
    prefix)."""
    from starlette.routing import Route
    return [Route(prefix + path, endpoint, methods=["GET"])
            for path, endpoint in ((STATUS_PATH, status_endpoint), (LOOP_PATH, loop_endpoint),
                                   (CHART_PATH, chart_endpoint))
            for prefix in ("", "/{base:path}")]
