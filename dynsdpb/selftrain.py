"""Self-training (STaR) and self-correction loops with the engine as the fine-tuning policy
(method.md §6; docs/method.md §6 says which choices are ours).

Every arm (method x seed) runs its own loop from the same seed and base model; all arms finish
round r before any starts round r+1, so per-round numbers are paired like `compare`'s.

    for r in 1..R, every arm:
      1) generate   the arm's model at the end of round r-1 (round 1: the base model) answers
                    the round's questions. star: a rationale + answer (`samples` per question
                    at `temperature`); with `rationalize`, questions it got wrong are asked
                    again with the gold answer as a hint, which never enters the training
                    prompt. selfcorrect: a first attempt, then a check-and-correct of it.
      2) filter     keep the traces whose extracted final answer is right (selfcorrect: the
                    corrected answer; training row = question + first attempt -> correction)
      3) fine-tune  the kept set with the arm's method: train.Arm + experiment.run_arms, one
                    engine experiment per round (DIR/round-XX/), starting from the arm's round
                    r-1 weights (`round_start: continue`) or the base model (`base`)
      4) evaluate   greedy exact match on the test split (selfcorrect: the first attempt and
                    after correction), as the arm's test metrics in its summary.json
      5) carry      continue mode, distilling arms: the teacher cache of the kept set, keyed
                    by question, goes to round r+1. There it teaches each training row the
                    first time the row is new (where DLB has no teacher yet), on the longest
                    common prefix of the cached and the regenerated target (lm_loss's
                    alignment); round.json logs the cached tokens kept and dropped.

Folder (`DIR`):
    selftrain.json              loop options, methods, seeds, base config (what resume reads)
    status.json                 state, round, phase (the CLI and the app read it)
    summary.json                per round and metric: mean/std/per seed/paired difference
    round-00/baseline.json      the base model on the test split (every arm's start)
    round-XX/                   an engine experiment: experiment.json, one run folder per arm
        <method>-s<seed>/       the engine's files (config, status, metrics, checkpoint, ...)
            traces.jsonl        every generated trace (correct, kept, rationalized)
            train.jsonl         the kept set (prompt, target, answer, question): the training data
            eval.jsonl          the test generations of the round's final model
            cache.pt            continue mode, distilling arms: the cache carried to round r+1
            round.json          this arm's numbers for the round; written last (= round done)

Resume works at every point: a finished round (round.json) is never redone; generation cut
off is redone from the same seed (its files are written only when complete); training cut off
resumes from the engine checkpoint of that round (the cache's use is a function of the step,
so the resumed round equals an uninterrupted one); a round killed while testing repeats the
test.
"""
from __future__ import annotations

import dataclasses
import io
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

from .config import RunConfig, check_config, from_dict, is_causal_lm
from .errors import ConfigError, Problem
from .experiment import arm_name, check_experiment, create_experiment, run_arms
from .generation import extract_answer, sample
from .layout import BatchLayout
from .lm_data import IGNORE, LMExample
from .lm_loss import TokenTeacher, common_prefix, token_loss
from .lm_task import CausalLMTask, _fingerprint
from .metrics import mean_std, paired_diff
from .store import (ExperimentDir, RunDir, atomic_write_bytes,
                    atomic_write_json, read_json, read_metrics)
from .train import Arm

META = "selftrain.json"
LOOPS = ("star", "selfcorrect")
ROUND_STARTS = ("continue", "base")

# Prompts. The STaR suffix asks for a short rationale; the answer is the last number.
STAR_SUFFIX = ("\nExplain your reasoning in one short sentence, then give the final answer "
               "as a number.")
HINT = "\n(Hint: the correct answer is {answer}.)"
CORRECT = ("{question}\n\nA first attempt answered:\n{attempt}\n\nCheck this answer. If it "
           "is wrong, correct it. End with the final answer as a number.")


def star_prompt(question: str) -> str:
    return question + STAR_SUFFIX


def correct_prompt(question: str, attempt: str) -> str:
    return CORRECT.format(question=question, attempt=attempt.strip())


# ----------------------------------------------------------------------------------------
# Loop options

