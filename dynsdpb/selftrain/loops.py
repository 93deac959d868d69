"""The self-training loops' own pieces (selftrain/run.py drives them): the prompts, the loop
options (`LoopConfig`, `loop_from_dict`, `check_loop`, the CPU demo preset), the generation of
one round's traces (`star_traces`, `selfcorrect_traces`), the kept set they give
(`training_rows`), and the greedy test of a model (`evaluate`). Plain functions of a generator,
a model and a tokenizer: no files, no engine.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import math
import re

from dynsdpb.errors import ConfigError, Problem
from dynsdpb.decoder.generation import extract_answer, is_truncated, strict_answer
from dynsdpb.decoder.data import LMExample

LOOPS = ("star", "selfcorrect")
ROUND_STARTS = ("base", "continue")

# Prompts. Both ask for a short rationale that ends in a marked final answer ("The answer is
# N."), which the strict rule reads (decoder.generation.strict_answer); the hint never enters
# a training prompt.
STAR_SUFFIX = ("\nThink it through in one or two short sentences, then end with "
               "\"The answer is N.\" where N is the final answer as a number.")
HINT = "\n(Hint: the correct answer is {answer}.)"
CORRECT = ("{question}\n\nA first attempt answered:\n{attempt}\n\nCheck this answer. If it "
           "is wrong, correct it. End with \"The answer is N.\" where N is the final answer "
           "as a number.")
# A kept STaR trace has reasoning before its marked answer: at least this many words.
MIN_RATIONALE_WORDS = 3
# Why a trace was not kept (round.json counts each; traces.jsonl marks each trace).
DROP_REASONS = ("wrong", "truncated", "unmarked", "no_reasoning", "duplicate")
_MARK = re.compile(r"(?:####|\b(?:the\s+)?(?:final\s+)?answer\b)", re.IGNORECASE)


# Answer-format orders of the datasets' own prompts that contradict a rationale (arith-easy's
# products: "Give only the result as your final answer."): dropped from the STaR prompt.
_ONLY_RESULT = re.compile(r"\s*Give only the (?:result|answer|number)[^.\n]*\.?", re.IGNORECASE)


def star_prompt(question: str) -> str:
    """The question without an order to give only the result, then STAR_SUFFIX."""
    return _ONLY_RESULT.sub("", question).rstrip() + STAR_SUFFIX


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
    "round_start": "base (STaR as published): each round fine-tunes the base model again on "
                   "the round's kept set, generating with the previous round's model. "
                   "continue: each round fine-tunes the previous round's weights.",
    "step_growth": "Training steps grow by this factor each round (STaR: 1.2, i.e. +20%); "
                   "round r trains ceil(steps x step_growth^(r-1)) steps. 1 = fixed steps.",
    "carry_teacher": "continue only, distilling arms [ours, not DLB]: carry the round's final "
                     "model's teacher cache into the next round, where it teaches each row at "
                     "its first appearance (k steps old at step k). Off (default): a round "
                     "starts like DLB's step 1, plain CE until the first carried chunk has a "
                     "teacher computed in this round.",
}


@dataclass(frozen=True)
class LoopConfig:
    loop: str = "star"
    rounds: int = 2
    questions: int = 32
    samples: int = 1
    temperature: float = 0.7
    rationalize: bool = False
    round_start: str = "base"
    step_growth: float = 1.2
    carry_teacher: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def round_steps(self, steps: int, r: int) -> int:
        """Training steps of round r (1-based): steps x step_growth^(r-1), rounded up."""
        return max(1, math.ceil(steps * self.step_growth ** (r - 1) - 1e-9))


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
    if not (opt.step_growth >= 1 and math.isfinite(opt.step_growth)):
        P.append(Problem("step_growth", opt.step_growth, "use 1 (fixed steps) or more, e.g. "
                         "1.2 (STaR: +20% per round)"))
    if opt.carry_teacher and opt.round_start != "continue":
        P.append(Problem("carry_teacher", True, "a carried teacher needs round_start continue "
                         "(base restarts from the base model); turn it off or use continue"))
    if opt.rationalize and opt.loop != "star":
        P.append(Problem("rationalize", True, "rationalization is a STaR step; use loop star "
                         "or turn it off"))
    if P:
        raise ConfigError(P)
    return opt


# The CPU demo (the app's preset, and `dynsdpb selftrain` without --config): arith-easy on
# smollm2-135m with LoRA, small enough for a few minutes per round on 2 (shared) cores; the
# decoder temperatures (config.DECODER_TEMPERATURES) that the top-k cache can carry; 48 new
# tokens, enough for a one-sentence rationale and its marked answer.
CPU_DEMO = {
    "config": dict(model="smollm2-135m", dataset="arith-easy", steps=8, batch_size=8,
                   lr=5e-4, max_len=160, max_new_tokens=48, val_size=4, test_size=16,
                   max_train_samples=64, eval_every=8, checkpoint_every=4, probe_size=4,
                   eval_generations=2, save_model=False, warmup_ratio=0.1,
                   tau=1.0, tau_0=1.0, tau_min=1.0, tau_max=1.5, kd_cache="topk"),
    "loop": dict(loop="star", rounds=2, questions=32, samples=1, temperature=0.7,
                 rationalize=False, round_start="base", step_growth=1.2,
                 carry_teacher=False),
    "methods": ["vanilla", "dynsdpb"],
    "seeds": [0],
}


# ----------------------------------------------------------------------------------------
# Generation

GenerateFn = Callable[..., list[list[str]]]


def _right(score, got: str | None, gold: str) -> bool:
    return got is not None and score(got, gold) == 1.0


def _scored(c: str, gold: str, score) -> dict:
    """A completion's flexible and strict answers and whether it was cut off."""
    trunc = is_truncated(c)
    got, got_s = extract_answer(c), strict_answer(c, trunc)
    return dict(completion=str(c), extracted=got, correct=_right(score, got, gold),
                truncated=trunc, strict_extracted=got_s,
                strict_correct=_right(score, got_s, gold))


