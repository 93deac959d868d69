"""The chart builders: plotly figures built as plain dicts (one colour per method, one dash
per seed, decimated traces, axis titles with units), the shared figure cache, the chart
config and standalone HTML export.
"""
from __future__ import annotations

import math
import textwrap
import threading
from collections import OrderedDict

import plotly.graph_objects as go

from app.common import method_color, rgba
from app.views import ArmView


# ---------------------------------------------------------------------------------------
# Charts. Every figure: x = step (or epoch / samples seen), one fixed colour per method,
# one dash style per seed, layout.uirevision fixed so zoom survives live updates, a y-axis
# title with its unit (records.axis_title), shares in % (records.display_value).
#
# The figures are built as plain dicts and wrapped with go.Figure(..., _validate=False):
# plotly's validation and its template deep copy cost ~60 ms per figure, every update, in
# the server process (measured: 230 ms for the four Live charts of 2 arms x 300 steps).

X_LABELS = {"step": "step", "epoch": "epoch", "samples_seen": "samples seen (forward passes)"}
MAX_POINTS = 300   # per trace: a class cannot see more on a 1000-px chart, the browser can
SEED_DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
RUN_PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
               "#17becf", "#bcbd22", "#5f6b7a"]


def decimate(xs: list, ys: list, max_points: int = MAX_POINTS) -> tuple[list, list]:
    """At most ~max_points points that keep the curve's shape: the lowest and the highest
    point of each bucket (spikes stay), the first and always the last point."""
    n = len(xs)
    if n <= max_points:
        return xs, ys
    buckets = max(1, (max_points - 2) // 2)
    size = (n - 2) / buckets
    keep = [0]
    for b in range(buckets):
        lo, hi = 1 + int(b * size), 1 + int((b + 1) * size)
        if hi <= lo:
            continue
        seg = range(lo, min(hi, n - 1))
        i_min = min(seg, key=ys.__getitem__)
        i_max = max(seg, key=ys.__getitem__)
        keep.extend(sorted({i_min, i_max}))
    keep.append(n - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def _series(recs: list[dict], key: str, x: str) -> tuple[list, list]:
    """(x, y) of one record key, finite values only, shares in %, decimated."""
    from dynsdpb.records import display_value
    xs, ys = [], []
    for r in recs:
        v = r.get(key)
        if v is None or r.get(x) is None or isinstance(v, bool):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            continue
        xs.append(r[x])
        ys.append(display_value(key, v))
    return decimate(xs, ys)


def _style(arm: ArmView, color_by: str, idx: int) -> tuple[str, str]:
    if color_by == "run":
        return RUN_PALETTE[idx % len(RUN_PALETTE)], "solid"
    return method_color(arm.method), SEED_DASHES[arm.seed % len(SEED_DASHES)]


def _name(arm: ArmView, multi_exp: bool) -> str:
    return f"{arm.exp_name}: {arm.id}" if multi_exp else arm.id


def _multi_exp(arms: list[ArmView]) -> bool:
    return len({a.exp_id for a in arms}) > 1


def _y_axis(key: str) -> dict:
    """A y axis for one record key: title with unit, plain or scientific ticks (never SI
    prefixes: '400µ' reads as micro-something to a class), 0-100 for shares."""
    from dynsdpb.records import KEYS, axis_title
    ax = {"title": {"text": axis_title(key), "standoff": 4}, "exponentformat": "e",
          "zeroline": False}
    if KEYS.get(key) is not None and KEYS[key].percent:
        ax["range"] = [-2, 102]
    return ax


# plotly_white, once: assigning the template by name deep-copies it on every figure.
_TEMPLATE: dict | None = None


def _template() -> dict:
    global _TEMPLATE
    if _TEMPLATE is None:
        import plotly.io as pio
        _TEMPLATE = pio.templates["plotly_white"].to_plotly_json()
    return _TEMPLATE


def _layout(uirev: str, x: str, keys: tuple[str, ...], titles: tuple[str, ...] = (),
            height: int = 340) -> dict:
    """Layout of 1..3 side-by-side panels (what make_subplots builds, without its cost)."""
    n = len(keys)
    gap = {1: 0.0, 2: 0.08, 3: 0.07}[n]
    w = (1 - gap * (n - 1)) / n
    lay: dict = {
        "template": _template(), "uirevision": uirev, "height": height, "autosize": True,
        "margin": {"l": 10, "r": 10, "t": 40, "b": 10}, "hovermode": "x unified",
        "legend": {"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0},
        "font": {"family": '"Source Sans", "Source Sans Pro", sans-serif'}, "annotations": [],
    }
    for i, key in enumerate(keys):
        sfx = "" if i == 0 else str(i + 1)
        lo = i * (w + gap)
        lay["xaxis" + sfx] = {"domain": [lo, lo + w], "anchor": "y" + sfx,
                              "title": {"text": X_LABELS.get(x, x), "standoff": 4}}
        lay["yaxis" + sfx] = dict(_y_axis(key), anchor="x" + sfx)
        if titles:
            lay["annotations"].append({"text": titles[i], "showarrow": False, "xref": "paper",
                                       "yref": "paper", "x": lo + w / 2, "y": 1.0,
                                       "xanchor": "center", "yanchor": "bottom",
                                       "font": {"size": 16}})
    return lay


def _trace(xs: list, ys: list, color: str, dash: str, name: str, key: str, col: int = 1,
           markers: bool = False, **kw) -> dict:
    sfx = "" if col == 1 else str(col)
    t = {"type": "scatter", "x": xs, "y": ys, "xaxis": "x" + sfx, "yaxis": "y" + sfx,
         "mode": "lines+markers" if (markers or len(xs) < 40) else "lines",
         "marker": {"size": 5}, "line": {"color": color, "dash": dash, "width": 2},
         "name": name, "legendgroup": name, "hovertemplate": f"{key} %{{y:.4g}}"}
    t.update(kw)
    return t


def _mark_coinciding(spec: dict) -> None:
    """Arms whose curves are identical would hide each other (e.g. dlb and dynsdpb with the
    same alpha): draw the later ones dotted with markers over a wide pale first one, and say
    so on the chart."""
    groups: dict = {}
    for t in spec["data"]:
        if t.get("fill") or t.get("hoverinfo") == "skip" or len(t["y"]) < 2:
            continue
        sig = (t["xaxis"], tuple(t["x"]),
               tuple(None if v is None else round(float(v), 9) for v in t["y"]))
        groups.setdefault(sig, []).append(t)
    said: list[str] = []
    for ts in groups.values():
        names = list(dict.fromkeys(t["name"] for t in ts))
        if len(names) < 2:
            continue
        first = ts[0]
        first["line"] = dict(first["line"], width=6)
        first["opacity"] = 0.45
        for t in ts[1:]:
            t["line"] = dict(t["line"], dash="dot", width=2)
            t["mode"] = "lines+markers"
        text = ", ".join(names[:-1]) + " and " + names[-1] + " coincide"
        if text not in said:
            said.append(text)
    if not said:
        return
    note = "; ".join(said) + " (drawn on top of each other)"
    title = spec["layout"].get("title")
    if title:
        # A one-metric chart has its title at the top left, where a note at the top right
        # runs into it in a half-width column: the note is its subtitle, a line under it.
        # A subtitle it already has stays; a long note is cut into lines that fit a
        # half-width column, and the top margin grows with them.
        had = (title.get("subtitle") or {}).get("text")
        lines = ([had] if had else []) + textwrap.wrap(note, 72)
        title["subtitle"] = {"text": "<br>".join(lines), "font": {"size": 12, "color": "#555"}}
        spec["layout"]["margin"] = dict(spec["layout"]["margin"], t=44 + 20 * len(lines))
        if len(lines) > 1:
            # plotly centres a title in the top margin: pinned to the top, the lines under it
            # stay above the plot
            title.update(y=1, yref="container", yanchor="top", pad={"t": 10})
        return
    spec["layout"]["annotations"].append({
        "text": note, "showarrow": False, "xref": "paper", "yref": "paper", "x": 1.0,
        "y": 1.12, "xanchor": "right", "font": {"size": 12, "color": "#555"}})


def _note(spec: dict, text: str, col: int = 1, n: int = 1) -> None:
    """A grey note in the middle of panel `col` (paper coordinates: plotly.js drops an axis
    without traces, and a note tied to it would land in the first panel, stretching it)."""
    sfx = "" if col == 1 else str(col)
    lo, hi = spec["layout"]["xaxis" + sfx]["domain"]
    spec["layout"]["annotations"].append({"text": text, "showarrow": False, "xref": "paper",
                                          "yref": "paper", "x": (lo + hi) / 2, "y": 0.5,
                                          "font": {"color": "#888"}})


def _one_point_ranges(spec: dict) -> None:
    """Axes whose data hold a single value get a range around it. plotly.js spans one value
    v with v-1..v+1: one drift point of 0.0065 sat at "0" on a -1..1 axis, and one step 10
    on an axis of 9..11. y: v ± half of it (the point in the middle, ticks near v); x: from 0
    (or v) to a little past v, so a first point reads as "early in the run"."""
    vals: dict[str, set] = {}
    for t in spec["data"]:
        if t.get("hoverinfo") == "skip":
            continue
        for ax, key in ((t.get("xaxis", "x"), "x"), (t.get("yaxis", "y"), "y")):
            vals.setdefault(ax, set()).update(
                v for v in t.get(key) or [] if isinstance(v, (int, float))
                and not isinstance(v, bool) and math.isfinite(v))
    lay = spec["layout"]
    for ax, vs in vals.items():
        if len(vs) != 1:
            continue
        name = ("xaxis" if ax[0] == "x" else "yaxis") + ax[1:]
        a = lay.get(name)
        if a is None or "range" in a:
            continue
        (v,) = vs
        if ax[0] == "y":
            d = abs(v) / 2 if v else 1.0
            lay[name] = dict(a, range=[v - d, v + d])
        else:
            pad = abs(v) / 10 if v else 1.0
            lay[name] = dict(a, range=[min(v, 0) - pad, max(v, 0) + pad])


def _autorange_the_rest(spec: dict) -> None:
    """Every axis without a range says autorange: true. A live chart is redrawn with
    Plotly.react under one uirevision, which keeps an axis's autorange off once a figure gave
    it a range: after a one-point figure (_one_point_ranges) the next ones, without a range,
    were drawn on plotly's empty -1..6 x -1..4 axes. An explicit value is applied, and a
    user's zoom still survives (it changes the axis in the browser, which uirevision keeps)."""
    for name, a in spec["layout"].items():
        if (name.startswith(("xaxis", "yaxis")) and isinstance(a, dict)
                and "range" not in a and "autorange" not in a):
            a["autorange"] = True


def _finish(spec: dict) -> go.Figure:
    _mark_coinciding(spec)
    _one_point_ranges(spec)
    _autorange_the_rest(spec)
    return go.Figure(spec, _validate=False)


def fig_alpha_tau(arms: list[ArmView], x: str = "step", uirev: str = "alpha_tau",
                  color_by: str = "method") -> go.Figure:
    """alpha and tau per step: mean line with the lowest-highest band over the carried half."""
    spec = {"data": [], "layout": _layout(uirev, x, ("alpha", "tau"),
                                          ("alpha (KD weight)", "tau (temperature)"))}
    multi = _multi_exp(arms)
    for i, a in enumerate(arms):
        color, dash = _style(a, color_by, i)
        name = _name(a, multi)
        for col, key in ((1, "alpha"), (2, "tau")):
            xs, ys = _series(a.records, key, x)
            if not xs:
                continue
            xl, lo = _series(a.records, f"{key}_lo", x)
            xh, hi = _series(a.records, f"{key}_hi", x)
            if xl and xh:
                spec["data"].append(_trace(xh, hi, color, dash, f"{name} {key} highest", key, col,
                                           line={"width": 0, "color": color},
                                           showlegend=False, hoverinfo="skip",
                                           mode="lines"))
                spec["data"].append(_trace(xl, lo, color, dash, f"{name} {key} lowest", key, col,
                                           line={"width": 0, "color": color}, fill="tonexty",
                                           fillcolor=rgba(color, 0.18), showlegend=False,
                                           hoverinfo="skip", mode="lines"))
            spec["data"].append(_trace(xs, ys, color, dash, name, key, col, marker={"size": 4},
                                       showlegend=(col == 1)))
    if not spec["data"]:
        _note(spec, "no distilling arm has logged alpha/tau yet (vanilla has none)")
        spec["layout"]["annotations"][-1]["x"] = 0.5
    return _finish(spec)


def _panel_traces(spec: dict, arms: list[ArmView], keys: tuple[str, ...], x: str,
                  color_by: str, markers_always: tuple[str, ...] = ()) -> None:
    """One trace per arm and key, key k in column k+1; one legend entry per arm."""
    multi = _multi_exp(arms)
    for i, a in enumerate(arms):
        color, dash = _style(a, color_by, i)
        name = _name(a, multi)
        shown = False
        for col, key in enumerate(keys, start=1):
            xs, ys = _series(a.records, key, x)
            if not xs:
                continue
            spec["data"].append(_trace(xs, ys, color, dash, name, key, col,
                                       markers=key in markers_always, showlegend=not shown))
            shown = True


def fig_drift(arms: list[ArmView], x: str = "step", uirev: str = "drift",
              color_by: str = "method") -> go.Figure:
    """logit drift and agreement on the carried half; probe drift at evaluations, every arm."""
    keys = ("logit_drift", "agreement", "probe_drift")
    spec = {"data": [], "layout": _layout(uirev, x, keys, (
        "logit drift, carried half (KL)", "agreement, carried half", "probe drift at "
        "evaluations (KL)"))}
    _panel_traces(spec, arms, keys, x, color_by, markers_always=("probe_drift",))
    have = {t["xaxis"] for t in spec["data"]}
    for col, axis, what in ((1, "x", "distilling arms log it from step 2"),
                            (2, "x2", "distilling arms log it from step 2"),
                            (3, "x3", "first point at the first evaluation")):
        if axis not in have:
            _note(spec, f"no values yet:<br>{what}", col)
    return _finish(spec)


def fig_drift_split(arms: list[ArmView], x: str = "step", uirev: str = "drift-split",
                    color_by: str = "method") -> go.Figure:
    """logit_drift split at evaluations: the update alone (eval mode) and dropout alone."""
    keys = ("logit_drift", "update_drift", "dropout_drift")
    spec = {"data": [], "layout": _layout(uirev, x, keys, (
        # short: a third of the page wide; the chart's help says how each is measured
        "train-mode drift (KL)", "update part, no dropout (KL)", "dropout part (KL)"))}
    _panel_traces(spec, arms, keys, x, color_by,
                  markers_always=("update_drift", "dropout_drift"))
    have = {t["xaxis"] for t in spec["data"]}
    for col, axis in ((2, "x2"), (3, "x3")):
        if axis not in have:
            _note(spec, "no values yet:<br>distilling arms, at evaluations", col)
    return _finish(spec)


def fig_loss(arms: list[ArmView], x: str = "step", uirev: str = "loss",
             color_by: str = "method") -> go.Figure:
    keys = ("ce", "kd", "loss")
    spec = {"data": [], "layout": _layout(uirev, x, keys, (
        "CE (hard labels)", "KD term (alpha·tau²·KL)", "total loss"))}
    _panel_traces(spec, arms, keys, x, color_by)
    return _finish(spec)


def title_of(key: str) -> str:
    """'Validation accuracy (%)': a record key in words with its unit, for a chart title."""
    from dynsdpb.records import axis_title
    t = axis_title(key)
    return t[:1].upper() + t[1:]


def fig_metric(arms: list[ArmView], key: str, x: str = "step", uirev: str = "metric",
               color_by: str = "method", title: str | None = None) -> go.Figure:
    """One metric against x for every arm (eval metrics have points at eval steps only)."""
    spec = {"data": [], "layout": _layout(uirev, x, (key,))}
    spec["layout"]["title"] = {"text": title or title_of(key), "x": 0, "font": {"size": 14}}
    multi = _multi_exp(arms)
    eval_only = key.startswith("val_") or key == "probe_drift"
    for i, a in enumerate(arms):
        xs, ys = _series(a.records, key, x)
        if not xs:
            continue
        color, dash = _style(a, color_by, i)
        spec["data"].append(_trace(xs, ys, color, dash, _name(a, multi), key,
                                   markers=eval_only, marker={"size": 6}))
    if not spec["data"]:
        when = " (first point at the first evaluation)" if eval_only else ""
        _note(spec, f"no {key} values yet{when}")
    return _finish(spec)


_FIGS: OrderedDict = OrderedDict()
_FIGS_LOCK = threading.Lock()


def figure(fn, arms: list[ArmView], *args, **kw) -> go.Figure:
    """fn(arms, *args, **kw), reused while no arm has a new record.

    Shared by every session: with N tabs open on one run, each new record costs one build,
    not N. Callers must not modify the returned figure.

    This memo does not keep zoom: that is app/livechart.py's job alone (one plot div per key,
    Plotly.react, layout.uirevision). The memo saves the build and makes an unchanged poll
    send the same bytes, which the component then skips.
    """
    key = (fn.__name__, args, tuple(sorted(kw.items())),
           tuple((a.key, a.exp_name, a.method, a.seed, len(a.records),
                  a.records[-1].get("time") if a.records else None) for a in arms))
    with _FIGS_LOCK:
        fig = _FIGS.get(key)
        if fig is not None:
            _FIGS.move_to_end(key)
            return fig
    fig = fn(arms, *args, **kw)
    fig._records_behind = sum(len(a.records) for a in arms)
    with _FIGS_LOCK:
        _FIGS[key] = fig
        while len(_FIGS) > 64:
            _FIGS.popitem(last=False)
    return fig


def records_behind(fig: go.Figure) -> int:
    """How many step records a figure from `figure` was built from (0 for another figure):
    a live chart never goes back to a figure built from fewer records of the same run."""
    return getattr(fig, "_records_behind", 0)


def figure_json(fig: go.Figure) -> str:
    """The figure as JSON, computed once per figure (figures from `figure` are reused)."""
    cached = getattr(fig, "_dynsdpb_json", None)
    if cached is None:
        import plotly.io as pio
        cached = pio.to_json(fig, validate=False)
        fig._dynsdpb_json = cached
    return cached


PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2},
                 "modeBarButtonsToRemove": ["select2d", "lasso2d"]}


def chart_config(filename: str) -> dict:
    cfg = dict(PLOTLY_CONFIG)
    # a nested experiment's key has slashes ('sweep/runs/key'): one file name, not a path
    cfg["toImageButtonOptions"] = dict(PLOTLY_CONFIG["toImageButtonOptions"],
                                       filename=filename.replace("/", "-"))
    return cfg


def figure_html(fig: go.Figure) -> str:
    """A standalone HTML file (plotly.js embedded: works offline)."""
    return figures_html([(None, fig)])


def figures_html(figs: list[tuple[str | None, go.Figure]], title: str = "DynSDPB") -> str:
    """Several charts in one standalone HTML file: plotly.js (4.8 MB, most of the file) is
    embedded once, not once per chart, and every trace is already decimated."""
    import html
    import plotly.io as pio
    from plotly.offline import get_plotlyjs
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             "</title><script>", get_plotlyjs(), "</script></head>"
             "<body style='font-family:sans-serif'>"]
    for i, (heading, fig) in enumerate(figs):
        if heading:
            parts.append(f"<h3>{html.escape(heading)}</h3>")
        parts.append(pio.to_html(fig, include_plotlyjs=False, full_html=False,
                                 div_id=f"chart{i}", validate=False,
                                 config={"displaylogo": False}))
    parts.append("</body></html>")
    return "".join(parts)


