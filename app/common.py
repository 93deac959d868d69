"""Shared pieces of the app's pages: the job manager, run lookups and the chart builders.

Everything here only *reads* what runs write (run folders under the runs directory) or asks
the engine's JobManager to act. The training thread never sees Streamlit: it writes files,
and the pages poll them (anchors.md §2, "Option 1").
"""
from __future__ import annotations

import io
import math
import os
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dynsdpb import config as C
from dynsdpb.errors import ConfigError
from dynsdpb.jobs import JobManager
from dynsdpb.store import ExperimentDir, RunDir, find_experiments, parse_records

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------
# The job manager: one per runs directory, shared by every session (st.cache_resource).


def runs_dir() -> Path:
    return Path(os.environ.get("DYNSDPB_RUNS_DIR") or "runs").expanduser().resolve()


def _release(jm: JobManager) -> None:
    jm.close()


@st.cache_resource(show_spinner=False, on_release=_release)
def _manager(path: str) -> JobManager:
    # Training runs in a child process, never in a thread of this server: page reruns share
    # the server's GIL, and watching Live must not slow training (issue #8).
    # DYNSDPB_ISOLATION=thread trains in-process (quicker start; for debugging).
    return JobManager(path, isolation=os.environ.get("DYNSDPB_ISOLATION") or "process")


def manager() -> JobManager:
    """The app's JobManager for the configured runs directory (env DYNSDPB_RUNS_DIR)."""
    return _manager(str(runs_dir()))


# ---------------------------------------------------------------------------------------
# Colours: one per method, the same on every chart and page.

METHOD_COLORS = {"vanilla": "#5f6b7a", "dlb": "#1f77b4", "dynsdpb": "#d62728"}
_EXTRA = ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
SEED_DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
RUN_PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
               "#17becf", "#bcbd22", "#5f6b7a"]

# Material icons render offline in every browser (Streamlit ships the font); emoji need a
# system font. For st.markdown / labels only; tables show the plain state word.
STATE_ICONS = {"queued": ":material/hourglass_empty:", "running": ":material/play_circle:",
               "finished": ":material/check_circle:", "stopped": ":material/stop_circle:",
               "failed": ":material/error:", "interrupted": ":material/warning:"}
STATE_COLORS = {"queued": "gray", "running": "blue", "finished": "green", "stopped": "orange",
                "failed": "red", "interrupted": "orange"}


def state_badge(state: str) -> str:
    """A coloured state word with its icon, for st.markdown."""
    return f":{STATE_COLORS.get(state, 'gray')}-badge[{STATE_ICONS.get(state, '')} {state}]"


def method_color(method: str) -> str:
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _EXTRA[sum(map(ord, method)) % len(_EXTRA)]


def rgba(hex_color: str, a: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{a})"


def method_chip(method: str) -> str:
    """A coloured method name for st.markdown (a small legend that matches the charts)."""
    return (f"<span style='color:{method_color(method)};font-weight:600'>&#9632; {method}"
            "</span>")


# ---------------------------------------------------------------------------------------
# Experiments and runs as the pages see them


@dataclass
class Arm:
    """One run folder plus what the charts need from it."""
    rd: RunDir
    exp_id: str
    exp_name: str
    cfg: dict
    status: dict
    records: list[dict]

    @property
    def id(self) -> str:
        return self.rd.id

    @property
    def method(self) -> str:
        return self.cfg.get("method", "?")

    @property
    def seed(self) -> int:
        return int(self.cfg.get("seed", 0))

    @property
    def state(self) -> str:
        return self.status.get("state", "?")

    @property
    def label(self) -> str:
        return f"{self.exp_name} / {self.id}"

    @property
    def key(self) -> str:
        """A stable id across pages: experiment folder / arm folder."""
        return f"{self.exp_id}/{self.id}"


def exp_meta(exp: Path) -> dict:
    return ExperimentDir(exp).meta()


def exp_name(exp: Path, meta: dict | None = None) -> str:
    return ExperimentDir(exp).name(meta)


def arm_dirs(exp: Path, meta: dict | None = None) -> list[RunDir]:
    return ExperimentDir(exp).arms(meta)


# The pages re-read metrics.jsonl about once a second per open tab, in the same process as
# the training thread. Parsing only the bytes appended since the last read keeps that cheap
# (and off the GIL the trainer needs). Same rules as the engine's read_metrics: a torn last
# line waits for its newline, a garbled line is skipped.
_RECORDS: dict[str, tuple[int, int, list[dict]]] = {}
_RECORDS_LOCK = threading.Lock()


