"""What every page shares: the job manager of the runs directory, and the colours and badges
of methods and states (the same on every chart and page).

Everything in app/ only *reads* what runs write (run folders under the runs directory) or asks
the engine's JobManager to act. The training thread never sees Streamlit: it writes files,
and the pages poll them (anchors.md §2, "Option 1").
"""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from dynsdpb.jobs.queue import JobManager

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


def check_runs_dir() -> str | None:
    """The runs directory checked (and made) by the store's one rule for a folder the
    workbench writes into: None when usable, else the one line to show instead of any page."""
    from dynsdpb.errors import ConfigError
    from dynsdpb.store import make_out
    try:
        make_out(runs_dir(), "runs directory", reuse=True)
    except ConfigError as e:
        return f"{e} (start the app with --runs-dir DIR, or set DYNSDPB_RUNS_DIR)"
    return None


# ---------------------------------------------------------------------------------------
# Colours: one per method, the same on every chart and page.

METHOD_COLORS = {"vanilla": "#5f6b7a", "refeed": "#8c564b", "dlb": "#1f77b4",
                 "dynsdpb": "#d62728"}
_EXTRA = ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]

# Material icons render offline in every browser (Streamlit ships the font); emoji need a
# system font. For st.markdown / labels only; tables show the plain state word.
STATE_ICONS = {"queued": ":material/hourglass_empty:", "running": ":material/play_circle:",
               "finished": ":material/check_circle:", "stopped": ":material/stop_circle:",
               "failed": ":material/error:", "interrupted": ":material/warning:"}
STATE_COLORS = {"queued": "gray", "running": "blue", "finished": "green", "stopped": "orange",
                "failed": "red", "interrupted": "orange"}


# How often a watching page polls while something runs (seconds). Every poll of every visible
# tab costs CPU that the training on the same machine then lacks: one visible Live tab took
# 0.16 cores (browser + server) at 1 s / 2.5 s and 0.09 at 2 s / 5 s (measured side by side,
# headless Chromium, a MiniLM run; docs/results.md "Speed: does watching Live slow
# training?"). Hidden tabs do not poll at all (app/visibility.py).
STATUS_EVERY = 2.0     # state, progress, Stop, the runs table, the queue
CHARTS_EVERY = 5.0     # the live charts


def server_url(path: str, **query: str) -> str:
    """A path of this server as the browser asks for it: under server.baseUrlPath, if set
    (plotly.js under static serving, the live feed's routes)."""
    from urllib.parse import urlencode
    base = (st.get_option("server.baseUrlPath") or "").strip("/")
    return ("/" + base if base else "") + path + ("?" + urlencode(query) if query else "")


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