# -- a self-training loop, per round (dynsdpb/selftrain/store.py `summarize`) -----------------

def _round_mean(row: dict, key: str) -> float | None:
    v = (row.get(key) or {}).get("mean")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _round_layout(title: str, subtitle: str, ytitle: str) -> dict:
    # short titles, the rest in a subtitle: at half width a 95-character title was cut at both
    # ends; the title style of the fine-tuning curves beside them
    return {"title": {"text": title, "x": 0, "font": {"size": 14},
                      "subtitle": {"text": subtitle, "font": {"size": 12, "color": "#555"}}},
            "height": 320, "margin": {"t": 62, "l": 60, "r": 20, "b": 50},
            "xaxis": {"title": {"text": "round"}, "dtick": 1},
            "yaxis": {"title": {"text": ytitle}}, "annotations": []}


def _when_empty(spec: dict, what: str, xrange: list, yrange: list | None = None) -> None:
    """Empty axes alone read as "zero kept": a note, and axes of a few rounds."""
    if any(v is not None for t in spec["data"] for v in t["y"]):
        return
    spec["layout"]["annotations"].append({"text": what, "showarrow": False, "xref": "paper",
                                          "yref": "paper", "x": 0.5, "y": 0.5,
                                          "font": {"color": "#888"}})
    spec["layout"]["xaxis"]["range"] = xrange
    if yrange:
        spec["layout"]["yaxis"]["range"] = yrange