def read_records(path: Path) -> list[dict]:
    key = str(path)
    try:
        st_ = os.stat(path)
    except FileNotFoundError:
        with _RECORDS_LOCK:
            _RECORDS.pop(key, None)
        return []
    with _RECORDS_LOCK:
        ino, offset, recs = _RECORDS.get(key, (st_.st_ino, 0, []))
        if ino != st_.st_ino or st_.st_size < offset:   # replaced or truncated: start over
            offset, recs = 0, []
        if st_.st_size > offset:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read(st_.st_size - offset)
            end = chunk.rfind(b"\n") + 1   # a torn last line waits for its newline
            recs = list(recs) + parse_records(chunk[:end].splitlines())
            offset += end
        _RECORDS[key] = (st_.st_ino, offset, recs)
        return recs


def load_arms(exp: Path, with_records: bool = True) -> list[Arm]:
    ed = ExperimentDir(exp)
    meta = ed.meta()
    name = ed.name(meta)
    out = []
    for rd in ed.arms(meta):
        if not rd.exists():
            continue
        out.append(Arm(rd, exp.name, name, rd.config(), rd.status(),
                       read_records(rd.metrics_path) if with_records else []))
    return out


def exp_state(states: list[str]) -> str:
    """One word for an experiment from its arms' states (the most urgent one wins)."""
    s = set(states)
    for k in ("running", "queued", "failed", "interrupted", "stopped", "finished"):
        if k in s:
            return k
    return "?"


def experiments() -> list[Path]:
    return find_experiments(runs_dir())


def find_arm(key: str) -> Arm | None:
    exp_id, _, arm = key.partition("/")
    exp = runs_dir() / exp_id
    rd = RunDir(exp / arm)
    if not rd.exists():
        return None
    return Arm(rd, exp_id, exp_name(exp), rd.config(), rd.status(),
               read_records(rd.metrics_path))


def all_arm_keys() -> list[tuple[str, str]]:
    """(key, label) of every run, newest experiment first."""
    out = []
    for exp in map(ExperimentDir, experiments()):
        meta = exp.meta()
        name = exp.name(meta)
        for rd in exp.arms(meta):
            if rd.exists():
                out.append((f"{exp.id}/{rd.id}", f"{name} / {rd.id} "
                             f"({rd.status().get('state', '?')})"))
    return out


def fmt_clock(t: float | None) -> str:
    if not t:
        return "-"
    return datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


