"""The run store: one folder per run, written so that a crash loses at most one step.

    <runs_dir>/<experiment>/                 one experiment (arms of one config):
        experiment.json                      ExperimentDir: arms, base config, name
        summary.json                         per-method test metrics over seeds (when done)
        <method>-s<seed>/                    one run (an arm)
            config.json                      the RunConfig
            status.json                      state machine: queued -> running -> finished |
                                             stopped | failed | interrupted
            metrics.jsonl                    one JSON object per line, flushed per step
            samples.jsonl                    decoders: sample generations per evaluation
                                             (step, prompt, generation, extracted, gold,
                                             correct)
            tokens.jsonl                     decoders: per evaluation, one carried sample's
                                             target tokens with the alpha and KD each got
                                             (step, sample, tokens, token_ids, alpha, kd)
            summary.json                     final metrics
            checkpoint/state.pt              resumable state (atomic: temp file + rename)
            model/                           save_pretrained (safetensors)

Readers never trust the last line of metrics.jsonl (a SIGKILL may tear it) and never
trust a `running` status whose writer is gone: that run shows as `interrupted`.
Everything here is plain files and thread-safe per writer, so the app can read while a
training thread writes.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

STATES = ("queued", "running", "finished", "stopped", "failed", "interrupted")
ACTIVE = ("queued", "running")
# One token per process: a `running` status written by another process whose pid is gone
# was cut off.
PROCESS_TOKEN = uuid.uuid4().hex

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, fallback: str = "run") -> str:
    """A name that is safe as one path component: no separators, no `..`, no shell chars."""
    s = _SAFE.sub("-", str(name)).strip(".-_")[:80]
    return s or fallback


def inside(root: Path, p: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write via a temp file + rename: readers see the old or the new file, never half.
    `durable` also fsyncs (survives a machine crash, ~4 ms here); without it a process crash
    still leaves a whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _clean(o: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every reader can parse the file."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def atomic_write_json(path: Path, obj: Any, durable: bool = True) -> None:
    atomic_write_bytes(path, json.dumps(_clean(obj), indent=2).encode("utf-8"), durable)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def parse_records(lines: Iterable[bytes]) -> list[dict]:
    """JSON objects of complete metrics lines, with today's key names (records.upgrade: a
    file written before a key was renamed still reads); a garbled line is skipped."""
    from dynsdpb.records import upgrade
    out: list[dict] = []
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(upgrade(rec))
    return out


def read_metrics(path: Path) -> list[dict]:
    """All complete records of a metrics.jsonl; a torn or garbled line is skipped."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    # a torn last line (crash mid-write) has no newline yet: leave it out
    return parse_records(data[:data.rfind(b"\n") + 1].splitlines())


def append_jsonl(path: Path, recs: list[dict]) -> None:
    """Append records to a JSONL file, flushed and fsynced: for logs written a few lines per
    evaluation (samples.jsonl, tokens.jsonl). Nothing to append: the file is not created."""
    if not recs:
        return
    data = b"".join((json.dumps(_clean(r)) + "\n").encode("utf-8") for r in recs)
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def truncate_jsonl(path: Path, after_step: int) -> None:
    """Keep the records with step <= after_step (and drop a torn last line): a resumed arm's
    logs then equal an uninterrupted run's. A missing file stays missing."""
    if Path(path).is_file():
        keep = [r for r in read_metrics(path) if (r.get("step") or 0) <= after_step]
        atomic_write_bytes(Path(path), b"".join(
            (json.dumps(_clean(r)) + "\n").encode("utf-8") for r in keep))