LOOP_HELP = {
    "loop": "star: generate a rationale + answer, keep the right ones, fine-tune on them. "
            "selfcorrect: answer, then check and correct; train on (question + first attempt "
            "-> correction) where the correction is right.",
    "rounds": "Rounds of generate -> filter -> fine-tune -> evaluate.",
    "questions": "Training questions per round (the first ones of the training split, the same "
                 "every round, as STaR revisits its training set); 0 = all.",
    "samples": "Generations per question and round (more than 1 needs temperature > 0).",
    "temperature": "Sampling temperature of the training-data generations (0 = greedy). "
                   "Evaluation is always greedy.",
    "rationalize": "star only: ask the questions with no right sample again with the gold "
                   "answer as a hint; keep right answers (the hint is not in the training "
                   "prompt).",
    "round_start": "continue: each round fine-tunes the previous round's weights and carries "
                   "the teacher cache; base: each round fine-tunes the base model again (as "
                   "STaR does), generating with the previous round's model.",
}


@dataclass(frozen=True)
class LoopConfig:
    loop: str = "star"
    rounds: int = 2
    questions: int = 32
    samples: int = 1
    temperature: float = 0.7
    rationalize: bool = False
    round_start: str = "continue"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def loop_from_dict(d: dict) -> LoopConfig:
    """LoopConfig from a mapping (the CLI's strings, the app's widgets, selftrain.json), typed
    and checked: every problem at once, each naming the field and the fix."""
    names = {f.name: f for f in dataclasses.fields(LoopConfig)}
    unknown = [k for k in d if k not in names]
    if unknown:
        raise ConfigError.one(unknown[0], d[unknown[0]], f"unknown loop option; use "
                              f"{', '.join(names)}")
    vals, P = {}, []
    for k, v in d.items():
        typ = names[k].type
        try:
            if typ in (bool, "bool"):
                s = str(v).strip().lower()
                if s not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                    raise ValueError
                vals[k] = s in ("1", "true", "yes", "on")
            elif typ in (int, "int"):
                vals[k] = int(str(v).strip()) if not isinstance(v, int) else v
            elif typ in (float, "float"):
                vals[k] = float(v)
            else:
                vals[k] = str(v).strip()
        except (TypeError, ValueError):
            P.append(Problem(k, v, {bool: "use true or false", int: "use a whole number",
                                    float: "use a number such as 0.7"}.get(
                                        {"bool": bool, "int": int, "float": float}.get(typ, typ),
                                        "use text")))
    if P:
        raise ConfigError(P)
    return check_loop(LoopConfig(**vals))


def check_loop(opt: LoopConfig) -> LoopConfig:
    P: list[Problem] = []
    if opt.loop not in LOOPS:
        P.append(Problem("loop", opt.loop, f"use one of {', '.join(LOOPS)}"))
    if opt.round_start not in ROUND_STARTS:
        P.append(Problem("round_start", opt.round_start, f"use one of {', '.join(ROUND_STARTS)}"))
    if opt.rounds < 1:
        P.append(Problem("rounds", opt.rounds, "run at least 1 round"))
    if opt.questions < 0:
        P.append(Problem("questions", opt.questions, "use 0 (all) or a positive count, e.g. 32"))
    if opt.samples < 1:
        P.append(Problem("samples", opt.samples, "generate at least 1 sample per question"))
    if not (opt.temperature >= 0 and opt.temperature == opt.temperature):
        P.append(Problem("temperature", opt.temperature, "use 0 (greedy) or a number > 0, "
                         "e.g. 0.7"))
    elif opt.samples > 1 and opt.temperature == 0:
        P.append(Problem("samples", opt.samples, "greedy generation (temperature 0) gives the "
                         "same answer every time; use samples 1 or a temperature > 0"))
    if opt.rationalize and opt.loop != "star":
        P.append(Problem("rationalize", True, "rationalization is a STaR step; use loop star "
                         "or turn it off"))
    if P:
        raise ConfigError(P)
    return opt


# The CPU demo (the app's preset, `dynsdpb selftrain --demo`): arith-easy on smollm2-135m with
# LoRA, small enough for a few minutes per round on 2 (shared) cores.
CPU_DEMO = {
    "config": dict(model="smollm2-135m", dataset="arith-easy", steps=8, batch_size=8,
                   lr=5e-4, max_len=96, max_new_tokens=16, val_size=4, test_size=16,
                   max_train_samples=64, eval_every=8, checkpoint_every=4, probe_size=4,
                   eval_generations=2, save_model=False, warmup_ratio=0.1),
    "loop": dict(loop="star", rounds=2, questions=32, samples=1, temperature=0.7,
                 rationalize=False, round_start="continue"),
    "methods": ["vanilla", "dynsdpb"],
    "seeds": [0],
}


# ----------------------------------------------------------------------------------------
# Generation

GenerateFn = Callable[..., list[list[str]]]


def _right(score, got: str | None, gold: str) -> bool:
    return got is not None and score(got, gold) == 1.0


