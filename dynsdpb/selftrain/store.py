"""A self-training folder (`DIR`) on disk: its layout, selftrain.json (`is_selftrain`,
`read_meta`), the round folders (`round_dir`), the whole-file JSONL writes, what an arm left
at the end of a past round (its weights, its carried teacher cache), and the read-back of the
rounds (`round_records`, `summarize`, `write_summary`, `format_rounds`). selftrain.py writes
the folder; the CLI and the app read it.

Folder (`DIR`):
    selftrain.json              loop options, methods, seeds, base config (what resume reads)
    status.json                 state, round, phase (the CLI and the app read it)
    summary.json                per round and metric: mean/std/per seed/paired difference
    round-00/baseline.json      the base model on the test split (every arm's start)
    round-XX/                   an engine experiment: experiment.json, one run folder per arm
        <method>-s<seed>/       the engine's files (config, status, metrics, checkpoint, ...)
            traces.jsonl        every generated trace (correct, strict_correct, truncated, kept,
                                drop_reason, rationalized)
            train.jsonl         the kept set (prompt, target, answer, question): the training data
            eval.jsonl          the test generations of the round's final model
            cache.pt            carry_teacher (continue mode), distilling arms: the cache carried
                                to round r+1
            round.json          this arm's numbers for the round; written last (= round done)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dynsdpb.compare import fmt_ci, sample_size
from dynsdpb.config import RunConfig
from dynsdpb.errors import ConfigError
from dynsdpb.metrics import mean_std, paired_diff
from dynsdpb.selftrain.loops import LoopConfig
from dynsdpb.store import (SELFTRAIN_META, RunDir, atomic_write_bytes, atomic_write_json, read_json,
                           read_metrics)

META = SELFTRAIN_META
ROUND_METRICS = ("questions", "traces", "kept", "rationalized", "fixed", "steps",
                 "test_exact_match", "test_strict_exact_match", "test_truncated",
                 "test_first_exact_match", "aligned_tokens", "dropped_tokens", "drop_wrong",
                 "drop_truncated", "drop_unmarked", "drop_no_reasoning", "drop_duplicate")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """The whole file at once (temp + rename): a file that exists is complete."""
    atomic_write_bytes(Path(path), b"".join((json.dumps(r) + "\n").encode() for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    return read_metrics(path)


def is_selftrain(path: str | Path) -> bool:
    return (Path(path) / META).is_file()


def read_meta(path: str | Path, field: str = "dir") -> dict:
    """selftrain.json as written by `create_selftrain`, or a ConfigError naming the fix."""
    p = Path(path)
    if not is_selftrain(p):
        raise ConfigError.one(field, str(p), f"not a self-training folder (no {META}); start "
                              "one with `dynsdpb selftrain ... --out DIR`")
    m = read_json(p / META, None)
    if not isinstance(m, dict) or not isinstance(m.get("base_config"), dict) \
            or not isinstance(m.get("loop"), dict) or not m.get("methods") or not m.get("seeds"):
        raise ConfigError.one(field, str(p), f"its {META} is damaged (not what dynsdpb wrote); "
                              "start the loop again in a new folder")
    return m


def round_dir(path: Path, r: int) -> Path:
    return Path(path) / f"round-{r:02d}"


# ----------------------------------------------------------------------------------------
# An arm's past rounds

def final_weights(rd: RunDir) -> dict | None:
    """The weights at the end of a finished round's training (its final checkpoint)."""
    if not rd.has_checkpoint():
        return None
    return torch.load(rd.checkpoint_path, map_location="cpu", weights_only=True)["model"]


def carried_cache(path: Path, arm: str, r: int, opt: LoopConfig, cfg: RunConfig) -> dict:
    """The teacher cache an arm carries into round r (carry_teacher, continue mode, distilling
    arms): the cache.pt of its latest round before r that trained, {} if none."""
    if not opt.carry_teacher or opt.round_start != "continue" or not cfg.distills:
        return {}
    for k in range(r - 1, 0, -1):
        p = round_dir(path, k) / arm / "cache.pt"
        if p.is_file():
            return torch.load(p, map_location="cpu", weights_only=True)
    return {}


def end_weights(path: Path, arm: str, r: int, round_start: str) -> tuple[dict | None, int]:
    """An arm's weights at the end of round r and the round they were trained in (0: the base
    model). continue: the latest round <= r that trained; base: round r's, if it trained."""
    for k in range(r, 0, -1):
        rd = RunDir(round_dir(path, k) / arm)
        info = read_json(rd.path / "round.json", {}) or {}
        if info.get("steps"):
            return final_weights(rd), k
        if round_start == "base":
            break
    return None, 0


# ----------------------------------------------------------------------------------------
# Summary

