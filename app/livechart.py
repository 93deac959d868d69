"""Live charts that keep the user's zoom while new points arrive.

Why not `st.plotly_chart`: in Streamlit 1.67 its element id hashes the figure, so every data
update mounts a new chart and `layout.uirevision` never gets a chance to keep the zoom
(checked in Chromium: a drag-zoom is gone at the next update). This small
`st.components.v2` component keeps one plot div per key and calls `Plotly.react` on it,
which is exactly what `uirevision` was made for.

What each open tab pays per update is kept small: after the first draw a session gets only
the points that are new (`chart_data`; the browser appends them with Plotly.extendTraces, and
asks for the whole figure again only if its chart was mounted anew); a figure that did not
change is not drawn again; a hidden tab (document.visibilityState) or a chart scrolled out of
view (IntersectionObserver) keeps what arrives and draws it once, when shown. A hidden tab is
not even polled (app/visibility.py). Plotly redraws a chart on extendTraces as on react, so
the saving is the figure's JSON and its diff, not the drawing; skipping unseen charts is
what saves the drawing. window.__dynsdpbDraws counts the draws (browser tests read it).

Under the workbench's server (app/server.py) a chart given a `feed` URL fetches its new points
itself (app/feed.py, `feed_update`) every common.CHARTS_EVERY seconds while the run trains,
with no Streamlit rerun at all; a rerun that later sends a figure the chart already extended
past is ignored (each figure carries its uirevision and the number of records behind it).

plotly.js is served by Streamlit's static file serving (`server.enableStaticServing`,
`app/static/`), copied there from the installed plotly package: no network, no CDN. When
that is not possible (read-only install, static serving off), `live_chart` falls back to
`st.plotly_chart`, which works but loses the zoom at each update.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections import OrderedDict
from functools import partial
from pathlib import Path

import plotly
import plotly.graph_objects as go
import streamlit as st

from app import common

STATIC = Path(__file__).resolve().parent / "static"
PLOTLY_JS = STATIC / "plotly.min.js"

_JS = """
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const stats = window.__dynsdpbDraws ||
    (window.__dynsdpbDraws = { full: 0, extend: 0, points: 0, resync: 0, deferred: 0, ms: 0,
                               mounts: 0 });
  let host = parentElement.querySelector(".dynsdpb-plot");
  if (!host) {
    host = document.createElement("div");
    host.className = "dynsdpb-plot";
    stats.mounts += 1;
    host.style.width = "100%";
    parentElement.appendChild(host);
    host.__tip = null;        // rev of the newest figure received (drawn or waiting)
    host.__pending = [];      // messages received, not drawn yet (hidden tab, chart off screen)
    host.__inView = true;     // until the observer says otherwise
  }
  const visible = () => document.visibilityState !== "hidden" && host.__inView;

  // Draw what is waiting: the last full figure, then every later batch of new points merged
  // into one extendTraces call. Plotly redraws the chart either way; extendTraces spares the
  // browser the whole figure's JSON and Plotly.react's diff of it.
  const flush = () => {
    if (!window.Plotly || !host.isConnected || !host.__pending.length || !visible()) return;
    const q = host.__pending;
    host.__pending = [];
    const t0 = performance.now();
    let start = 0;
    for (let j = q.length - 1; j >= 0; j--) if (q[j].figure) { start = j; break; }
    if (q[start].figure) {
      const fig = JSON.parse(q[start].figure);
      // Plotly.react on the same div: layout.uirevision keeps zoom and legend clicks.
      window.Plotly.react(host, fig.data, fig.layout, host.__config || {});
      stats.full += 1;
      start += 1;
    }
    const add = new Map();    // trace index -> {x, y}
    for (let j = start; j < q.length; j++) {
      const e = q[j].extend;
      e.indices.forEach((i, k) => {
        const a = add.get(i) || { x: [], y: [] };
        a.x = a.x.concat(e.x[k]);
        a.y = a.y.concat(e.y[k]);
        add.set(i, a);
      });
    }
    if (add.size) {
      const idx = Array.from(add.keys());
      window.Plotly.extendTraces(host, { x: idx.map((i) => add.get(i).x),
                                         y: idx.map((i) => add.get(i).y) }, idx);
      stats.extend += 1;
      idx.forEach((i) => { stats.points += add.get(i).x.length; });
    }
    stats.ms += performance.now() - t0;
  };

  const receive = (d) => {
    if (d.rev === host.__tip) return;          // the same figure again: nothing to draw
    // [uirevision, records behind it]: a rerun may send a figure of fewer records than the
    // feed has already drawn; another uirevision (x axis, experiment) is always drawn
    const s = host.__stamp;
    if (d.stamp && s && d.stamp[0] === s[0] && d.stamp[1] < s[1]) return;
    if (d.config) host.__config = d.config;
    if (d.figure) {
      host.__pending = [d];                    // a whole figure replaces whatever waits
    } else if (d.base === host.__tip && host.__tip !== null) {
      host.__pending.push(d);                  // new points for the figure we hold
    } else {
      // points for a figure this chart does not hold (it was mounted again, or a message
      // was missed): ask the server for the whole figure once
      if (host.__asked !== d.rev) {
        host.__asked = d.rev;
        stats.resync += 1;
        setTriggerValue("resync", d.rev);
      }
      return;
    }
    host.__tip = d.rev;
    host.__stamp = d.stamp || null;
    if (visible()) flush(); else stats.deferred += 1;
  };

  // The live feed (app/feed.py): while a run trains the chart asks the server for the points
  // newer than the revision it holds, every `every` seconds, without a Streamlit rerun; a
  // hidden tab or a chart out of view asks for nothing until shown.
  const poll = async () => {
    const f = host.__feed;
    if (!f || host.__busy || !window.Plotly || !visible() || !host.isConnected) return;
    host.__busy = true;
    try {
      const r = await fetch(f.url + "&rev=" + encodeURIComponent(host.__tip || ""),
                            { cache: "no-store" });
      if (r.ok) {
        const d = await r.json();
        stats.fetches = (stats.fetches || 0) + 1;
        if (d.figure || d.extend) receive(d);
      }
    } catch (e) {
      // the server is restarting: the next poll tries again
    } finally {
      host.__busy = false;
    }
  };
  // One timer per page for all its charts, stopped while the tab is hidden: the charts ask
  // together, so the machine wakes once per interval, not once per chart.
  const ticker = window.__dynsdpbTicker || (window.__dynsdpbTicker = (() => {
    const t = { hosts: new Set(), timer: null, every: 0 };
    t.tick = () => t.hosts.forEach((h) => h.__poll && h.__poll());
    t.sync = () => {
      const want = t.hosts.size > 0 && document.visibilityState !== "hidden";
      if (want && !t.timer) t.timer = setInterval(t.tick, t.every * 1000);
      if (!want && t.timer) { clearInterval(t.timer); t.timer = null; }
    };
    document.addEventListener("visibilitychange", () => {
      t.sync();
      if (document.visibilityState !== "hidden") t.tick();
    });
    return t;
  })());
  const feed = (f) => {
    host.__feed = f || null;
    host.__poll = poll;
    if (f) {
      if (ticker.every !== f.every && ticker.timer) {
        clearInterval(ticker.timer);
        ticker.timer = null;
      }
      ticker.every = f.every;
      ticker.hosts.add(host);
    } else {
      ticker.hosts.delete(host);
    }
    ticker.sync();
  };

  if (!host.__watching) {
    host.__watching = true;
    // A tab nobody looks at, or a chart scrolled out of view, draws nothing: it keeps what
    // arrives and draws it once, when it is shown. Drawing unseen charts took CPU from the
    // training on the same machine.
    host.__onvis = flush;          // the ticker asks for what is new (below)
    document.addEventListener("visibilitychange", host.__onvis);
    if (window.IntersectionObserver) {
      host.__observer = new IntersectionObserver((entries) => {
        host.__inView = entries[entries.length - 1].isIntersecting;
        flush();
        poll();
      }, { rootMargin: "200px" });
      host.__observer.observe(host);
    }
  }

  feed(data.feed);
  if (window.Plotly) {
    receive(data);
  } else {
    if (!window.__dynsdpbPlotly) {
      window.__dynsdpbPlotly = new Promise((ok, fail) => {
        const s = document.createElement("script");
        s.src = data.src;
        s.onload = ok;
        s.onerror = fail;
        document.head.appendChild(s);
      });
    }
    window.__dynsdpbPlotly.then(() => { receive(data); flush(); });
  }
  return () => {
    feed(null);
    document.removeEventListener("visibilitychange", host.__onvis);
    if (host.__observer) host.__observer.disconnect();
    host.__watching = false;
    host.__tip = null;
    host.__pending = [];
    host.__stamp = null;
    if (window.Plotly) window.Plotly.purge(host);
  };
}
"""

_component = st.components.v2.component("dynsdpb.live_plot", js=_JS, isolate_styles=False)


def _plotly_js_url() -> str | None:
    """URL of plotly.min.js under Streamlit's static serving, copying it there if needed.

    In a checkout the file is copied from the plotly package (and again when plotly is
    upgraded). An installed wheel carries it (setup.py) and may be read-only: a failed copy
    then keeps the shipped file."""
    if not st.get_option("server.enableStaticServing"):
        return None
    try:
        src = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        if src.is_file() and (not PLOTLY_JS.is_file()
                              or PLOTLY_JS.stat().st_size != src.stat().st_size):
            STATIC.mkdir(exist_ok=True)
            tmp = PLOTLY_JS.with_suffix(".tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(PLOTLY_JS)
    except OSError:
        pass                # read-only install: the shipped copy below, if any
    if not PLOTLY_JS.is_file():
        return None
    return common.server_url("/app/static/plotly.min.js")


def _parts(fig: go.Figure) -> tuple[str, list]:
    """(the figure without its points, as JSON; each trace's (x, y)), once per figure (the
    figures from figures.figure are shared and never modified)."""
    cached = getattr(fig, "_dynsdpb_parts", None)
    if cached is None:
        from app.figures import figure_json
        d = json.loads(figure_json(fig))
        points = [(t.pop("x", None), t.pop("y", None)) for t in d.get("data", [])]
        cached = (json.dumps(d, sort_keys=True), points)
        fig._dynsdpb_parts = cached
    return cached


def new_points(old: go.Figure, new: go.Figure) -> dict | None:
    """The points that turn `old` into `new` when appended to its traces, as Plotly's
    extendTraces takes them ({"x": [[...]], "y": [[...]], "indices": [...]}); None when `new`
    is not `old` plus points (another layout, style, trace count, or changed old points, as
    after decimation)."""
    shape_old, pts_old = _parts(old)
    shape_new, pts_new = _parts(new)
    if shape_old != shape_new or len(pts_old) != len(pts_new):
        return None
    xs, ys, idx = [], [], []
    for i, ((xo, yo), (xn, yn)) in enumerate(zip(pts_old, pts_new)):
        if not all(isinstance(v, list) for v in (xo, yo, xn, yn)):
            if (xo, yo) == (xn, yn):
                continue
            return None
        n = len(xo)
        if len(yo) != n or len(xn) != len(yn) or len(xn) < n or xn[:n] != xo or yn[:n] != yo:
            return None
        if len(xn) > n:
            xs.append(xn[n:])
            ys.append(yn[n:])
            idx.append(i)
    return {"x": xs, "y": ys, "indices": idx}


def _rev(fig: go.Figure) -> str:
    cached = getattr(fig, "_dynsdpb_rev", None)
    if cached is None:
        from app.figures import figure_json
        cached = hashlib.blake2b(figure_json(fig).encode(), digest_size=8).hexdigest()
        fig._dynsdpb_rev = cached
    return cached


_BY_REV: OrderedDict[str, go.Figure] = OrderedDict()   # rev -> figure recently sent
_BY_REV_LOCK = threading.Lock()


def _stamp(fig: go.Figure) -> list:
    """[uirevision, records behind the figure]: what the browser orders figures by."""
    from app.figures import records_behind
    return [str(fig.layout.uirevision), records_behind(fig)]


def _remember(rev: str, fig: go.Figure) -> None:
    with _BY_REV_LOCK:
        _BY_REV[rev] = fig
        _BY_REV.move_to_end(rev)
        while len(_BY_REV) > 256:
            _BY_REV.popitem(last=False)


def _update(fig: go.Figure, old: go.Figure | None, base: str | None) -> dict:
    """`fig` for a browser that holds `old` (revision `base`; None: nothing): the points
    that extend `old` when `fig` is `old` plus points, else the whole figure."""
    from app.figures import figure_json
    out = {"rev": _rev(fig), "stamp": _stamp(fig)}
    add = new_points(old, fig) if old is not None else None
    if add is not None:
        return dict(out, extend=add, base=base)
    return dict(out, figure=figure_json(fig))


def feed_update(fig: go.Figure, held: str | None) -> dict:
    """What the live feed (app/feed.py) sends a chart that holds revision `held` when the
    figure is now `fig`: only the revision when it is the same, the new points when `fig`
    extends a figure sent recently (to any session), else the whole figure."""
    rev = _rev(fig)
    _remember(rev, fig)
    if held == rev:
        return {"rev": rev}
    with _BY_REV_LOCK:
        old = _BY_REV.get(held) if held else None
    return _update(fig, old, held)


SENT = "_live_chart_sent"     # session state: per chart key, what this session's browser holds


def _forget(key: str) -> None:
    """The browser asked for the whole figure (its chart was mounted again)."""
    st.session_state.get(SENT, {}).pop(key, None)


def chart_data(fig: go.Figure, key: str, config: dict, src: str, sent: dict) -> dict:
    """What the component gets for `fig`: the whole figure the first time (and whenever it is
    not the last one plus points), else only the new points and the revision they extend.
    The same figure again gives the very same data, which Streamlit's message cache sends as a
    short reference and the component skips. `sent`: this session's SENT state."""
    last = sent.get(key)
    same_config = last is not None and last["config"] == config
    if same_config and last["data"]["rev"] == _rev(fig):
        last["fig"] = fig              # the same figure (or a new build of it): the same data
        return last["data"]
    data = dict(_update(fig, last["fig"], last["data"]["rev"]) if same_config
                else _update(fig, None, None), config=config, src=src)
    sent[key] = {"fig": fig, "config": config, "data": data}
    _remember(data["rev"], fig)      # the feed may extend what this session was sent
    return data


