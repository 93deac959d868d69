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
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

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

METHOD_COLORS = {"vanilla": "#5f6b7a", "refeed": "#8c564b", "dlb": "#1f77b4",
                 "dynsdpb": "#d62728"}
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
    # Decoders only (empty for encoders): samples.jsonl (sample generations per evaluation)
    # and tokens.jsonl (one carried sample's tokens with the alpha and KD each got).
    samples: list[dict] = field(default_factory=list)
    tokens: list[dict] = field(default_factory=list)

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

    @property
    def decoder(self) -> bool:
        """A decoder (causal LM) run: its config, or what it logged (older configs)."""
        if self.cfg.get("task") == "causal-lm" or self.samples or self.tokens:
            return True
        try:
            return C.is_causal_lm(C.from_dict(self.cfg, check=False))
        except ConfigError:
            return False

    def latest_samples(self) -> list[dict]:
        """The sample generations of the latest evaluation that stored some."""
        if not self.samples:
            return []
        step = self.samples[-1].get("step")
        return [r for r in self.samples if r.get("step") == step]


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
                       read_records(rd.metrics_path) if with_records else [],
                       *(_decoder_logs(rd) if with_records else ([], []))))
    return out


def _decoder_logs(rd: RunDir) -> tuple[list[dict], list[dict]]:
    """samples.jsonl and tokens.jsonl of a run, read incrementally like metrics.jsonl (both
    only grow, a few lines per evaluation); encoders have neither."""
    return (read_records(rd.path / "samples.jsonl"), read_records(rd.path / "tokens.jsonl"))


def exp_signature(exp: Path) -> tuple:
    """What changed in an experiment folder, from stat calls only (no file is read): size and
    mtime of experiment.json and of each arm's status.json, metrics.jsonl and (decoders)
    samples.jsonl and tokens.jsonl."""
    out = []
    for p in [exp / "experiment.json", *sorted(exp.glob("*/status.json")),
              *sorted(exp.glob("*/metrics.jsonl")), *sorted(exp.glob("*/samples.jsonl")),
              *sorted(exp.glob("*/tokens.jsonl"))]:
        try:
            s = os.stat(p)
        except OSError:
            continue
        out.append((p.parent.name, p.name, s.st_size, s.st_mtime_ns))
    return tuple(out)


_LIVE_ARMS: OrderedDict = OrderedDict()
_LIVE_ARMS_LOCK = threading.Lock()


