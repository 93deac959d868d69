"""The Self-training page's status block (the loop's state, where it is, one row per round and
arm) as data, drawn as Streamlit elements on each rerun or as one HTML block that updates
itself from the workbench's live feed (app/feed.py), as Live's status block does
(app/livestatus.py).

`loop_view` reads a loop folder (dynsdpb/selftrain) once for both renderings. Its "key" is
what the page draws around the block (the kept/accuracy charts, the round picker, the browser
of kept traces, Stop/Resume): the state, a failure and which round files exist. The page
reruns when the key changes; a step of a round's fine-tuning only updates the block's text.
"""
from __future__ import annotations

import html
from pathlib import Path

from app import livestatus, progress
from dynsdpb.selftrain.store import META
from dynsdpb.store import RunDir, read_json, read_metrics

ACTIVE = ("queued", "running")
# The files whose arrival changes what the page draws (round.json: a round is done;
# train.jsonl: generated; eval.jsonl: tested; experiment.json: a round's fine-tuning began).
KEY_FILES = ("round.json", "train.jsonl", "traces.jsonl", "eval.jsonl", "experiment.json")


def where_words(status: dict, meta: dict) -> str:
    """Where the loop is ("round 1/2: training (vanilla-s0)"), or how long it took."""
    state = status.get("state", "?")
    if state in ACTIVE:
        return (f"round {status.get('round')}/{status.get('rounds')}: {status.get('phase')}"
                + (f" ({status['arm']})" if status.get("arm") and state == "running" else ""))
    n = status.get("rounds", (meta.get("loop") or {}).get("rounds", "?"))
    where = f"{n} round{'' if n == 1 else 's'}"
    t0 = meta.get("created")
    if isinstance(t0, (int, float)) and status.get("updated"):
        where += f", {progress.fmt_took(status['updated'] - t0)}"   # as Live says it
    return where


def round_rows(path: Path, meta: dict, status: dict) -> list[dict]:
    """One row per round and arm: its phase, traces, kept, and why nothing was kept."""
    rounds = int(status.get("rounds") or (meta.get("loop") or {}).get("rounds") or 0)
    arms = [f"{m}-s{sd}" for m in meta.get("methods") or [] for sd in meta.get("seeds") or []]
    cur, phase = status.get("round"), status.get("phase")
    running = status.get("state") == "running"
    rows = []
    for r in range(1, rounds + 1):
        for arm in arms:
            d = path / f"round-{r:02d}" / arm
            info = read_json(d / "round.json", None)
            row = {"round": r, "arm": arm}
            if isinstance(info, dict):
                row.update(phase="done", traces=info.get("traces"), kept=info.get("kept"))
                row["note"] = info.get("note") or ("" if info.get("kept") else
                                                   "nothing kept: no right traces")
            else:
                kept = len(read_metrics(d / "train.jsonl")) if (d / "train.jsonl").is_file() \
                    else None
                traces = len(read_metrics(d / "traces.jsonl")) \
                    if (d / "traces.jsonl").is_file() else None
                arm_st = RunDir(d).raw_status() if d.is_dir() else {}
                if running and r == cur and phase == "generating" and status.get("arm") == arm:
                    ph = "generating"
                elif arm_st.get("state") == "running":
                    ph = f"training, step {arm_st.get('step', 0)}/{arm_st.get('steps', '?')}"
                elif arm_st.get("state") == "finished":
                    # trained and tested; round.json comes when every arm is done
                    ph = "trained" + (", waiting for the other arms" if running and r == cur
                                      else "")
                elif arm_st.get("state") in ("stopped", "failed", "interrupted"):
                    ph = (f"{arm_st['state']} at step {arm_st.get('step', 0)}/"
                          f"{arm_st.get('steps', '?')}")
                elif kept is not None:
                    ph = "generated" + (", waiting to train" if running and r == cur else "")
                elif running and r == cur:
                    ph = "waiting"
                else:
                    ph = "not started"
                row.update(phase=ph, traces=traces, kept=kept, note="")
            rows.append(row)
    return rows


def loop_view(path: Path, meta: dict | None = None) -> dict:
    """What the status block says about the loop folder `path`, and its `key`."""
    meta = meta if meta is not None else (read_json(path / META, {}) or {})
    status = RunDir(path).status()
    files = tuple(sorted(str(p.relative_to(path)) for pattern in ("round-[0-9]*/*",
                                                                   "round-[0-9]*/*/*")
                         for p in path.glob(pattern) if p.name in KEY_FILES))
    state = status.get("state", "?")
    return {"state": state, "where": where_words(status, meta),
            "error": status.get("error"), "hint": status.get("hint"),
            "rows": round_rows(path, meta, status),
            "key": repr((state, status.get("error"), files))}


def loop_html(view: dict) -> str:
    """The status block as one piece of HTML (what the feed sends): the state and where the
    loop is, then the rounds table."""
    line = f"{livestatus.badge_html(view['state'])} &nbsp; {html.escape(view['where'])}"
    return (f"<div class='dynsdpb-status'><p style='margin:0 0 0.5rem 0'>{line}</p>"
            "<p style='margin:0.5rem 0 0.25rem 0;font-weight:600'>Rounds</p>"
            + livestatus.table_html(view["rows"]) + "</div>")