def live_chart(fig: go.Figure, key: str, config: dict | None = None,
               feed: str | None = None) -> None:
    """Draw `fig` so that the user's zoom survives the next update of the same key.

    The figure's JSON is computed once per figure (figures.figure_json); after the first
    draw a session sends only the points that are new (chart_data), which the browser appends
    with Plotly.extendTraces. A hidden tab or a chart out of view draws nothing until shown.
    `feed`: the chart's URL in the live feed (app/feed.py), which it then polls by itself.
    """
    url = _plotly_js_url()
    if url is None:
        st.plotly_chart(fig, key=key, config=config)
        return
    cfg = dict(config or {}, responsive=True)
    sent = st.session_state.setdefault(SENT, {})
    data = chart_data(fig, key, cfg, url, sent)
    if feed:     # a copy: chart_data's result is reused as is for the same figure
        data = dict(data, feed={"url": feed, "every": common.CHARTS_EVERY})
    _component(key=key, data=data, on_resync_change=partial(_forget, key))


def figure_of(element, session_state=None) -> dict | None:
    """The plotly figure inside an AppTest element of a live chart (either kind), for tests.
    An update that carries only new points is resolved through the session's SENT state
    (pass AppTest's session_state)."""
    proto = element.proto
    if hasattr(proto, "spec") and proto.spec:
        return json.loads(proto.spec)
    raw = getattr(proto, "json", "") or ""
    if raw:
        data = json.loads(raw)
        if isinstance(data, dict) and "figure" in data:
            return json.loads(data["figure"])
        if isinstance(data, dict) and "extend" in data and session_state is not None:
            from app.figures import figure_json
            sent = session_state[SENT] if SENT in session_state else {}
            for v in sent.values():
                if v["data"]["rev"] == data["rev"]:
                    return json.loads(figure_json(v["fig"]))
    return None