def fmt_duration(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def primary_val_metric(arms: list[Arm]) -> str:
    for a in arms:
        for r in a.records:
            if r.get("val_accuracy") is not None:
                return "val_accuracy"
            if r.get("val_pearson") is not None:
                return "val_pearson"
    task = next((a.cfg.get("task") for a in arms), "auto")
    return "val_pearson" if task == "regression" else "val_accuracy"


def samples_per_s(arm: Arm, window: int = 10) -> float | None:
    """Training throughput of an arm over its last `window` steps (one step's own
    samples_per_s is noisy): samples seen over training wall time, evaluation excluded."""
    recs = [r for r in arm.records[-(window + 1):]
            if r.get("samples_seen") is not None and r.get("wall_time") is not None]
    if len(recs) >= 2:
        ds = recs[-1]["samples_seen"] - recs[0]["samples_seen"]
        dt = recs[-1]["wall_time"] - recs[0]["wall_time"]
        if dt > 0:
            return ds / dt
    return arm.records[-1].get("samples_per_s") if arm.records else None


def progress_info(arms: list[Arm], now: float | None = None) -> dict:
    """Steps done/total, a rate from the records' write times, ETA and samples/s."""
    now = now or time.time()
    total = sum(int(a.status.get("steps") or a.cfg.get("steps") or 0) for a in arms)
    done = sum(int(a.status.get("step") or 0) for a in arms)
    # Steps per second over all arms, from the write times of the recent records (recent
    # only: a resumed run has a gap, and evaluations slow some steps down).
    times = sorted(r["time"] for a in arms for r in a.records[-30:] if r.get("time"))
    times = times[-30 * max(1, len(arms)):]
    rate = None
    if len(times) >= 2 and times[-1] > times[0]:
        rate = (len(times) - 1) / (times[-1] - times[0])
    active = any(a.state in ("running", "queued") for a in arms)
    eta = (total - done) / rate if (rate and active) else None
    sps = [v for v in (samples_per_s(a) for a in arms if a.state == "running") if v]
    latest = None
    for a in arms:
        for r in a.records[-1:]:
            if r.get("time") and (latest is None or r["time"] > latest[1]["time"]):
                latest = (a, r)
    return {"total": total, "done": done, "rate": rate, "eta": eta,
            "samples_per_s": (sum(sps) / len(sps)) if sps else None, "latest": latest,
            "active": active}


# ---------------------------------------------------------------------------------------
# Charts. Every figure: x = step (or epoch / samples seen), one fixed colour per method,
# one dash style per seed, layout.uirevision fixed so zoom survives live updates.

X_LABELS = {"step": "step", "epoch": "epoch", "samples_seen": "samples seen (forward passes)"}
MAX_POINTS = 1500


def _thin(recs: list[dict]) -> list[dict]:
    """Keep at most MAX_POINTS records (evenly spaced, always the last one)."""
    if len(recs) <= MAX_POINTS:
        return recs
    k = math.ceil(len(recs) / MAX_POINTS)
    out = recs[::k]
    if out[-1] is not recs[-1]:
        out.append(recs[-1])
    return out


def _series(recs: list[dict], key: str, x: str) -> tuple[list, list]:
    xs, ys = [], []
    for r in recs:
        v = r.get(key)
        if v is None or r.get(x) is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            continue
        xs.append(r[x])
        ys.append(v)
    return xs, ys


def _style(arm: Arm, color_by: str, idx: int) -> tuple[str, str]:
    if color_by == "run":
        return RUN_PALETTE[idx % len(RUN_PALETTE)], "solid"
    return method_color(arm.method), SEED_DASHES[arm.seed % len(SEED_DASHES)]


def _name(arm: Arm, multi_exp: bool) -> str:
    return f"{arm.exp_name}: {arm.id}" if multi_exp else arm.id


UNIT_RANGE = ("val_accuracy", "val_macro_f1", "agreement")


def _base_layout(fig: go.Figure, uirev: str, x: str, height: int = 340) -> go.Figure:
    fig.update_layout(
        uirevision=uirev, height=height, margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0),
        hovermode="x unified", template="plotly_white", autosize=True,
        font=dict(family='"Source Sans", "Source Sans Pro", sans-serif'))
    fig.update_xaxes(title_text=X_LABELS.get(x, x), title_standoff=4)
    return fig


def _multi_exp(arms: list[Arm]) -> bool:
    return len({a.exp_id for a in arms}) > 1