def fig_rounds_kept(summary: dict) -> go.Figure:
    """Kept traces per method and round (mean over seeds): the training data of each round."""
    spec = {"data": [], "layout": dict(_round_layout(
        "Kept traces per round", "training examples each round kept, per method",
        "kept traces"), barmode="group")}
    for method in summary.get("methods") or []:
        rs = [r for r in summary.get("rounds", []) if method in r["methods"]]
        spec["data"].append({"type": "bar", "name": method, "x": [r["round"] for r in rs],
                             "y": [_round_mean(r["methods"][method], "kept") for r in rs],
                             "marker": {"color": method_color(method)}})
    _when_empty(spec, "no round has finished yet", [0.5, 3.5], [0, 4])
    # not _finish: bars have no lines to mark, and a range around one round's x would cut
    # its bars in half
    _autorange_the_rest(spec)
    return go.Figure(spec, _validate=False)


def fig_rounds_accuracy(summary: dict, selfcorrect: bool = False) -> go.Figure:
    """Test exact match (%) per method and round, round 0 the base model: flexible (solid),
    strict (dashed) and, for self-correction, the first attempt (dotted). Methods that score
    the same in every round are marked as coinciding (one would hide the other)."""
    spec = {"data": [], "layout": _round_layout(
        "Test exact match (%) per round",
        "round 0: the base model; solid: flexible, dashed: strict"
        + ("; dotted: first attempt" if selfcorrect else ""), "test exact match (%)")}
    # a share: the same 0-100 axis as every % chart (a flat 33.3 % read as a wavy 32.5-34)
    spec["layout"]["yaxis"]["range"] = [-2, 102]
    base = summary.get("baseline") or {}
    keys = [("test_first_exact_match", "dot", " first attempt")] if selfcorrect else []
    keys += [("test_exact_match", "solid", " after correction" if selfcorrect else ""),
             ("test_strict_exact_match", "dash", " strict")]
    for method in summary.get("methods") or []:
        rs = [r for r in summary.get("rounds", []) if method in r["methods"]]
        for key, dash, suffix in keys:
            y0 = base.get(key)
            ys = [_round_mean(r["methods"][method], key) for r in rs]
            spec["data"].append({
                "type": "scatter", "mode": "lines+markers", "name": method + suffix,
                "x": ([0] if y0 is not None else []) + [r["round"] for r in rs],
                "y": [100 * v if v is not None else None
                      for v in ([y0] if y0 is not None else []) + ys],
                "line": {"color": method_color(method), "dash": dash},
                "xaxis": "x", "yaxis": "y"})
    _when_empty(spec, "no test results yet", [-0.5, 3.5])
    return _finish(spec)
