"""Live charts that keep the user's zoom while new points arrive.

Why not `st.plotly_chart`: in Streamlit 1.67 its element id hashes the figure, so every data
update mounts a new chart and `layout.uirevision` never gets a chance to keep the zoom
(checked in Chromium: a drag-zoom is gone at the next update). This small
`st.components.v2` component keeps one plot div per key and calls `Plotly.react` on it,
which is exactly what `uirevision` was made for. A hidden tab (document.visibilityState)
draws nothing until it is shown again, then only the latest figure.

plotly.js is served by Streamlit's static file serving (`server.enableStaticServing`,
`app/static/`), copied there from the installed plotly package: no network, no CDN. When
that is not possible (read-only install, static serving off), `live_chart` falls back to
`st.plotly_chart`, which works but loses the zoom at each update.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import plotly
import plotly.graph_objects as go
import streamlit as st

STATIC = Path(__file__).resolve().parent / "static"
PLOTLY_JS = STATIC / "plotly.min.js"

_JS = """
export default function (component) {
  const { data, parentElement } = component;
  let host = parentElement.querySelector(".dynsdpb-plot");
  if (!host) {
    host = document.createElement("div");
    host.className = "dynsdpb-plot";
    host.style.width = "100%";
    parentElement.appendChild(host);
  }
  const render = (d) => {
    // A fragment rerun with nothing new sends the same figure again: nothing to redraw.
    if (host.__dynsdpbFigure === d.figure && host.data) return;
    host.__dynsdpbFigure = d.figure;
    const fig = JSON.parse(d.figure);
    // Plotly.react on the same div: layout.uirevision keeps zoom and legend clicks.
    window.Plotly.react(host, fig.data, fig.layout, d.config || {});
  };
  const draw = () => {
    // A tab nobody looks at (another tab in front, a minimised window) draws nothing: it
    // keeps the latest figure and draws it once, when it is shown again. Drawing in hidden
    // tabs took CPU from the training on the same machine.
    host.__dynsdpbLatest = data;
    if (document.visibilityState === "hidden") {
      if (!host.__dynsdpbWaiting) {
        host.__dynsdpbWaiting = true;
        const onShow = () => {
          if (document.visibilityState === "hidden") return;
          document.removeEventListener("visibilitychange", onShow);
          host.__dynsdpbWaiting = false;
          if (host.isConnected && host.__dynsdpbLatest) render(host.__dynsdpbLatest);
        };
        document.addEventListener("visibilitychange", onShow);
      }
      return;
    }
    render(data);
  };
  if (window.Plotly) {
    draw();
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
    window.__dynsdpbPlotly.then(draw);
  }
  return () => {
    host.__dynsdpbFigure = null;
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
    base = (st.get_option("server.baseUrlPath") or "").strip("/")
    return "/" + (base + "/" if base else "") + "app/static/plotly.min.js"


def live_chart(fig: go.Figure, key: str, config: dict | None = None) -> None:
    """Draw `fig` so that the user's zoom survives the next update of the same key.

    The figure's JSON is computed once per figure (figures.figure_json): a rerun with the same
    figure sends the same bytes, which Streamlit's message cache turns into a short reference
    to what the browser already holds, and the component skips Plotly.react for it.
    """
    from app.figures import figure_json
    url = _plotly_js_url()
    if url is None:
        st.plotly_chart(fig, key=key, config=config)
        return
    cfg = dict(config or {}, responsive=True)
    _component(key=key, data={"figure": figure_json(fig), "config": cfg, "src": url})


def figure_of(element) -> dict | None:
    """The plotly figure inside an AppTest element of a live chart (either kind), for tests."""
    import json
    proto = element.proto
    if hasattr(proto, "spec") and proto.spec:
        return json.loads(proto.spec)
    raw = getattr(proto, "json", "") or ""
    if raw:
        data = json.loads(raw)
        if isinstance(data, dict) and "figure" in data:
            return json.loads(data["figure"])
    return None