def load_arms_live(exp: Path) -> tuple[tuple, list[Arm]]:
    """(signature, arms) of an experiment, re-read only when its files changed.

    The Live page polls every second in every open tab; with nothing new this is a few stat
    calls, shared by all tabs. Every 5 s the arms are read anyway: a run whose process died
    shows as interrupted without writing anything.
    """
    sig = exp_signature(exp) + (int(time.time() // 5),)
    key = str(exp)
    with _LIVE_ARMS_LOCK:
        hit = _LIVE_ARMS.get(key)
        if hit is not None and hit[0] == sig:
            return hit
    arms = load_arms(exp)
    with _LIVE_ARMS_LOCK:
        _LIVE_ARMS[key] = (sig, arms)
        _LIVE_ARMS.move_to_end(key)
        while len(_LIVE_ARMS) > 16:
            _LIVE_ARMS.popitem(last=False)
    return sig, arms

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
               read_records(rd.metrics_path), *_decoder_logs(rd))


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


PRIMARY_VAL = ("val_accuracy", "val_pearson", "val_exact_match")


def primary_val_metric(arms: list[Arm]) -> str:
    """The validation metric the charts lead with: accuracy (classification), Pearson
    (regression), exact match (decoders)."""
    for a in arms:
        for r in a.records:
            for k in PRIMARY_VAL:
                if r.get(k) is not None:
                    return k
    if any(a.decoder for a in arms):
        return "val_exact_match"
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


def arm_steps(a: Arm) -> tuple[int, int]:
    """(steps done, steps planned) of one arm."""
    return int(a.status.get("step") or 0), int(a.status.get("steps") or a.cfg.get("steps") or 0)


PHASES = ("loading", "training", "testing", "saving")


def arm_phase(a: Arm) -> str:
    """What an arm is doing: while running, its status.json `phase` (loading | training |
    testing | saving); otherwise its state. Runs written before `phase` existed: guessed."""
    if a.state != "running":
        return a.state
    phase = a.status.get("phase")
    if phase in PHASES:
        step, steps = arm_steps(a)
        if phase == "training" and steps and step >= steps:
            return "waiting to test"     # lockstep: the arms are tested one after another
        return phase
    step, steps = arm_steps(a)
    if not a.records:
        return "loading"
    return "testing" if steps and step >= steps else "training"


def _intervals(a: Arm) -> list[float]:
    ts = [r["time"] for r in a.records[-31:] if r.get("time")]
    return [b - t for t, b in zip(ts, ts[1:]) if b > t]


def step_seconds(a: Arm) -> float | None:
    """Seconds between an arm's step records lately: in lockstep one round of every arm,
    evaluations included (they are part of the time left). A pause longer than 20 typical
    steps (a stop and resume) is left out."""
    gaps = sorted(_intervals(a))
    if not gaps:
        return None
    med = gaps[len(gaps) // 2]
    kept = [g for g in gaps if g <= 20 * med]
    return sum(kept) / len(kept)


def eval_seconds(a: Arm) -> float | None:
    """Measured seconds of one validation evaluation: the extra time of the steps that
    evaluated over a typical step (median over the evaluations seen)."""
    recs = [r for r in a.records if r.get("time")]
    gaps = sorted(_intervals(a))
    if len(recs) < 3 or not gaps:
        return None
    med = gaps[len(gaps) // 2]
    extra = sorted(b["time"] - p["time"] - med for p, b in zip(recs, recs[1:])
                   if b.get("val_loss") is not None
                   or any(b.get(k) is not None for k in PRIMARY_VAL))
    extra = [e for e in extra if e > 0]
    return extra[len(extra) // 2] if extra else None


def test_seconds(a: Arm) -> float | None:
    """Estimated seconds of the test evaluation after the last step: a validation
    evaluation's measured time scaled by test_size / val_size (both from the config)."""
    ev = eval_seconds(a)
    val, test = a.cfg.get("val_size"), a.cfg.get("test_size")
    if ev is None or not val or not test:
        return None
    return ev * float(test) / float(val)


def waiting_words(n: int) -> str:
    """How many experiments wait in the queue: the same words in the sidebar and on Live."""
    return "none waiting" if n == 0 else f"{n} experiment{'s' if n > 1 else ''} waiting"

def fmt_left(s: float) -> str:
    """'about 2 min left': a duration to wait, never a clock-like 15:24."""
    if s < 10:
        return "a few seconds left"
    if s < 90:
        return f"about {int(round(s / 10.0)) * 10} s left"
    if s < 90 * 60:
        return f"about {int(round(s / 60.0))} min left"
    h, m = divmod(int(round(s / 60.0)), 60)
    return f"about {h} h {m} min left"


def progress_info(arms: list[Arm], now: float | None = None) -> dict:
    """Steps per arm, each arm's phase, the time left (training, then the test evaluation of
    each arm, one after another) as words, and where a resume started."""
    now = now or time.time()
    steps = [(a.id, *arm_steps(a)) for a in arms]
    phases = {a.id: arm_phase(a) for a in arms}
    active = any(a.state in ("running", "queued") for a in arms)
    done = sum(s for _, s, _ in steps)
    total = sum(n for _, _, n in steps)

    train_left = 0.0
    known = True
    for a in arms:
        step, n = arm_steps(a)
        if phases[a.id] in ("training", "loading", "queued") and n > step:
            sec = step_seconds(a)
            if sec is None:
                known = False
            else:
                train_left = max(train_left, (n - step) * sec)
    test_each = [t for t in (test_seconds(a) for a in arms) if t is not None]
    test_each_s = max(test_each) if test_each else None
    test_left = 0.0
    for a in arms:
        ph = phases[a.id]
        if ph in ("training", "loading", "queued", "waiting to test"):
            test_left += test_each_s or 0.0
        elif ph == "testing" and test_each_s:
            test_left += max(test_each_s - (now - float(a.status.get("updated") or now)), 5.0)
    left = (train_left + test_left) if (active and known) else None

    resumed = sorted({int(a.status["resumed_from"]) for a in arms
                      if a.status.get("resumed_from") and a.state in ("running", "queued")})
    sps = [v for v in (samples_per_s(a) for a in arms if phases[a.id] == "training") if v]
    latest = None
    for a in arms:
        for r in a.records[-1:]:
            if r.get("time") and (latest is None or r["time"] > latest[1]["time"]):
                latest = (a, r)
    return {"steps": steps, "done": done, "total": total, "phases": phases, "left": left,
            "test_each": test_each_s, "resumed_from": resumed, "active": active,
            "samples_per_s": (sum(sps) / len(sps)) if sps else None, "latest": latest}


def progress_words(info: dict) -> list[str]:
    """The Live page's progress line: steps per arm (never the sum over arms), the phase,
    the time left in words, a resume."""
    parts = []
    done = [s for _, s, _ in info["steps"]]
    totals = {n for _, _, n in info["steps"]}
    if done and len(totals) == 1 and max(done) - min(done) <= 1:
        # lockstep: mid-round one arm is a step ahead; the round in progress is the news
        n = next(iter(totals))
        parts.append(f"{max(done)}/{n} steps" + (" per arm" if len(done) > 1 else ""))
    else:
        parts.append(", ".join(f"{a} {s}/{n}" for a, s, n in info["steps"]) + " steps")
    phases = info["phases"]
    shown = {p for p in phases.values()}
    if shown - {"training", "finished", "stopped", "failed", "interrupted", "queued"}:
        if len(shown) == 1:
            parts.append(next(iter(shown)) + "…")
        else:
            parts.append(", ".join(f"{a} {p}" for a, p in phases.items()))
    if info["active"]:
        if info["left"] is not None:
            left = fmt_left(info["left"])
            if info["test_each"] is None and any(
                    p in ("training", "loading", "queued", "waiting to test")
                    for p in phases.values()):
                left += " of training, then testing each arm"
            elif info["test_each"]:
                left += f" (incl. ~{int(round(info['test_each']))} s of testing per arm)"
            parts.append(left)
        elif any(p == "testing" for p in phases.values()):
            parts.append("testing…")
    if info["resumed_from"]:
        parts.append(" and ".join(f"resumed from the step-{s} checkpoint"
                                  for s in info["resumed_from"]))
    return parts


def summary_rows(summary: dict) -> list[dict]:
    """The engine's summary table as the app shows it: the unit in the column name, "—" for
    nothing to show, and every "n/a" says why (one seed has no spread and no interval)."""
    from dynsdpb.compare import table_rows
    pm = summary.get("primary_metric", "")
    unit = " (%)" if is_percent(pm) else ""
    out = []
    for row in table_rows(summary):
        n_seeds = len(summary["methods"].get(row["method"], {}).get("seeds", []))
        why = "n/a: one seed" if n_seeds < 2 else "n/a: a value is missing"
        new = {}
        for k, v in row.items():
            if k == f"{pm} mean":
                k = f"{pm} mean{unit}"
            if isinstance(v, str):
                if v.strip() in ("-", "", "None"):
                    v = "—" if not (row["method"] != "vanilla" and k.startswith("diff")) \
                        else "—: no vanilla arm to pair with"
                elif "[n/a, n/a]" in v:
                    v = v.replace("[n/a, n/a]", f"[{why}]")
                elif "n/a" in v:
                    v = v.replace("n/a", why)
            elif v is None:
                v = "—"
            new[k] = v
        out.append(new)
    return out


def decoder_summary_rows(summary: dict) -> list[dict]:
    """Decoders' test results next to each other: exact match (%) and perplexity, mean ± std
    over seeds (the engine's summary; its main table shows the primary metric alone)."""
    def fmt(key: str, r: dict) -> str:
        if not r or r.get("mean") is None:
            return "—"
        pct = is_percent(key)
        m = r["mean"] * (100 if pct else 1)
        sd = r.get("std")
        ok = isinstance(sd, (int, float)) and math.isfinite(sd)
        return (f"{m:.2f}" if pct else f"{m:.4g}") + (
            f" ± {sd * (100 if pct else 1):.2f}" if ok and pct else f" ± {sd:.3g}" if ok else "")
    rows = []
    for method, r in summary.get("methods", {}).items():
        rows.append({"method": method, "seeds": len(r.get("seeds", [])),
                     "exact match (%)": fmt("test_exact_match", r.get("test_exact_match", {})),
                     "perplexity": fmt("test_perplexity", r.get("test_perplexity", {})),
                     "test loss (nats/token)": fmt("test_loss", r.get("test_loss", {}))})
    return rows


def cell(key: str, v) -> str:
    """A value for a table cell: shares in %, 4 significant digits, "—" for none."""
    from dynsdpb.records import display_value
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    v = display_value(key, v)
    if isinstance(v, float):
        return f"{v:.2f}" if key in _PERCENT_KEYS() else f"{v:.4g}"
    return str(v)



def result_text(metric: str, v) -> str:
    """'accuracy 64.50 %': a test result in the same unit as the charts and Compare."""
    from dynsdpb.records import KEYS
    if v is None:
        return "—"
    key = "val_" + metric.removeprefix("test_")
    pct = KEYS.get(key) is not None and KEYS[key].percent
    return f"{metric.removeprefix('test_')} {cell(key, v)}{' %' if pct else ''}"

def is_percent(metric: str) -> bool:
    """Is a test_/val_ metric a share shown in % (records.KEYS of its val_ twin)?"""
    from dynsdpb.records import KEYS
    k = KEYS.get("val_" + metric.removeprefix("test_").removeprefix("val_"))
    return bool(k and k.percent)


def _PERCENT_KEYS() -> set[str]:
    from dynsdpb.records import KEYS
    return {k for k, v in KEYS.items() if v.percent}

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


def _style(arm: Arm, color_by: str, idx: int) -> tuple[str, str]:
    if color_by == "run":
        return RUN_PALETTE[idx % len(RUN_PALETTE)], "solid"
    return method_color(arm.method), SEED_DASHES[arm.seed % len(SEED_DASHES)]


def _name(arm: Arm, multi_exp: bool) -> str:
    return f"{arm.exp_name}: {arm.id}" if multi_exp else arm.id


def _multi_exp(arms: list[Arm]) -> bool:
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
        sig = (t["xaxis"], tuple(t["x"]), tuple(round(float(v), 9) for v in t["y"]))
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
        text = " and ".join(names) + " coincide"
        if text not in said:
            said.append(text)
    if said:
        spec["layout"]["annotations"].append({
            "text": "; ".join(said) + " (drawn on top of each other)", "showarrow": False,
            "xref": "paper", "yref": "paper", "x": 1.0, "y": 1.12, "xanchor": "right",
            "font": {"size": 12, "color": "#555"}})


def _note(spec: dict, text: str, col: int = 1, n: int = 1) -> None:
    """A grey note in the middle of panel `col` (paper coordinates: plotly.js drops an axis
    without traces, and a note tied to it would land in the first panel, stretching it)."""
    sfx = "" if col == 1 else str(col)
    lo, hi = spec["layout"]["xaxis" + sfx]["domain"]
    spec["layout"]["annotations"].append({"text": text, "showarrow": False, "xref": "paper",
                                          "yref": "paper", "x": (lo + hi) / 2, "y": 0.5,
                                          "font": {"color": "#888"}})


def _finish(spec: dict) -> go.Figure:
    _mark_coinciding(spec)
    return go.Figure(spec, _validate=False)


def fig_alpha_tau(arms: list[Arm], x: str = "step", uirev: str = "alpha_tau",
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


def _panel_traces(spec: dict, arms: list[Arm], keys: tuple[str, ...], x: str,
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


def fig_drift(arms: list[Arm], x: str = "step", uirev: str = "drift",
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


def fig_drift_split(arms: list[Arm], x: str = "step", uirev: str = "drift-split",
                    color_by: str = "method") -> go.Figure:
    """logit_drift split at evaluations: the update alone (eval mode) and dropout alone."""
    keys = ("logit_drift", "update_drift", "dropout_drift")
    spec = {"data": [], "layout": _layout(uirev, x, keys, (
        "logit drift, train mode (KL)", "update part: eval mode, no dropout (KL)",
        "dropout part: same weights, two masks (KL)"))}
    _panel_traces(spec, arms, keys, x, color_by,
                  markers_always=("update_drift", "dropout_drift"))
    have = {t["xaxis"] for t in spec["data"]}
    for col, axis in ((2, "x2"), (3, "x3")):
        if axis not in have:
            _note(spec, "no values yet:<br>distilling arms, at evaluations", col)
    return _finish(spec)


def fig_loss(arms: list[Arm], x: str = "step", uirev: str = "loss",
             color_by: str = "method") -> go.Figure:
    keys = ("ce", "kd", "loss")
    spec = {"data": [], "layout": _layout(uirev, x, keys, (
        "CE (hard labels)", "KD term (alpha·tau²·KL)", "total loss"))}
    _panel_traces(spec, arms, keys, x, color_by)
    return _finish(spec)


def fig_metric(arms: list[Arm], key: str, x: str = "step", uirev: str = "metric",
               color_by: str = "method", title: str | None = None) -> go.Figure:
    """One metric against x for every arm (eval metrics have points at eval steps only)."""
    spec = {"data": [], "layout": _layout(uirev, x, (key,))}
    spec["layout"]["title"] = {"text": title or key, "x": 0, "font": {"size": 14}}
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


def figure(fn, arms: list[Arm], *args, **kw) -> go.Figure:
    """fn(arms, *args, **kw), reused while no arm has a new record.

    Shared by every session: with N tabs open on one run, each new record costs one build,
    not N. Callers must not modify the returned figure.
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
    cfg["toImageButtonOptions"] = dict(PLOTLY_CONFIG["toImageButtonOptions"], filename=filename)
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


# ---------------------------------------------------------------------------------------
# Files for download


def saved_model_kind(model_dir: Path) -> str | None:
    """What a run saved in model/: "model" (a whole transformers model), "LoRA adapter"
    (PEFT, decoders' save_format adapter), or None."""
    if (model_dir / "adapter_config.json").is_file():
        return "LoRA adapter"
    if (model_dir / "config.json").is_file():
        return "model"
    return None


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
        if ds in builtin_datasets():
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



def load_experiment_yaml(d: dict, source: str) -> tuple[str, str]:
    """Put a loaded experiment file (parsed YAML) into the Setup form; (st kind, message).

    A whole experiment (dynsdpb/presets.py): every field plus `methods` and `seeds`. An older
    single-run file (`method: dlb`, `seed: 0`) adds its method to those picked (vanilla stays
    the baseline). Fields the file leaves out keep the form's values.
    """
    from dynsdpb.presets import experiment_from_dict
    try:
        exp = experiment_from_dict(d, source, check=False)
    except ConfigError as e:
        # Values the form can still show (a wrong type, an unknown field): load what fits, so
        # each field shows its problem and fix next to it, and say what was left out.
        rest = {k: v for k, v in d.items() if k not in ("methods", "seeds", "description")}
        notes = prefill_setup(rest) + [f"{p.field}: {p.fix}." for p in e.problems]
    else:
        base = {k: v for k, v in exp.base.to_dict().items() if k in d}
        notes = prefill_setup(base, methods=exp.methods if "methods" in d else None,
                              seeds=exp.seeds if "seeds" in d else None, name=exp.name)
    msg = f"Loaded {source}." + (" " + " ".join(notes) if notes else "")
    return ("warning" if notes else "success", msg)

OTHER_MODEL = "other: local folder or hub id"
DATA_BUILTIN = "built-in"
DATA_UPLOAD = "upload a file"
DATA_PATH = "local file path or hub id"


# ---------------------------------------------------------------------------------------
# Encoders and decoders on one Setup form. RunConfig fields in the group "decoder" (their
# metadata) are read by decoder models only; ENCODER_ONLY_FIELDS by encoders only (a decoder
# reads prompt/target columns, and min_confidence belongs to tweets-sentiment). FIELD_NEEDS:
# fields that matter only under another field's value. The form draws a field only where
# `field_applies` says so; everything else about a field comes from RunConfig.

ENCODER_ONLY_FIELDS = ("text_column", "text_pair_column", "label_column", "min_confidence")
FIELD_NEEDS = {"lora_r": ("finetune", "lora"), "lora_alpha": ("finetune", "lora"),
               "lora_dropout": ("finetune", "lora"), "lora_target_modules": ("finetune", "lora"),
               "save_format": ("finetune", "lora"), "top_k": ("kd_cache", "topk")}
GENERATION = "generation"
CLASSIFICATION = "classification"


def field_family(name: str) -> str | None:
    """"decoder" or "encoder" for a field only that kind of model reads, None for both."""
    if C.FIELDS[name].metadata.get("group") == "decoder":
        return "decoder"
    return "encoder" if name in ENCODER_ONLY_FIELDS else None


def field_applies(name: str, decoder: bool, values: dict | None = None) -> bool:
    """Does the Setup form show this field for a decoder (or an encoder) model, given the
    other fields' `values` (e.g. the LoRA settings only with finetune=lora)?"""
    fam = field_family(name)
    if fam is not None and (fam == "decoder") != decoder:
        return False
    need = FIELD_NEEDS.get(name)
    return not (need and values is not None and values.get(need[0]) != need[1])


def builtin_datasets() -> dict[str, tuple[str, str]]:
    """Every built-in dataset the engine lists: name -> (kind, description); kind is
    "classification" (encoders) or "generation" (prompt -> target text, decoders)."""
    from dynsdpb.data import BUILTIN_DATASETS
    from dynsdpb.lm_data import BUILTIN_LM_DATASETS
    out = {n: (CLASSIFICATION, d.description) for n, d in BUILTIN_DATASETS.items()}
    out.update({n: (GENERATION, desc) for n, desc in BUILTIN_LM_DATASETS.items()})
    return out


def model_family(model: str) -> str | None:
    """"decoder", "encoder", or None when it cannot be told offline (a hub id)."""
    from dynsdpb.models import BUILTIN_MODELS
    if model in BUILTIN_MODELS:
        return getattr(BUILTIN_MODELS[model], "kind", "encoder")
    return C.model_family(model.strip()) if model.strip() else None


def datasets_for(family: str | None) -> list[str]:
    """The built-in datasets a model of this family trains on (all when it is unknown)."""
    want = {"decoder": GENERATION, "encoder": CLASSIFICATION}.get(family or "")
    return [n for n, (kind, _) in builtin_datasets().items() if want in (None, kind)]


# A decoder's file: which columns hold the prompt, the target text and (optionally) the
# final answer for exact match. The engine reads columns named prompt/target/answer, so the
# app hands it the file with its columns renamed (mapped_jsonl).
LM_COLUMNS = ("prompt", "target", "answer")


def guess_lm_columns(cols: list[str]) -> dict[str, str]:
    lower = {c.lower(): c for c in cols}

    def pick(names, default):
        return next((lower[n] for n in names if n in lower), default)
    prompt = pick(("prompt", "question", "input", "instruction", "query", "text"), cols[0])
    target = pick(("target", "completion", "output", "response", "answer_cot", "solution",
                   "label"), cols[min(1, len(cols) - 1)])
    answer = pick(("answer", "final_answer", "final", "gold", "solution_number"), "")
    return {"prompt": prompt, "target": target, "answer": "" if answer == target else answer}


def map_lm_rows(rows: list[dict], mapping: dict[str, str]) -> list[dict]:
    """Rows with the columns the engine reads: prompt, target and (when mapped) answer."""
    out = []
    for r in rows:
        m = {"prompt": r.get(mapping["prompt"]), "target": r.get(mapping["target"])}
        if mapping.get("answer"):
            m["answer"] = r.get(mapping["answer"])
        out.append(m)
    return out


def mapped_jsonl(rows: list[dict], mapping: dict[str, str]) -> bytes:
    import json
    return b"".join((json.dumps(r, ensure_ascii=False, default=str) + "\n").encode("utf-8")
                    for r in map_lm_rows(rows, mapping))


# ---------------------------------------------------------------------------------------
# A carried sample's target tokens coloured by the alpha (or KD) each got (Live, Runs).

TOKEN_SHOW = {"alpha": "alpha (KD weight)", "kd": "KD term (nats)"}
_NO_TEACHER = "#e6e6e6"


def _esc_token(t: str) -> str:
    """A token as HTML text that nothing re-interprets: every character but letters and
    digits as a numeric entity (so <, &, Markdown's * _ ` $ and :emoji: stay literal);
    spaces visible as ·, newlines as ↵."""
    out = []
    for c in t:
        if c == " ":
            out.append("&middot;")
        elif c == "\n":
            out.append("&#8629;")
        elif c.isalnum() and c.isascii():
            out.append(c)
        else:
            out.append(f"&#{ord(c)};")
    return "".join(out)


def _shade(v: float, vmax: float, color: str) -> str:
    a = 0.0 if vmax <= 0 else max(0.0, min(1.0, v / vmax))
    return rgba(color, 0.08 + 0.82 * a)


def tokens_html(view: dict, show: str = "alpha", vmax: float | None = None,
                color: str = "#d62728", legend: bool = True) -> str:
    """One tokens.jsonl record as coloured spans (white = 0 -> `color` = vmax) with a legend.
    Tokens without a teacher (not in the aligned prefix) are grey. Token text is escaped."""
    toks = view.get("tokens") or []
    vals = view.get(show) or []
    alphas, kds = view.get("alpha") or [], view.get("kd") or []
    finite = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    if vmax is None:
        vmax = max(finite) if finite else 0.0
    spans = []
    for i, t in enumerate(toks):
        v = vals[i] if i < len(vals) else None
        a = alphas[i] if i < len(alphas) else None
        k = kds[i] if i < len(kds) else None
        tip = "".join(c if c.isalnum() and c.isascii() else f"&#{ord(c)};" for c in (
            f"{t!r}: alpha {'—' if a is None else f'{a:.4g}'}, "
            f"KD {'—' if k is None else f'{k:.4g}'} nats"))
        bg = _NO_TEACHER if v is None else _shade(float(v), vmax, color)
        spans.append(f"<span class='dyn-tok' title='{tip}' style='background:{bg};"
                     "padding:2px 3px;margin:1px;border-radius:3px;display:inline-block;"
                     f"font-family:monospace'>{_esc_token(str(t))}</span>")
    body = "<div style='line-height:2'>" + "".join(spans) + "</div>"
    return body + (token_legend(show, vmax, color) if legend else "")


def token_legend(show: str, vmax: float, color: str = "#d62728") -> str:
    import html as _html
    label = _html.escape(TOKEN_SHOW.get(show, show))
    return (f"<div style='font-size:0.8em;color:#555;margin-top:4px'>{label}: "
              f"<span style='background:{_shade(0, 1, color)};padding:0 6px'>0</span>"
              f"<span style='display:inline-block;width:120px;height:0.9em;vertical-align:middle;"
              f"background:linear-gradient(to right,{_shade(0, 1, color)},{_shade(1, 1, color)})'>"
              f"</span><span style='background:{_shade(1, 1, color)};padding:0 6px'>"
              f"{vmax:.3g}</span> &nbsp; <span style='background:{_NO_TEACHER};padding:0 6px'>"
              "no teacher</span> (not in the aligned prefix) &nbsp; · = space, &#8629; = "
              "newline</div>")


def token_scale(views: list[dict], show: str, arms: list[Arm] | None = None) -> float:
    """One colour scale for several arms' tokens: alpha up to the largest alpha any of the
    arms can give (alpha_max, or dlb's alpha), KD up to the largest value shown."""
    vals = [v for view in views for v in (view.get(show) or [])
            if isinstance(v, (int, float)) and math.isfinite(v)]
    top = max(vals) if vals else 0.0
    if show == "alpha":
        caps = [float(a.cfg.get("alpha_max" if a.method == "dynsdpb" else "alpha") or 0)
                for a in arms or []]
        top = max([top, *caps]) or 1.0
    return top


def sample_rows(arms: list[Arm]) -> list[dict]:
    """The latest sample generations of each arm, one table: the same prompts of every arm
    next to each other, correct as ✓/✗."""
    rows = []
    for a in arms:
        for r in a.latest_samples():
            rows.append({"prompt": str(r.get("prompt", "")), "run": a.id,
                         "step": r.get("step"),
                         "generation": str(r.get("generation", "")),
                         "answer": "—" if r.get("extracted") is None else str(r["extracted"]),
                         "gold": "—" if r.get("gold") is None else str(r["gold"]),
                         "correct": "✓" if r.get("correct") else "✗"})
    order = list(dict.fromkeys(r["prompt"] for r in rows))
    rows.sort(key=lambda r: order.index(r["prompt"]))
    return rows