def star_traces(gen: GenerateFn, model, tok, questions: list[LMExample], opt: LoopConfig,
                max_new_tokens: int, score) -> list[dict]:
    """Every STaR generation of one round: rationale + answer per sample, then (rationalize)
    one hinted generation for each question with no right sample."""
    comps = gen(model, tok, [star_prompt(q.prompt) for q in questions],
                max_new_tokens=max_new_tokens, temperature=opt.temperature, n=opt.samples)
    traces = []
    for q, cs in zip(questions, comps, strict=True):
        for c in cs:
            got = extract_answer(c)
            traces.append(dict(question=q.prompt, answer=q.answer, completion=c, extracted=got,
                               correct=_right(score, got, q.answer), rationalized=False))
    if opt.rationalize:
        solved = {t["question"] for t in traces if t["correct"]}
        wrong = [q for q in questions if q.prompt not in solved]
        hinted = gen(model, tok, [star_prompt(q.prompt) + HINT.format(answer=q.answer)
                                  for q in wrong],
                     max_new_tokens=max_new_tokens, temperature=opt.temperature, n=1) if wrong \
            else []
        for q, cs in zip(wrong, hinted, strict=True):
            got = extract_answer(cs[0])
            traces.append(dict(question=q.prompt, answer=q.answer, completion=cs[0],
                               extracted=got, correct=_right(score, got, q.answer),
                               rationalized=True))
    return traces


def selfcorrect_traces(gen: GenerateFn, model, tok, questions: list[LMExample],
                       opt: LoopConfig, max_new_tokens: int, score) -> list[dict]:
    """First attempts (samples per question), then one check-and-correct of each."""
    firsts = gen(model, tok, [q.prompt for q in questions], max_new_tokens=max_new_tokens,
                 temperature=opt.temperature, n=opt.samples)
    pairs = [(q, f) for q, fs in zip(questions, firsts, strict=True) for f in fs]
    corrs = gen(model, tok, [correct_prompt(q.prompt, f) for q, f in pairs],
                max_new_tokens=max_new_tokens, temperature=opt.temperature, n=1)
    traces = []
    for (q, f), cs in zip(pairs, corrs, strict=True):
        g1, g2 = extract_answer(f), extract_answer(cs[0])
        traces.append(dict(question=q.prompt, answer=q.answer, first=f, first_extracted=g1,
                           first_correct=_right(score, g1, q.answer), completion=cs[0],
                           extracted=g2, correct=_right(score, g2, q.answer),
                           rationalized=False))
    return traces


def training_rows(loop: str, traces: list[dict]) -> list[dict]:
    """The kept set: right traces, one row per distinct (prompt, target). The prompt never
    holds the hint; self-correction's holds the question and the first attempt."""
    rows, seen = [], set()
    for t in traces:
        if not t["correct"]:
            continue
        prompt = (star_prompt(t["question"]) if loop == "star"
                  else correct_prompt(t["question"], t["first"]))
        target = t["completion"].strip()
        if (prompt, target) in seen:
            continue
        seen.add((prompt, target))
        t["kept"] = True
        rows.append(dict(prompt=prompt, target=target, answer=t["answer"],
                         question=t["question"], rationalized=t["rationalized"]))
    return rows


def evaluate(loop: str, gen: GenerateFn, model, tok, tests: list[LMExample], score,
             max_new_tokens: int) -> tuple[dict, list[dict]]:
    """Greedy exact match on the test questions: (metrics, one row per question).
    star: test_exact_match. selfcorrect: test_first_exact_match (first attempt),
    test_exact_match (after correction), test_fixed / test_broken (share of questions whose
    answer the correction turned right / wrong)."""
    n = max(len(tests), 1)
    if loop == "star":
        comps = gen(model, tok, [star_prompt(e.prompt) for e in tests],
                    max_new_tokens=max_new_tokens, temperature=0.0, n=1)
        rows = []
        for e, cs in zip(tests, comps, strict=True):
            got = extract_answer(cs[0])
            rows.append(dict(question=e.prompt, answer=e.answer, completion=cs[0],
                             extracted=got, correct=_right(score, got, e.answer)))
        return {"test_exact_match": sum(r["correct"] for r in rows) / n}, rows
    firsts = gen(model, tok, [e.prompt for e in tests], max_new_tokens=max_new_tokens,
                 temperature=0.0, n=1)
    corrs = gen(model, tok, [correct_prompt(e.prompt, f[0]) for e, f in zip(tests, firsts)],
                max_new_tokens=max_new_tokens, temperature=0.0, n=1)
    rows = []
    for e, f, c in zip(tests, firsts, corrs, strict=True):
        g1, g2 = extract_answer(f[0]), extract_answer(c[0])
        rows.append(dict(question=e.prompt, answer=e.answer, first=f[0], first_extracted=g1,
                         first_correct=_right(score, g1, e.answer), completion=c[0],
                         extracted=g2, correct=_right(score, g2, e.answer)))
    return {"test_first_exact_match": sum(r["first_correct"] for r in rows) / n,
            "test_exact_match": sum(r["correct"] for r in rows) / n,
            "test_fixed": sum(r["correct"] and not r["first_correct"] for r in rows) / n,
            "test_broken": sum(r["first_correct"] and not r["correct"] for r in rows) / n}, rows