def has_rationale(text: str) -> bool:
    """Reasoning before the marked final answer: at least MIN_RATIONALE_WORDS words before
    the last marker ("The (final) answer ...", "####"); a bare answer has none."""
    marks = list(_MARK.finditer(text))
    before = text[:marks[-1].start()] if marks else ""
    return len(before.split()) >= MIN_RATIONALE_WORDS


def drop_reason(loop: str, t: dict) -> str | None:
    """Why a trace is not kept (None: kept unless a duplicate): wrong answer, cut off at
    max_new_tokens, no marked answer at its end, or (STaR) no reasoning before it."""
    if not t["correct"] and not t.get("strict_correct"):
        return "wrong"
    if t.get("truncated"):
        return "truncated"
    if not t.get("strict_correct"):      # finished, the last number right, but not in place
        return "unmarked"
    if loop == "star" and not has_rationale(t["completion"]):
        return "no_reasoning"
    return None


def star_traces(gen: GenerateFn, model, tok, questions: list[LMExample], opt: LoopConfig,
                max_new_tokens: int, score) -> list[dict]:
    """Every STaR generation of one round: rationale + answer per sample, then (rationalize)
    one hinted generation for each question with no right sample."""
    comps = gen(model, tok, [star_prompt(q.prompt) for q in questions],
                max_new_tokens=max_new_tokens, temperature=opt.temperature, n=opt.samples)
    traces = []
    for q, cs in zip(questions, comps, strict=True):
        for c in cs:
            traces.append(dict(question=q.prompt, answer=q.answer, **_scored(c, q.answer, score),
                               rationalized=False))
    if opt.rationalize:
        solved = {t["question"] for t in traces if drop_reason("star", t) is None}
        wrong = [q for q in questions if q.prompt not in solved]
        hinted = gen(model, tok, [star_prompt(q.prompt) + HINT.format(answer=q.answer)
                                  for q in wrong],
                     max_new_tokens=max_new_tokens, temperature=opt.temperature, n=1) if wrong \
            else []
        for q, cs in zip(wrong, hinted, strict=True):
            traces.append(dict(question=q.prompt, answer=q.answer,
                               **_scored(cs[0], q.answer, score), rationalized=True))
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
        g1 = extract_answer(f)
        traces.append(dict(question=q.prompt, answer=q.answer, first=str(f), first_extracted=g1,
                           first_correct=_right(score, g1, q.answer),
                           **_scored(cs[0], q.answer, score), rationalized=False))
    return traces


def training_rows(loop: str, traces: list[dict]) -> list[dict]:
    """The kept set, one row per distinct (prompt, target): traces that finished (not cut
    off at max_new_tokens), end in a marked right answer (strict rule), and, for STaR, reason
    before it. Each trace gets `drop_reason` (None when kept; DROP_REASONS). The prompt never
    holds the hint; self-correction's holds the question and the first attempt."""
    rows, seen = [], set()
    for t in traces:
        t["drop_reason"] = drop_reason(loop, t)
        if t["drop_reason"] is not None:
            continue
        prompt = (star_prompt(t["question"]) if loop == "star"
                  else correct_prompt(t["question"], t["first"]))
        target = t["completion"].strip()
        if (prompt, target) in seen:
            t["drop_reason"] = "duplicate"
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

    def both(rows: list[dict]) -> dict:
        return {"test_exact_match": sum(r["correct"] for r in rows) / n,
                "test_strict_exact_match": sum(r["strict_correct"] for r in rows) / n,
                "test_truncated": sum(r["truncated"] for r in rows) / n}
    if loop == "star":
        comps = gen(model, tok, [star_prompt(e.prompt) for e in tests],
                    max_new_tokens=max_new_tokens, temperature=0.0, n=1)
        rows = [dict(question=e.prompt, answer=e.answer, **_scored(cs[0], e.answer, score))
                for e, cs in zip(tests, comps, strict=True)]
        return both(rows), rows
    firsts = gen(model, tok, [e.prompt for e in tests], max_new_tokens=max_new_tokens,
                 temperature=0.0, n=1)
    corrs = gen(model, tok, [correct_prompt(e.prompt, f[0]) for e, f in zip(tests, firsts)],
                max_new_tokens=max_new_tokens, temperature=0.0, n=1)
    rows = []
    for e, f, c in zip(tests, firsts, corrs, strict=True):
        g1 = extract_answer(f[0])
        rows.append(dict(question=e.prompt, answer=e.answer, first=str(f[0]), first_extracted=g1,
                         first_correct=_right(score, g1, e.answer),
                         **_scored(c[0], e.answer, score)))
    return {"test_first_exact_match": sum(r["first_correct"] for r in rows) / n,
            **both(rows),
            "test_fixed": sum(r["correct"] and not r["first_correct"] for r in rows) / n,
            "test_broken": sum(r["first_correct"] and not r["correct"] for r in rows) / n}, rows