class MetricsWriter:
    """Append-only JSONL, flushed per record: readers see each step at once, and a killed
    process loses at most the line it was writing. fsync (a machine crash) happens in
    `sync`, which the arm calls before each checkpoint: records after the last checkpoint
    are dropped on resume anyway, so fsyncing every record (two per arm-step with status.json,
    ~4 ms each here) bought nothing."""

    def __init__(self, path: Path, truncate_after_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        if truncate_after_step is not None:
            # Resuming: drop records written after the checkpoint and any torn line, so the
            # file equals what an uninterrupted run would have written up to that step.
            keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= truncate_after_step]
            atomic_write_bytes(self.path, b"".join(
                (json.dumps(_clean(r)) + "\n").encode() for r in keep))
        elif self.path.exists():
            self._repair_tail()
        self._f = open(self.path, "ab")

    def _repair_tail(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            atomic_write_bytes(self.path, data[: data.rfind(b"\n") + 1])

    def write(self, rec: dict) -> None:
        line = (json.dumps(_clean(rec)) + "\n").encode("utf-8")
        with self._lock:
            self._f.write(line)
            self._f.flush()

    def sync(self) -> None:
        with self._lock:
            if not self._f.closed:
                os.fsync(self._f.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                # e.g. disk full: the record that failed is lost either way; a failing
                # flush or close must not take the other arms down with it
                try:
                    self._f.flush()
                    os.fsync(self._f.fileno())
                except OSError:
                    pass
                try:
                    self._f.close()
                except OSError:
                    pass


class NullWriter:
    """Writes nothing: the metrics writer of a data-parallel rank other than 0 (dist.py)."""

    def write(self, rec: dict) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def _proc_start(pid: int) -> str | None:
    """When process `pid` started (Linux: clock ticks since boot), to tell it from a later
    process that got the same pid; None where /proc is not available."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2:].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return None


PROCESS_START = _proc_start(os.getpid())


def _writer_alive(st: dict) -> bool:
    """Is the process that wrote this status still the one running under its pid?"""
    pid = st.get("pid")
    if not pid_alive(pid):
        return False
    want = st.get("pid_start")
    now = _proc_start(pid) if want else None
    return not (want and now and now != want)  # the pid was reused by another process


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class RunDir:
    """Paths and state of one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # paths
    config_path = property(lambda s: s.path / "config.json")
    status_path = property(lambda s: s.path / "status.json")
    metrics_path = property(lambda s: s.path / "metrics.jsonl")
    samples_path = property(lambda s: s.path / "samples.jsonl")
    tokens_path = property(lambda s: s.path / "tokens.jsonl")
    summary_path = property(lambda s: s.path / "summary.json")
    checkpoint_path = property(lambda s: s.path / "checkpoint" / "state.pt")
    model_path = property(lambda s: s.path / "model")

    @property
    def id(self) -> str:
        return self.path.name

    def exists(self) -> bool:
        return self.config_path.is_file()

    def config(self) -> dict:
        return read_json(self.config_path, {}) or {}

    def metrics(self) -> list[dict]:
        return read_metrics(self.metrics_path)

    def samples(self, step: int | None = None) -> list[dict]:
        """Decoders' sample generations: every evaluation's, or those of `step` (-1: the
        latest evaluation). Each: step, prompt, generation, extracted, gold, correct."""
        recs = read_metrics(self.samples_path)
        if step == -1 and recs:
            step = recs[-1]["step"]
        return recs if step is None else [r for r in recs if r.get("step") == step]

    def tokens(self) -> list[dict]:
        """Decoders, per evaluation step: one carried sample's target tokens (as text) with the
        alpha and the KD term (alpha * tau^2 * KL, nats) each got; null where none."""
        return read_metrics(self.tokens_path)

    def summary(self) -> dict:
        return read_json(self.summary_path, {}) or {}

    def raw_status(self) -> dict:
        return read_json(self.status_path, {}) or {}

    def status(self, live_owner_ok: bool = True) -> dict:
        """The status, with runs whose writer died shown as `interrupted`."""
        st = self.raw_status()
        if st.get("state") in ACTIVE:
            mine = st.get("owner") == PROCESS_TOKEN
            if not mine and not _writer_alive(st):
                st = dict(st, state="interrupted",
                          message="the process running it ended before it finished; resume it "
                                  "from its last checkpoint")
        return st

    def set_status(self, state: str, **kw) -> dict:
        assert state in STATES, state
        st = self.raw_status()
        # A change of state is fsynced; the per-step progress of a running arm is not (it is
        # rewritten every step, and a machine crash makes the run `interrupted` anyway).
        durable = st.get("state") != state or state != "running"
        if state != "failed" and st.get("state") == "failed":
            # a retry (resume) starts clean: the old error no longer describes this run
            for k in ("error", "hint", "failed_step"):
                st.pop(k, None)
        st.update(kw)
        st.update(state=state, updated=time.time(), pid=os.getpid(), owner=PROCESS_TOKEN,
                  pid_start=PROCESS_START)
        atomic_write_json(self.status_path, st, durable=durable)
        return st

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def busy_elsewhere(self) -> int | None:
        """The pid of another live process that has this run queued or running, else None.
        Resuming it here too would make two writers of one folder."""
        st = self.raw_status()
        if st.get("state") in ACTIVE and st.get("owner") != PROCESS_TOKEN \
                and _writer_alive(st):
            return int(st["pid"])
        return None


class MirrorRunDir(RunDir):
    """A data-parallel rank's view of a run folder that rank 0 writes: it reads the same
    files, and its status updates go nowhere."""

    def set_status(self, state: str, **kw) -> dict:
        st = self.raw_status()
        st.update(kw)
        st["state"] = state
        return st


# The file that marks each kind of folder the workbench writes, what to call it, and how to
# continue one. `sweep.spec` and `selftrain.store` take their file names from here.
SWEEP_META = "sweep.json"
SELFTRAIN_META = "selftrain.json"
FOLDER_KINDS = {"experiment.json": ("an experiment", "dynsdpb resume {out}"),
                SWEEP_META: ("a sweep", "dynsdpb sweep --resume {out}"),
                SELFTRAIN_META: ("a self-training loop", "dynsdpb resume {out}")}


def check_out(out: str | Path, field: str = "--out", reuse: bool = False) -> Path:
    """The one rule for a folder a command writes into, checked before anything is created:
    not a file, not under a file, somewhere this process can write, and (reuse=False) new or
    empty. reuse=True (a report's folder) also takes a folder that exists with files in it,
    but never one that holds an experiment, a sweep or a self-training loop. Creates nothing."""
    from dynsdpb.errors import ConfigError
    p = Path(out).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError.one(field, str(out), "is a file; give a folder")
    up = p
    while not up.exists():          # the nearest part of the path that exists
        if up.parent == up:
            break
        up = up.parent
    if up != p and up.exists() and not up.is_dir():
        raise ConfigError.one(field, str(out), f"is under a file ({up}); give a folder path "
                              "whose parents are folders")
    if p.is_dir():
        for meta, (what, how) in FOLDER_KINDS.items():
            if (p / meta).exists():
                raise ConfigError.one(field, str(out), f"already holds {what}; pick another "
                                      f"folder, or continue it with `{how.format(out=out)}`")
        if not reuse and any(p.iterdir()):
            raise ConfigError.one(field, str(out), "exists and is not empty; pick a new folder")
    if up.exists() and not os.access(up, os.W_OK | os.X_OK):
        raise ConfigError.one(field, str(out), f"cannot write in {up} (read-only or not yours); "
                              "pick a folder you can write to")
    return p


def make_out(out: str | Path, field: str = "--out", reuse: bool = False) -> Path:
    """`check_out`, then create the folder (with its parents)."""
    from dynsdpb.errors import ConfigError
    p = check_out(out, field, reuse)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError.one(field, str(out), f"cannot create it ({e.strerror}); pick a folder "
                              "you can write to") from None
    return p


def check_not_busy(rds: "Iterable[RunDir]", where: str) -> None:
    from dynsdpb.errors import ConfigError
    busy = [(rd.id, pid) for rd in rds if (pid := rd.busy_elsewhere())]
    if busy:
        raise ConfigError.one("resume", where, f"{busy[0][0]} is still running in another "
                              f"process (pid {busy[0][1]}); stop it there, or wait for it")


@contextlib.contextmanager
def one_writer(path: str | Path, where: str):
    """Hold a folder as its one writer (a sweep, a self-training loop) for the block: after
    `check_not_busy` has named a live writer's pid, this closes the gap between two processes
    that checked at the same moment. An OS lock on DIR/.writer.lock, released when the block
    ends or the process dies (no stale lock after a kill). Where there is no flock (Windows),
    the status check alone."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    from dynsdpb.errors import ConfigError
    f = open(Path(path) / ".writer.lock", "a+b")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = RunDir(path).raw_status().get("pid")
            raise ConfigError.one("resume", where, "it is still running in another process"
                                  + (f" (pid {pid})" if pid else "") + "; stop it there, or "
                                  "wait for it") from None
        yield
    finally:
        f.close()


class ExperimentDir:
    """The one owner of an experiment folder: experiment.json (its meta), its arms (RunDirs),
    its state, display name, summary and deletion. Nothing else names experiment.json.

    `meta()` is lenient, for readers that list what is there (a damaged file reads as {}).
    `check()` is the one validity check, for whoever runs or resumes the experiment.
    """

    META = "experiment.json"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    meta_path = property(lambda s: s.path / ExperimentDir.META)
    summary_path = property(lambda s: s.path / "summary.json")

    @property
    def id(self) -> str:
        return self.path.name

    def exists(self) -> bool:
        return self.meta_path.is_file()

    def meta(self) -> dict:
        m = read_json(self.meta_path, {})
        return m if isinstance(m, dict) else {}

    def check(self, field: str = "experiment") -> dict:
        """experiment.json as dynsdpb wrote it (arms and base config), or a ConfigError that
        names `field` and the fix."""
        from dynsdpb.errors import ConfigError
        if not self.exists():
            raise ConfigError.one(field, str(self.path), "not an experiment folder (no "
                                  f"{self.META})")
        m = read_json(self.meta_path, None)
        if not isinstance(m, dict) or not isinstance(m.get("arms"), list) \
                or not all(isinstance(a, str) for a in m["arms"]) \
                or not isinstance(m.get("base_config"), dict):
            raise ConfigError.one(field, str(self.path), f"its {self.META} is damaged (not "
                                  "what dynsdpb wrote); it cannot be run or resumed")
        return m

    def write_meta(self, meta: dict) -> None:
        atomic_write_json(self.meta_path, meta)

    def arms(self, meta: dict | None = None) -> list[RunDir]:
        """The arms' run folders, in the order they were created (safe names only: a
        hand-edited file cannot point outside the folder)."""
        meta = self.meta() if meta is None else meta
        arms = meta.get("arms") if isinstance(meta.get("arms"), list) else []
        return [RunDir(self.path / safe_name(a)) for a in arms if isinstance(a, str)]

    def name(self, meta: dict | None = None) -> str:
        """The display name (a rename changes only this; the folder keeps its name)."""
        meta = self.meta() if meta is None else meta
        return str(meta.get("name") or self.id)

    def rename(self, new_name: str) -> str:
        new_name = " ".join(str(new_name).split())[:80]
        if not new_name:
            raise ValueError("give a non-empty name")
        meta = self.meta()
        if not meta:
            raise ValueError(f"{self.path} has no readable {self.META}")
        meta["name"] = new_name
        self.write_meta(meta)
        return new_name

    def state(self, meta: dict | None = None) -> str:
        """One word from the arms' states: the most urgent one wins."""
        states = {rd.status().get("state") for rd in self.arms(meta)}
        for k in ("running", "queued", "failed", "interrupted", "stopped", "finished"):
            if k in states:
                return k
        return "?"

    def summary(self) -> dict:
        return read_json(self.summary_path, {}) or {}

    def delete(self, runs_dir: str | Path) -> None:
        delete_run_or_experiment(runs_dir, self.path)


def find_runs(runs_dir: str | Path) -> list[RunDir]:
    """Every run folder under runs_dir (depth 1 or 2), newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = []
    for cfg in list(root.glob("*/config.json")) + list(root.glob("*/*/config.json")):
        rd = RunDir(cfg.parent)
        if (rd.path / "status.json").exists():
            found.append(rd)
    found.sort(key=lambda r: r.raw_status().get("created", 0), reverse=True)
    return found


# Experiments that live inside a workflow's folder: a sweep's runs (DIR/runs/<key>, next to
# DIR/sweep.json) and a self-training loop's rounds (DIR/round-XX, next to DIR/selftrain.json).
NESTED = (("runs/*", "../../sweep.json"), ("round-[0-9]*", "../selftrain.json"))


def find_experiments(runs_dir: str | Path, nested: bool = False) -> list[Path]:
    """Every experiment folder under runs_dir, newest first; with `nested`, also the ones
    inside sweeps and self-training loops (every run the app starts, whatever its kind)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = [p.parent for p in root.glob(f"*/{ExperimentDir.META}")]
    if nested:
        for pattern, marker in NESTED:
            up = marker.count("../")
            found += [p.parent for p in root.glob(f"*/{pattern}/{ExperimentDir.META}")
                      if (p.parents[up] / marker.replace("../", "")).is_file()]
    exps = [ExperimentDir(p) for p in found]
    exps.sort(key=lambda e: e.meta().get("created") or 0, reverse=True)
    return [e.path for e in exps]


def unique_dir(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    base = safe_name(name)
    p = root / base
    i = 2
    while True:
        try:
            p.mkdir()  # atomic: two threads or processes never get the same folder
            return p
        except FileExistsError:
            p = root / f"{base}-{i}"
            i += 1


def delete_run_or_experiment(runs_dir: str | Path, path: str | Path) -> None:
    root, p = Path(runs_dir), Path(path)
    if not inside(root, p) or p.resolve() == root.resolve():
        raise ValueError(f"refusing to delete {p}: not inside the runs directory {root}")
    shutil.rmtree(p)