# ----------------------------------------------------------------------------------------
# One arm's task for one round

def first_appearance(layout: BatchLayout, steps: int) -> dict[int, list[tuple[int, int]]]:
    """step -> [(position in the new half, row)] for each training row's first appearance as
    new within `steps` steps: the first epoch of the stream (every row exactly once). The
    carried cache teaches there; the loss and the logged counts both use this."""
    n, c = layout.n, layout.chunk_size
    out: dict[int, list[tuple[int, int]]] = {}
    for k in range(min(steps, -(-n // c))):
        for j, row in enumerate(layout.chunk(k)):
            if k * c + j < n:
                out.setdefault(k, []).append((j, row))
    return out


def _target_ids(row: dict[str, list[int]]) -> torch.Tensor:
    """The target token ids of an encoded row (what token_loss aligns against)."""
    return torch.tensor([t for t in row["labels"] if t != IGNORE])


class RoundTask(CausalLMTask):
    """One arm's task in one round: the shared decoder task (tokenizer, scorer, the frozen
    LoRA base) with the round's kept set as training split, the loop's prompts on val/test,
    and the teacher cache carried from earlier rounds (`carried`: question -> cache entry).

    Its hooks differ from CausalLMTask's in three places: `loss` adds the carried teachers at
    each row's first appearance (train.Arm gives only carried rows a teacher), `signal_record`
    counts the in-round alignment over the carried rows only, and `test_metrics` is the loop's
    evaluation (STaR: rationale prompt; self-correction: first attempt and correction)."""

    def __init__(self, shared: CausalLMTask, rnd: int, loop: str, rows: list[dict],
                 val: list[LMExample], test: list[LMExample], gen: GenerateFn,
                 carried: dict | None = None, eval_path: Path | None = None):
        self.__dict__.update(shared.__dict__)     # tokenizer, options, scorer, max_len
        self.shared, self.round, self.loop, self.gen = shared, rnd, loop, gen
        exs = [LMExample(r["prompt"], r["target"], r["answer"]) for r in rows]
        self.keys = [r["question"] for r in rows]
        self.train, self.val, self.test = (self._encode(s) for s in (exs, val, test))
        self.data = SimpleNamespace(**vars(shared.data))
        self.data.train_fingerprint = _fingerprint(exs)
        self.carried = carried or {}
        self.eval_path = eval_path
        self.arm: Arm | None = None      # attached after the Arm is built (its step, layout)
        self.teach_at: dict[int, list[tuple[int, int]]] = {}
        self.applied = {"rows": 0, "aligned_tokens": 0}   # what the loss did (tests read it)

    def attach(self, arm: Arm) -> None:
        self.arm = arm
        use = self.carried and arm.cfg.distills
        self.teach_at = first_appearance(arm.layout, arm.cfg.steps) if use else {}

    def build_model(self, cfg, arm: str):
        # One adapter per arm and round on the shared base (a name is used once per base).
        if self.opt.finetune == "lora":
            return self.shared.build_model(cfg, f"{arm}-r{self.round}")
        return self.shared.build_model(cfg, arm)

    def alignment_counts(self) -> dict:
        """What the carried cache does in this round: rows it teaches, and their cached target
        tokens kept (common prefix with the row's target) and dropped."""
        out = {"cache_questions": len(self.carried), "rows": 0, "aligned_tokens": 0,
               "dropped_tokens": 0}
        for pairs in self.teach_at.values():
            for _, row in pairs:
                e = self.carried.get(self.keys[row])
                if e is None:
                    continue
                n = common_prefix(e["target_ids"], _target_ids(self.train.rows[row]))
                out["rows"] += 1
                out["aligned_tokens"] += n
                out["dropped_tokens"] += len(e["target_ids"]) - n
        return out

    def loss(self, logits, batch, teacher):
        teachers = list(teacher) if teacher is not None else [None] * len(batch.labels)
        pairs = self.teach_at.get(self.arm.step_idx, []) if self.arm is not None else []
        n_car = len(self.arm.layout.batch(self.arm.step_idx).carried) if pairs else 0
        taught = []
        for j, row in pairs:
            e = self.carried.get(self.keys[row])
            if e is not None and teachers[n_car + j] is None:
                teachers[n_car + j] = TokenTeacher(kind="full" if "logits" in e else "topk",
                                                   **{k: v for k, v in e.items()})
                taught.append(n_car + j)
        parts = token_loss(logits, batch.labels, teachers)
        self.applied["rows"] += len(taught)
        self.applied["aligned_tokens"] += int(sum(int(parts.aligned[b]) for b in taught))
        return parts

    def signal_record(self, entries, parts) -> dict:
        rec = super().signal_record(entries, parts)
        # the engine's aligned/dropped: the in-round (carried-half) teachers only
        n_tgt = sum(len(e["target_ids"]) for e in entries)
        aligned = int(parts.aligned[:len(entries)].sum())
        rec.update(aligned_tokens=aligned, dropped_tokens=n_tgt - aligned)
        return rec

    def test_metrics(self, model, device, use_amp) -> dict:
        m, rows = evaluate(self.loop, self.gen, model, self.tokenizer, self.test.examples,
                           self.score, self.opt.max_new_tokens)
        if self.eval_path is not None:
            _write_jsonl(self.eval_path, rows)
        return m


@torch.no_grad()
def teacher_cache(task: RoundTask, model, cfg: RunConfig, device, old: dict | None = None,
                  bs: int = 16) -> dict:
    """The cache carried to the next round: per question of the kept set, the round's final
    model (eval mode: no dropout) on the question's first kept trace, packed as the in-round
    cache is (alpha/tau fixed now, at the round's last step). Questions not trained this
    round keep their older entry."""
    first: dict[str, int] = {}
    for i, k in enumerate(task.keys):
        first.setdefault(k, i)
    ids = list(first.values())
    out = dict(old or {})
    was = model.training
    model.eval()
    try:
        for s in range(0, len(ids), bs):
            b = task.batch(task.train, ids[s:s + bs], device)
            logits = task.forward(model, b)
            for i, e in zip(ids[s:s + bs], task.pack(cfg, logits, b.labels, cfg.steps - 1)):
                out[task.keys[i]] = e
    finally:
        model.train(was)
    return out


# ----------------------------------------------------------------------------------------
# Files

def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """The whole file at once (temp + rename): a file that exists is complete."""
    atomic_write_bytes(Path(path), b"".join((json.dumps(r) + "\n").encode() for r in rows))


def _read_jsonl(path: Path) -> list[dict]:
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


def check_selftrain(base: RunConfig, loop: LoopConfig, methods: list[str],
                    seeds: list[int]) -> None:
    """Every check that needs no model or data: the loop options and each arm's config."""
    check_loop(loop)
    if not is_causal_lm(base):
        raise ConfigError.one("model", base.model, "self-training generates text: use a decoder "
                              "model such as smollm2-135m and a generation dataset such as "
                              "arith-easy")
    check_experiment(base, methods, seeds)


def create_selftrain(out: str | Path, base: RunConfig, loop: LoopConfig, methods: list[str],
                     seeds: list[int], name: str = "") -> Path:
    """Check everything that needs no model or data, then write DIR/selftrain.json."""
    check_selftrain(base, loop, methods, seeds)
    p = Path(out)
    p.mkdir(parents=True, exist_ok=True)
    atomic_write_json(p / META, {"kind": "selftrain", "id": p.name, "name": name or p.name,
                                 "created": time.time(), "loop": loop.to_dict(),
                                 "methods": list(methods), "seeds": [int(s) for s in seeds],
                                 "base_config": base.to_dict()})
    RunDir(p).set_status("queued", round=0, rounds=loop.rounds, phase="queued")
    return p


# ----------------------------------------------------------------------------------------
# Models for generation

class _Policies:
    """The models that generate (and evaluate when nothing was trained): an arm's weights at
    the end of a round, or the base model (state None). LoRA: one scratch adapter on the shared
    base, loaded per use; full fine-tuning: a fresh copy of the base."""

    def __init__(self, shared: CausalLMTask, cfg: RunConfig, device):
        self.shared, self.cfg, self.device = shared, cfg, device
        self._fresh = None

    def get(self, state: dict | None):
        from .lm_models import load_causal_lm
        if self.shared.opt.finetune == "full":
            m = load_causal_lm(self.shared.model_name, self.shared.trust_remote_code)
            if state is not None:
                m.load_state_dict(state)
            return m.to(self.device)
        if self._fresh is None:
            torch.manual_seed(self.cfg.seed)
            m = self.shared.build_model(self.cfg, "policy")
            self._fresh = m.state_dict()          # LoRA B = 0: the base model
            self._model = m
        self._model.load_state_dict(self._fresh if state is None else state)
        return self._model.to(self.device)


def _state(rd: RunDir) -> dict | None:
    """The weights at the end of a finished round's training (its final checkpoint)."""
    if not rd.has_checkpoint():
        return None
    return torch.load(rd.checkpoint_path, map_location="cpu", weights_only=True)["model"]


def _carried(path: Path, arm: str, r: int, opt: LoopConfig, cfg: RunConfig) -> dict:
    """The teacher cache an arm carries into round r (continue mode, distilling arms): the
    cache.pt of its latest round before r that trained, {} if none."""
    if opt.round_start != "continue" or not cfg.distills:
        return {}
    for k in range(r - 1, 0, -1):
        p = round_dir(path, k) / arm / "cache.pt"
        if p.is_file():
            return torch.load(p, map_location="cpu", weights_only=True)
    return {}


def _end_state(path: Path, arm: str, r: int, round_start: str) -> tuple[dict | None, int]:
    """An arm's weights at the end of round r and the round they were trained in (0: the base
    model). continue: the latest round <= r that trained; base: round r's, if it trained."""
    for k in range(r, 0, -1):
        rd = RunDir(round_dir(path, k) / arm)
        info = read_json(rd.path / "round.json", {}) or {}
        if info.get("steps"):
            return _state(rd), k
        if round_start == "base":
            break
    return None, 0


# ----------------------------------------------------------------------------------------
# The loop

ProgressFn = Callable[[str, dict], None]
ROUND_METRICS = ("questions", "traces", "kept", "rationalized", "fixed", "steps",
                 "test_exact_match", "test_first_exact_match", "aligned_tokens", "dropped_tokens")


def run_selftrain(path: str | Path, stop: threading.Event | None = None,
                  progress: ProgressFn | None = None, resume: bool = False,
                  generate: GenerateFn | None = None) -> dict:
    """Run (or resume) a self-training folder made by `create_selftrain`; returns
    {"state": finished | stopped | failed, "summary": ..., "error": ...}. A failed arm ends
    the loop after its round's training (state failed; resume retries that arm); anything
    raised also leaves DIR/status.json failed, with the error, before it propagates."""
    try:
        return _run_selftrain(Path(path), stop, progress, resume, generate)
    except Exception as e:
        if is_selftrain(path) and RunDir(path).raw_status().get("state") in ("queued",
                                                                             "running"):
            hint = getattr(e, "hint", None) or ("fix the input" if isinstance(e, ConfigError)
                                                else "resume to retry from the last round")
            RunDir(path).set_status("failed", error=f"{type(e).__name__}: {e}", hint=hint)
        raise


def _run_selftrain(path: Path, stop, progress, resume, generate) -> dict:
    from .models import pick_device
    from .store import check_not_busy
    from .tasks import prepare
    meta = read_meta(path)
    base = from_dict(meta["base_config"])
    opt = loop_from_dict(meta["loop"])
    methods, seeds = list(meta["methods"]), [int(s) for s in meta["seeds"]]
    cfgs = [check_config(c) for c in check_experiment(base, methods, seeds)]
    gen = generate or sample
    stop = stop or threading.Event()
    top = RunDir(path)
    if resume:
        check_not_busy([top], str(path))
    say = progress or (lambda who, rec: None)

    def phase(r: int, name: str, **kw) -> None:
        top.set_status("running", round=r, rounds=opt.rounds, phase=name, **kw)
        say("selftrain", {"event": "phase", "round": r, "phase": name, **kw})

    phase(0, "loading")
    shared = prepare(base)                       # tokenizer, splits, scorer; the LoRA base
    device = pick_device(base)
    pool = shared.train.examples
    questions = pool[:opt.questions] if opt.questions else pool
    star = opt.loop == "star"
    val = [LMExample(star_prompt(e.prompt) if star else e.prompt, e.target, e.answer)
           for e in shared.val.examples]
    tests = list(shared.test.examples)
    policies = _Policies(shared, base, device)

    def policy_traces(state, seed: int, r: int) -> list[dict]:
        # Sampling is seeded by (seed, round), the same for every method: arms that generate
        # with the same weights (round 1: the base model) get the same traces.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + r)
            fn = star_traces if star else selfcorrect_traces
            return fn(gen, policies.get(state), shared.tokenizer, questions, opt,
                      base.max_new_tokens, shared.score)

    # Round 0: the base model on the test split, once (every arm starts from it).
    b_path = round_dir(path, 0) / "baseline.json"
    if not b_path.is_file():
        phase(0, "evaluating the base model")
        m, rows = evaluate(opt.loop, gen, policies.get(None), shared.tokenizer, tests,
                           shared.score, base.max_new_tokens)
        _write_jsonl(round_dir(path, 0) / "eval.jsonl", rows)
        atomic_write_json(b_path, m)

    for r in range(1, opt.rounds + 1):
        rdir = round_dir(path, r)
        if not ExperimentDir(rdir).exists():
            create_experiment(path, base, methods, seeds, name=f"{meta.get('name')} round {r}",
                              exp_dir=rdir, check=False)
        arms = [(c, RunDir(rdir / arm_name(c))) for c in cfgs]
        todo = [(c, rd) for c, rd in arms if not (rd.path / "round.json").is_file()]
        if not todo:
            continue
        if stop.is_set():
            return _end(path, top, "stopped", meta)

        # 1-2) generate and filter, every arm before any trains (lockstep)
        shared_gen: dict[int, list[dict]] = {}
        for c, rd in todo:
            if (rd.path / "train.jsonl").is_file():
                continue
            phase(r, "generating", arm=rd.id)
            # the arm's model at the end of round r-1 (round 1: the base model)
            state, _ = _end_state(path, rd.id, r - 1, opt.round_start)
            t0 = time.time()
            if state is None and c.seed in shared_gen:
                traces = [dict(t) for t in shared_gen[c.seed]]
            else:
                traces = policy_traces(state, c.seed, r)
                if state is None:
                    shared_gen[c.seed] = [dict(t) for t in traces]
            rows = training_rows(opt.loop, traces)
            _write_jsonl(rd.path / "traces.jsonl", traces)
            atomic_write_json(rd.path / "gen.json", {"seconds": round(time.time() - t0, 2)})
            _write_jsonl(rd.path / "train.jsonl", rows)   # last: its presence = generated
            if stop.is_set():
                return _end(path, top, "stopped", meta)

        # 3-4) fine-tune every arm with a kept set, in lockstep; test at the end of each
        phase(r, "training")
        live, tasks = [], {}
        for c, rd in todo:
            rows = _read_jsonl(rd.path / "train.jsonl")
            if not rows or rd.status().get("state") == "finished":
                continue
            task = RoundTask(shared, r, opt.loop, rows, val, tests, gen,
                             _carried(path, rd.id, r, opt, c), eval_path=rd.path / "eval.jsonl")
            resume_ckpt = rd.has_checkpoint()
            arm = Arm(c, task, rd, device=device, resume=resume_ckpt)
            task.attach(arm)
            if not resume_ckpt and opt.round_start == "continue" and r > 1:
                state, _ = _end_state(path, rd.id, r - 1, "continue")
                if state is not None:
                    arm.model.load_state_dict(state)
            live.append(arm)
            tasks[rd.id] = task
        final = run_arms(live, stop, progress) if live else {}
        if any(s == "stopped" for s in final.values()) or stop.is_set():
            return _end(path, top, "stopped", meta)
        failed = [a for a, s in final.items() if s == "failed"]
        if failed:
            st = RunDir(rdir / failed[0]).raw_status()
            return _end(path, top, "failed", meta, error=f"round {r}, {failed[0]}: "
                        f"{st.get('error')} (hint: {st.get('hint')}); resume to retry")

        # 5) evaluate arms with nothing to train, carry the cache, write round.json
        phase(r, "finishing round")
        for c, rd in todo:
            rows = _read_jsonl(rd.path / "train.jsonl")
            traces = _read_jsonl(rd.path / "traces.jsonl")
            info = dict(round=r, arm=rd.id, method=c.method, seed=c.seed,
                        questions=len(questions), traces=len(traces), kept=len(rows),
                        rationalized=sum(bool(x.get("rationalized")) for x in rows),
                        rationalize_tried=sum(bool(t.get("rationalized")) for t in traces),
                        train_rows=len(rows),
                        gen_seconds=(read_json(rd.path / "gen.json", {}) or {}).get("seconds"))
            if not star:
                info["fixed"] = sum(t["correct"] and not t["first_correct"] for t in traces)
                info["first_correct"] = sum(bool(t["first_correct"]) for t in traces)
            cache_info = {"cache_questions": 0, "rows": 0, "aligned_tokens": 0,
                          "dropped_tokens": 0}
            if rows:
                s = rd.summary()
                task = tasks.get(rd.id)
                if task is None:     # trained before a restart: rebuild it for the counts
                    task = RoundTask(shared, r, opt.loop, rows, val, tests, gen,
                                     _carried(path, rd.id, r, opt, c))
                    task.teach_at = (first_appearance(BatchLayout(len(rows), c.chunk_size,
                                                                  c.seed, c.distills), c.steps)
                                     if task.carried and c.distills else {})
                cache_info = task.alignment_counts()
                info.update(steps=s.get("steps"), wall_time=s.get("wall_time"),
                            **{k: v for k, v in s.items() if k.startswith("test_")})
                if opt.round_start == "continue" and c.distills:
                    # the cache carried on: this round's entries over the older ones
                    new = teacher_cache(task, policies.get(_state(rd)), c, device, task.carried)
                    buf = io.BytesIO()
                    torch.save(new, buf)
                    atomic_write_bytes(rd.path / "cache.pt", buf.getvalue())
            else:
                # nothing kept: the arm's model stays what it was; test that model
                phase(r, "evaluating", arm=rd.id)
                state, _ = _end_state(path, rd.id, r - 1, opt.round_start)
                m, ev = evaluate(opt.loop, gen, policies.get(state), shared.tokenizer, tests,
                                 shared.score, base.max_new_tokens)
                _write_jsonl(rd.path / "eval.jsonl", ev)
                info.update(steps=0, **m)
                rd.set_status("finished", step=0, steps=0,
                              note="no right traces this round: nothing to fine-tune")
            info.update(cache_info)
            atomic_write_json(rd.path / "round.json", info)
            say(rd.id, {"event": "round", **info})
        write_summary(path)
    return _end(path, top, "finished", meta)


def _end(path: Path, top: RunDir, state: str, meta: dict, error: str = "") -> dict:
    top.set_status(state, phase=state, error=error or None)
    summary = write_summary(path)
    return {"state": state, "summary": summary, "error": error}


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
    return {"kind": "selftrain", "loop": meta.get("loop"), "methods": meta.get("methods"),
            "seeds": meta.get("seeds"), "primary_metric": "test_exact_match",
            "baseline": read_json(round_dir(path, 0) / "baseline.json", None),
            "rounds": rounds, "state": RunDir(path).status().get("state")}


def write_summary(path: str | Path) -> dict:
    s = summarize(path)
    atomic_write_json(Path(path) / "summary.json", s)
    return s


def format_rounds(summary: dict) -> str:
    """One line per round and method: kept, rationalized, steps, accuracy (%), with the paired
    difference to vanilla; mean over seeds."""
    sc = (summary.get("loop") or {}).get("loop") == "selfcorrect"

    def f(row, m, pct=False):
        v = (row.get(m) or {}).get("mean")
        if v is None or v != v:
            return "n/a"
        return f"{100 * v:.1f}" if pct else f"{v:.1f}".rstrip("0").rstrip(".")
    head = ["round", "method", "kept", "rationalized" if not sc else "fixed", "steps"] + \
        (["first %", "corrected %"] if sc else ["test %"]) + ["diff vs vanilla", "aligned",
                                                           "dropped"]
    lines = []
    b = summary.get("baseline") or {}
    if b:
        acc = b.get("test_exact_match")
        extra = f", first attempt {100 * b['test_first_exact_match']:.1f}%" \
            if sc and b.get("test_first_exact_match") is not None else ""
        lines.append(f"base model: test {100 * acc:.1f}%{extra}" if acc is not None else "")
    rows = [head]
    for rd in summary.get("rounds", []):
        for method, row in rd["methods"].items():
            d = (row.get("test_exact_match") or {}).get("diff_vs_vanilla")
            dd = "-" if not d or d.get("mean") != d.get("mean") else f"{100 * d['mean']:+.1f}"
            rows.append([str(rd["round"]), method, f(row, "kept"),
                         f(row, "fixed" if sc else "rationalized"), f(row, "steps")]
                        + ([f(row, "test_first_exact_match", True)] if sc else [])
                        + [f(row, "test_exact_match", True), dd, f(row, "aligned_tokens"),
                           f(row, "dropped_tokens")])
    w = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines += ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(x for x in lines if x)
