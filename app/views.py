"""Experiments and runs as the pages see them: the ArmView (a run folder plus what the pages
need from it), reading its metrics, samples and tokens incrementally, and the polling cache
(an experiment re-read only when the stat signature of its files changed).
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from app.common import runs_dir
from dynsdpb import config as C
from dynsdpb.errors import ConfigError
from dynsdpb.store import ExperimentDir, RunDir, find_experiments, parse_records, read_json


@dataclass
class ArmView:
    """One run folder plus what the charts need from it (read-only; named apart from the
    engine's dynsdpb.engine.train.Arm, which trains)."""
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


# The pages re-read metrics.jsonl at every poll of every visible tab, in the same process as
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


def load_arms(exp: Path, with_records: bool = True) -> list[ArmView]:
    ed = ExperimentDir(exp)
    meta = ed.meta()
    name = exp_label(exp, meta)
    key = exp_key(exp)
    out = []
    for rd in ed.arms(meta):
        if not rd.exists():
            continue
        out.append(ArmView(rd, key, name, rd.config(), rd.status(),
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


def load_arms_live(exp: Path) -> tuple[tuple, list[ArmView]]:
    """(signature, arms) of an experiment, re-read only when its files changed.

    The Live page polls every 2 s in every visible tab; with nothing new this is a few stat
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


def experiments(nested: bool = False) -> list[Path]:
    """Experiment folders, newest first; `nested` adds the runs of sweeps and the rounds of
    self-training loops (store.find_experiments)."""
    return find_experiments(runs_dir(), nested)


def exp_key(exp: Path) -> str:
    """An experiment's key on the pages: its folder relative to the runs directory
    ('demo', or 'my-sweep/runs/dynsdpb-s0-beca4e3af0', 'loop/round-01')."""
    try:
        return Path(exp).resolve().relative_to(runs_dir()).as_posix()
    except ValueError:
        return Path(exp).name


def exp_label(exp: Path, meta: dict | None = None) -> str:
    """A readable name: the experiment's own, or for a sweep's run the sweep and the cell
    values of the swept fields ('lr-sweep: alpha_max=0.5, lr=0.001 (dynsdpb, seed 0)'), for a
    self-training round the loop and the round ('star-loop: round 1')."""
    exp = Path(exp)
    if (exp.parent / "selftrain.json").is_file() and exp.name.startswith("round-"):
        loop = read_json(exp.parent / "selftrain.json", {}) or {}
        return f"{loop.get('name') or exp.parent.name}: round {int(exp.name[6:] or 0)}"
    sweep = exp.parent.parent
    if exp.parent.name == "runs" and (sweep / "sweep.json").is_file():
        spec = read_json(sweep / "sweep.json", {}) or {}
        axes = list(spec.get("grid") or spec.get("search") or {})
        meta = ExperimentDir(exp).meta() if meta is None else meta
        cfg = meta.get("base_config") or {}
        cell = ", ".join(f"{a}={cfg.get(a)}" for a in axes)
        who = f"{(meta.get('methods') or ['?'])[0]}, seed {(meta.get('seeds') or ['?'])[0]}"
        return f"{spec.get('name') or sweep.name}: {cell} ({who})"
    return exp_name(exp, meta)


def exp_of_job(jm, job_id: str | None) -> str | None:
    """The key of the experiment a job is training now: a sweep's run, a loop's newest round,
    or the experiment itself."""
    job = jm.job(job_id) if job_id else None
    if job is None:
        return job_id
    path = Path(job.exp_dir)
    if (path / "selftrain.json").is_file():
        rounds = sorted(path.glob("round-[0-9]*/experiment.json"))
        if not rounds:
            return None
        path = rounds[-1].parent
    return exp_key(path)


def job_label(jm, job_id: str) -> str:
    """A job as the sidebar and the queue name it: never a bare id like 'dynsdpb-s0-beca4e'."""
    job = jm.job(job_id)
    if job is None:
        return exp_name(runs_dir() / job_id)
    path = Path(job.exp_dir)
    if (path / "selftrain.json").is_file():
        meta = read_json(path / "selftrain.json", {}) or {}
        return f"{meta.get('name') or path.name} (self-training)"
    return exp_label(path)


def job_of_exp(key: str) -> str:
    """The job id that trains an experiment key (Stop, Resume, the queue): a loop's round
    belongs to the loop's job; anything else is its own folder's name."""
    parts = key.split("/")
    if len(parts) == 2 and parts[1].startswith("round-") and \
            (runs_dir() / parts[0] / "selftrain.json").is_file():
        return parts[0]
    return parts[-1]


def find_arm(key: str) -> ArmView | None:
    exp_id, _, arm = key.rpartition("/")
    exp = runs_dir() / exp_id
    rd = RunDir(exp / arm)
    if not rd.exists():
        return None
    return ArmView(rd, exp_id, exp_label(exp), rd.config(), rd.status(),
               read_records(rd.metrics_path), *_decoder_logs(rd))


def all_arm_keys() -> list[tuple[str, str]]:
    """(key, label) of every run, newest experiment first."""
    out = []
    for exp in map(ExperimentDir, experiments(nested=True)):
        meta = exp.meta()
        name, key = exp_label(exp.path, meta), exp_key(exp.path)
        for rd in exp.arms(meta):
            if rd.exists():
                out.append((f"{key}/{rd.id}", f"{name} / {rd.id} "
                             f"({rd.status().get('state', '?')})"))
    return out


PRIMARY_VAL = ("val_accuracy", "val_pearson", "val_exact_match")


def primary_val_metric(arms: list[ArmView]) -> str:
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
