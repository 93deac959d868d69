"""Where a distilling arm's gain over vanilla comes from, as a picture: the re-feed part
(refeed - vanilla), the distillation part (arm - refeed) and dynsdpb - dlb, each a paired
difference over seeds with its 95% interval, drawn from an experiment's summary.json."""
from __future__ import annotations

import json
import math
from pathlib import Path

import plotly.graph_objects as go

PARTS = [  # (label, method, key in the summary)
    ("re-feed part: refeed − vanilla", "refeed", "diff_vs_vanilla"),
    ("distillation part: dlb − refeed", "dlb", "distillation_part"),
    ("distillation part: dynsdpb − refeed", "dynsdpb", "distillation_part"),
    ("dynsdpb − dlb", "dynsdpb", "diff_vs_dlb"),
]


def load(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def rows(summary: dict) -> list[dict]:
    """The parts the summary has, in points of the primary metric (percent metrics x 100)."""
    m = summary.get("primary_metric", "test_accuracy")
    scale = 100.0 if m in ("test_accuracy", "test_macro_f1", "test_exact_match") else 1.0
    out = []
    for label, method, key in PARTS:
        d = summary.get("methods", {}).get(method, {}).get(m, {}).get(key)
        if not d or not math.isfinite(d.get("mean", float("nan"))):
            continue
        out.append({"part": label, "mean": scale * d["mean"], "low": scale * d["ci_low"],
                    "high": scale * d["ci_high"], "n": d.get("n", 0),
                    "mde": scale * d.get("mde", float("nan"))})
    return out


def figure(summary: dict, title: str) -> go.Figure:
    r = rows(summary)[::-1]   # top to bottom in PARTS order
    fig = go.Figure(go.Bar(
        x=[x["mean"] for x in r], y=[x["part"] for x in r], orientation="h",
        marker_color=["#9aa0a6" if x["low"] <= 0 <= x["high"] else "#1a73e8" for x in r],
        error_x=dict(type="data", symmetric=False, array=[x["high"] - x["mean"] for x in r],
                     arrayminus=[x["mean"] - x["low"] for x in r]),
        hovertemplate="%{y}: %{x:+.2f} points<extra></extra>"))
    fig.add_vline(x=0, line_color="#444", line_width=1)
    fig.update_layout(title=dict(text=title), height=120 + 48 * len(r),
                      margin=dict(l=10, r=10, t=60, b=40),
                      xaxis_title="paired difference, points of test accuracy (95% interval)")
    return fig
