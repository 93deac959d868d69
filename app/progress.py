"""Progress as the pages say it: steps and phase of each arm, throughput, the time left
(training, then testing) in words, clock times and the queue.
"""
from __future__ import annotations

import math
import time
from datetime import datetime

from app.views import PRIMARY_VAL, ArmView


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


def samples_per_s(arm: ArmView, window: int = 10) -> float | None:
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


def arm_steps(a: ArmView) -> tuple[int, int]:
    """(steps done, steps planned) of one arm."""
    return int(a.status.get("step") or 0), int(a.status.get("steps") or a.cfg.get("steps") or 0)


PHASES = ("loading", "training", "testing", "saving")


def arm_phase(a: ArmView) -> str:
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


def _intervals(a: ArmView) -> list[float]:
    ts = [r["time"] for r in a.records[-31:] if r.get("time")]
    return [b - t for t, b in zip(ts, ts[1:]) if b > t]


def step_seconds(a: ArmView) -> float | None:
    """Seconds between an arm's step records lately: in lockstep one round of every arm,
    evaluations included (they are part of the time left). A pause longer than 20 typical
    steps (a stop and resume) is left out."""
    gaps = sorted(_intervals(a))
    if not gaps:
        return None
    med = gaps[len(gaps) // 2]
    kept = [g for g in gaps if g <= 20 * med]
    return sum(kept) / len(kept)


def eval_seconds(a: ArmView) -> float | None:
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


def test_seconds(a: ArmView) -> float | None:
    """Estimated seconds of the test evaluation after the last step: a validation
    evaluation's measured time scaled by the test / validation split sizes (the sizes the
    data loader made, from status.json; the config's when not written yet: 0 there = auto)."""
    ev = eval_seconds(a)
    sizes = a.status.get("data") or {}
    val = sizes.get("val") or a.cfg.get("val_size")
    test = sizes.get("test") or a.cfg.get("test_size")
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


def fmt_took(s: float) -> str:
    """'took 2 min 05 s': how long a finished experiment ran, start to end."""
    s = int(round(max(s, 0)))
    if s < 90:
        return f"took {s} s"
    if s < 90 * 60:
        return f"took {s // 60} min {s % 60:02d} s"
    return f"took {s // 3600} h {s % 3600 // 60:02d} min"


def elapsed(arms: list[ArmView]) -> float | None:
    """Seconds from the first arm's start to the last arm's last status update, once no arm
    is running or queued; None while one is (the time left is the news then)."""
    if not arms or any(a.state in ("running", "queued") for a in arms):
        return None
    starts = [float(a.status["started"]) for a in arms if a.status.get("started")]
    ends = [float(a.status["updated"]) for a in arms if a.status.get("updated")]
    return (max(ends) - min(starts)) if starts and ends else None


def progress_info(arms: list[ArmView], now: float | None = None) -> dict:
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
            "samples_per_s": (sum(sps) / len(sps)) if sps else None, "latest": latest,
            "elapsed": elapsed(arms)}


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
    if info.get("elapsed") is not None:
        parts.append(fmt_took(info["elapsed"]))
    if info["resumed_from"]:
        parts.append(" and ".join(f"resumed from the step-{s} checkpoint"
                                  for s in info["resumed_from"]))
    return parts


def bar_html(frac: float, label: str = "progress") -> str:
    """A progress bar as plain HTML without animation, for pages that poll.

    st.progress animates each change of its value (a CSS transition): on the Live page, which
    redrew it every second, that animation alone took about 0.035 of a CPU core per open tab
    in Chromium (measured against a fragment that draws nothing new: 0.051 vs 0.015 cores),
    CPU the training on the same machine then lacks."""
    pct = max(0.0, min(1.0, float(frac))) * 100
    return (f"<div role='progressbar' aria-label='{label}' aria-valuemin='0' "
            f"aria-valuemax='100' aria-valuenow='{pct:.0f}' style='height:0.5rem;"
            "border-radius:0.25rem;background:rgba(151,166,195,0.25);overflow:hidden'>"
            f"<div style='width:{pct:.2f}%;height:100%;background:#ff4b4b;"
            "transition:none'></div></div>")