def round_records(path: str | Path) -> list[dict]:
    """Every finished round.json of a self-training folder, in round and arm order."""
    out = []
    for rd in sorted(Path(path).glob("round-[0-9]*/*/round.json")):
        rec = read_json(rd, None)
        if isinstance(rec, dict):
            out.append(rec)
    return out


def summarize(path: str | Path) -> dict:
    """Per round, per method and metric: mean, std and per-seed values, and the paired
    difference to vanilla over the common seeds (compare.summarize_runs' form)."""
    path = Path(path)
    meta = read_json(path / META, {}) or {}
    recs = round_records(path)
    by: dict[int, dict[str, dict[int, dict]]] = {}
    for x in recs:
        by.setdefault(int(x["round"]), {}).setdefault(x["method"], {})[int(x["seed"])] = x
    rounds = []
    for r in sorted(by):
        methods = {}
        base = by[r].get("vanilla", {})
        for method, seeds in by[r].items():
            row: dict = {"seeds": sorted(seeds)}
            for m in ROUND_METRICS:
                vals = [seeds[s].get(m) for s in sorted(seeds)]
                if all(v is None for v in vals):
                    continue
                mean, std = mean_std([v for v in vals if v is not None])
                row[m] = {"mean": mean, "std": std,
                          "per_seed": dict(zip(map(str, sorted(seeds)), vals))}
                if method != "vanilla" and base:
                    common = sorted(set(seeds) & set(base))
                    row[m]["diff_vs_vanilla"] = paired_diff(
                        [seeds[s].get(m) for s in common], [base[s].get(m) for s in common])
            methods[method] = row
        rounds.append({"round": r, "methods": methods})
    base_eval = round_dir(path, 0) / "eval.jsonl"     # every round is tested on these items
    return {"kind": "selftrain", "loop": meta.get("loop"), "methods": meta.get("methods"),
            "seeds": meta.get("seeds"), "primary_metric": "test_exact_match",
            "test_size": len(read_jsonl(base_eval)) if base_eval.is_file() else None,
            "baseline": read_json(round_dir(path, 0) / "baseline.json", None),
            "rounds": rounds, "state": RunDir(path).status().get("state")}


def write_summary(path: str | Path) -> dict:
    s = summarize(path)
    atomic_write_json(Path(path) / "summary.json", s)
    return s


def format_rounds(summary: dict) -> str:
    """One line per round and method: kept, rationalized, steps, accuracy (%: flexible, then
    strict), with the paired difference to vanilla (flexible: points, 95% interval, seed
    pairs); mean over seeds. A line says what every number stands on (seeds, test items)."""
    sc = (summary.get("loop") or {}).get("loop") == "selfcorrect"

    def f(row, m, pct=False):
        v = (row.get(m) or {}).get("mean")
        if v is None or v != v:
            return "n/a"
        return f"{100 * v:.1f}" if pct else f"{v:.1f}".rstrip("0").rstrip(".")
    head = ["round", "method", "kept", "rationalized" if not sc else "fixed", "steps"] + \
        (["first %", "corrected %"] if sc else ["test %"]) + [
            "strict %", "diff vs vanilla (points) [95% CI]", "aligned", "dropped"]
    lines = []
    b = summary.get("baseline") or {}
    if b:
        acc = b.get("test_exact_match")
        extra = f", first attempt {100 * b['test_first_exact_match']:.1f}%" \
            if sc and b.get("test_first_exact_match") is not None else ""
        strict = b.get("test_strict_exact_match")
        extra += f", strict {100 * strict:.1f}%" if strict is not None else ""
        lines.append(f"base model: test {100 * acc:.1f}%{extra}" if acc is not None else "")
    if summary.get("rounds") and summary.get("test_size"):
        # the same words as Compare and the report, on the latest round's seeds
        last = summary["rounds"][-1]["methods"]
        lines.append(sample_size(dict(summary, methods=last))
                     + ("; one seed: no interval, no winner"
                        if all(len(r.get("seeds", [])) < 2 for r in last.values()) else ""))
    rows = [head]
    for rd in summary.get("rounds", []):
        for method, row in rd["methods"].items():
            d = (row.get("test_exact_match") or {}).get("diff_vs_vanilla")
            dd = "-" if not d or d.get("mean") != d.get("mean") else fmt_ci(d, pct=True)
            rows.append([str(rd["round"]), method, f(row, "kept"),
                         f(row, "fixed" if sc else "rationalized"), f(row, "steps")]
                        + ([f(row, "test_first_exact_match", True)] if sc else [])
                        + [f(row, "test_exact_match", True),
                           f(row, "test_strict_exact_match", True), dd,
                           f(row, "aligned_tokens"), f(row, "dropped_tokens")])
    w = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines += ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(x for x in lines if x)