def fig_alpha_tau(arms: list[Arm], x: str = "step", uirev: str = "alpha_tau",
                  color_by: str = "method") -> go.Figure:
    """alpha and tau per step: mean line with the min-max band over the carried samples."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("alpha (KD weight)", "tau (temperature)"),
                        horizontal_spacing=0.08)
    multi = _multi_exp(arms)
    for i, a in enumerate(arms):
        recs = _thin(a.records)
        color, dash = _style(a, color_by, i)
        name = _name(a, multi)
        for col, key in ((1, "alpha"), (2, "tau")):
            xs, ys = _series(recs, key, x)
            if not xs:
                continue
            xl, lo = _series(recs, f"{key}_lo", x)
            xh, hi = _series(recs, f"{key}_hi", x)
            if xl and xh and len(xl) == len(xh):
                fig.add_trace(go.Scatter(x=xh, y=hi, mode="lines", line=dict(width=0, color=color),
                                         legendgroup=name, showlegend=False, hoverinfo="skip",
                                         name=f"{name} {key} max"), row=1, col=col)
                fig.add_trace(go.Scatter(x=xl, y=lo, mode="lines", line=dict(width=0, color=color),
                                         fill="tonexty", fillcolor=rgba(color, 0.18),
                                         legendgroup=name, showlegend=False, hoverinfo="skip",
                                         name=f"{name} {key} min"), row=1, col=col)
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers" if len(xs) < 40 else "lines",
                                     marker=dict(size=4),
                                     line=dict(color=color, dash=dash, width=2),
                                     name=name, legendgroup=name, showlegend=(col == 1),
                                     hovertemplate=f"{key} %{{y:.4g}}"), row=1, col=col)
    if not fig.data:
        fig.add_annotation(text="no distilling arm has logged alpha/tau yet (vanilla has none)",
                           showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return _base_layout(fig, uirev, x)


def _panel_traces(fig: go.Figure, arms: list[Arm], keys: tuple[str, ...], x: str,
                  color_by: str, markers_always: tuple[str, ...] = ()) -> None:
    """One trace per arm and key, key k in column k+1; one legend entry per arm."""
    multi = _multi_exp(arms)
    for i, a in enumerate(arms):
        recs = _thin(a.records)
        color, dash = _style(a, color_by, i)
        name = _name(a, multi)
        shown = False
        for col, key in enumerate(keys, start=1):
            xs, ys = _series(recs, key, x)
            if not xs:
                continue
            mode = "lines+markers" if (key in markers_always or len(xs) < 40) else "lines"
            fig.add_trace(go.Scatter(x=xs, y=ys, mode=mode, marker=dict(size=5),
                                     line=dict(color=color, dash=dash, width=2), name=name,
                                     legendgroup=name, showlegend=not shown,
                                     hovertemplate=f"{key} %{{y:.4g}}"), row=1, col=col)
            shown = True


def fig_drift(arms: list[Arm], x: str = "step", uirev: str = "drift",
              color_by: str = "method") -> go.Figure:
    """logit drift and agreement on the carried half; probe drift at evaluations, every arm."""
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.07,
                        subplot_titles=("logit drift, carried half (KL)",
                                        "agreement, carried half",
                                        "probe drift at evaluations (KL)"))
    _panel_traces(fig, arms, ("logit_drift", "agreement", "probe_drift"), x, color_by,
                  markers_always=("probe_drift",))
    fig.update_yaxes(range=[-0.02, 1.02], row=1, col=2)
    have = {t.xaxis or "x" for t in fig.data}
    for col, axis, what in ((1, "x", "distilling arms log it from step 2"),
                            (2, "x2", "distilling arms log it from step 2"),
                            (3, "x3", "first point at the first evaluation")):
        if axis not in have:
            # plotly.js does not draw an axis without traces, and an annotation tied to a
            # missing axis lands in the first panel's data coordinates (stretching its range):
            # place it in paper coordinates, in the middle of the empty panel.
            lo, hi = fig.layout[axis.replace("x", "xaxis")].domain
            fig.add_annotation(text=f"no values yet:<br>{what}", showarrow=False,
                               xref="paper", yref="paper", x=(lo + hi) / 2, y=0.5,
                               font=dict(color="#888"))
    return _base_layout(fig, uirev, x)


def fig_loss(arms: list[Arm], x: str = "step", uirev: str = "loss",
             color_by: str = "method") -> go.Figure:
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.07,
                        subplot_titles=("CE (hard labels)", "KD term (alpha·tau²·KL)",
                                        "total loss"))
    _panel_traces(fig, arms, ("ce", "kd", "loss"), x, color_by)
    return _base_layout(fig, uirev, x)


def fig_metric(arms: list[Arm], key: str, x: str = "step", uirev: str = "metric",
               color_by: str = "method", title: str | None = None) -> go.Figure:
    """One metric against x for every arm (eval metrics have points at eval steps only)."""
    fig = go.Figure()
    multi = _multi_exp(arms)
    for i, a in enumerate(arms):
        recs = _thin(a.records)
        xs, ys = _series(recs, key, x)
        if not xs:
            continue
        color, dash = _style(a, color_by, i)
        eval_only = key.startswith("val_") or key == "probe_drift"
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers" if (eval_only or len(xs) < 40)
                                 else "lines", marker=dict(size=6),
                                 line=dict(color=color, dash=dash, width=2),
                                 name=_name(a, multi), hovertemplate=f"{key} %{{y:.4g}}"))
    fig.update_layout(title=dict(text=title or key, x=0, font=dict(size=14)))
    fig.update_yaxes(title_text=key)
    if key in UNIT_RANGE:
        fig.update_yaxes(range=[-0.02, 1.02])
    if not fig.data:
        when = (" (first point at the first evaluation)" if key.startswith("val_")
                or key == "probe_drift" else "")
        fig.add_annotation(text=f"no {key} values yet{when}", showarrow=False, xref="paper",
                           yref="paper", x=0.5, y=0.5, font=dict(color="#888"))
    return _base_layout(fig, uirev, x)


_FIGS: OrderedDict = OrderedDict()
_FIGS_LOCK = threading.Lock()


def figure(fn, arms: list[Arm], *args, **kw) -> go.Figure:
    """fn(arms, *args, **kw), reused while no arm has a new record.

    Saves rebuilding four figures every second for every open tab, and while nothing new
    arrives the chart's spec (and so Streamlit's element) stays the same, so a zoom survives.
    Callers must not modify the returned figure.
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
    with _FIGS_LOCK:
        _FIGS[key] = fig
        while len(_FIGS) > 64:
            _FIGS.popitem(last=False)
    return fig


PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2},
                 "modeBarButtonsToRemove": ["select2d", "lasso2d"]}


def chart_config(filename: str) -> dict:
    cfg = dict(PLOTLY_CONFIG)
    cfg["toImageButtonOptions"] = dict(PLOTLY_CONFIG["toImageButtonOptions"], filename=filename)
    return cfg


def figure_html(fig: go.Figure) -> str:
    """A standalone HTML file (plotly.js embedded: works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


# ---------------------------------------------------------------------------------------
# Files for download


def zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder.parent))
    return buf.getvalue()


def records_frame(arms: list[Arm]):
    import pandas as pd
    rows = []
    for a in arms:
        for r in a.records:
            rows.append({"experiment": a.exp_id, "run": a.id, **r})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------
# Handing a config to the Setup page (relaunch, YAML load)

FORM_PREFIX = "f_"
SPECIAL_FIELDS = ("model", "dataset", "text_column", "text_pair_column", "label_column",
                  "method", "seed", "name")


def field_widget_value(name: str, value):
    """What a field's widget holds for a config value (text for numbers, raw for the rest)."""
    f = C.FIELDS[name]
    if f.metadata.get("choices") or f.type in (bool, "bool"):
        return value
    return "" if value is None else str(value)


def prefill_setup(cfg: dict, methods: list[str] | None = None, seeds: list[int] | None = None,
                  name: str = "") -> list[str]:
    """Put a config (a dict as saved, or typed in a YAML) into the Setup page's widgets.

    Call it before the widgets are drawn (a callback, or another page). Values that cannot
    go into a widget (unknown fields, a choice that does not exist) are reported back; other
    invalid values are loaded as they are, so the form shows them with what to change.
    """
    ss = st.session_state
    notes: list[str] = []
    for k, v in cfg.items():
        if k not in C.FIELDS:
            notes.append(f"Ignored unknown field {k!r}.")
            continue
        if k in SPECIAL_FIELDS:
            continue
        f = C.FIELDS[k]
        choices = f.metadata.get("choices")
        if choices and v not in choices:
            notes.append(f"{k}: {v!r} is not one of {', '.join(choices)}; kept the default.")
            continue
        if f.type in (bool, "bool"):
            try:
                v = C.from_dict({k: v}, check=False).to_dict()[k]
            except ConfigError:
                notes.append(f"{k}: {v!r} is not true/false; kept the default.")
                continue
        ss[FORM_PREFIX + k] = field_widget_value(k, v)
    from dynsdpb.data import BUILTIN_DATASETS
    from dynsdpb.models import BUILTIN_MODELS
    if "model" in cfg:
        model = str(cfg.get("model") or "")
        if model in BUILTIN_MODELS:
            ss["w_model_choice"] = model
        else:
            ss["w_model_choice"] = OTHER_MODEL
            ss["w_model_other"] = model
    if "dataset" in cfg:
        ds = str(cfg.get("dataset") or "")
        if ds in BUILTIN_DATASETS:
            ss["w_data_source"] = DATA_BUILTIN
            ss["w_data_builtin"] = ds
        else:
            ss["w_data_source"] = DATA_PATH
            ss["w_data_path"] = ds
    for k in ("text_column", "text_pair_column", "label_column"):
        if k in cfg:
            ss["w_" + k] = str(cfg[k] or "")
    if methods:
        ss["w_methods"] = [m for m in methods if m in C.METHODS]
    elif cfg.get("method") in C.METHODS:
        cur = [m for m in (ss.get("w_methods") or ["vanilla"]) if m in C.METHODS]
        if cfg["method"] not in cur:
            cur.append(cfg["method"])
        ss["w_methods"] = cur
    if seeds:
        ss["w_seeds"] = ",".join(str(s) for s in seeds)
    elif "seed" in cfg:
        ss["w_seeds"] = str(cfg["seed"])
    if name:
        ss["w_exp_name"] = name
    return notes


OTHER_MODEL = "other: local folder or hub id"
DATA_BUILTIN = "built-in"
DATA_UPLOAD = "upload a file"
DATA_PATH = "local file path or hub id"
