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

from dynsdpb.errors import ConfigError, Problem
from dynsdpb.decoder.generation import extract_answer
from dynsdpb.decoder.data import LMExample

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
