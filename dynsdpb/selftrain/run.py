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
                    common prefix of the cached and the regenerated target (decoder/loss.py's
                    alignment); round.json logs the cached tokens kept and dropped.

The folder it writes (`DIR`) and its read-back are selftrain/store.py's; the prompts, loop
options, traces and evaluation are selftrain/loops.py's; each round's engine task and the
carried teacher cache are selftrain/round.py's. This module is the import surface of the
loops (`__all__`: what the CLI, the job queue, the worker and the app use).

Resume works at every point: a finished round (round.json) is never redone; generation cut
off is redone from the same seed (its files are written only when complete); training cut off
resumes from the engine checkpoint of that round (the cache's use is a function of the step,
so the resumed round equals an uninterrupted one); a round killed while testing repeats the
test.
"""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from dynsdpb.config import RunConfig, check_config, from_dict, is_causal_lm
from dynsdpb.errors import ConfigError
from dynsdpb.experiment import arm_name, check_experiment, create_experiment, run_arms
from dynsdpb.decoder.generation import sample
from dynsdpb.engine.layout import BatchLayout
from dynsdpb.decoder.data import LMExample
from dynsdpb.decoder.task import CausalLMTask
from dynsdpb.selftrain.loops import (CPU_DEMO, DROP_REASONS, LOOP_HELP, LOOPS, ROUND_STARTS,
                              GenerateFn, LoopConfig,
                              check_loop, evaluate, loop_from_dict, selfcorrect_traces,
                              star_prompt, star_traces, training_rows)
from dynsdpb.selftrain.round import RoundTask, first_appearance, teacher_cache
from dynsdpb.selftrain.store import (META, carried_cache, end_weights, read_jsonl, final_weights, write_jsonl,
                              format_rounds, is_selftrain, read_meta, round_dir, summarize,
                              write_summary)
from dynsdpb.store import ExperimentDir, RunDir, atomic_write_bytes, atomic_write_json, read_json
from dynsdpb.engine.train import Arm

__all__ = ["CPU_DEMO", "DROP_REASONS", "LOOP_HELP", "LOOPS", "META", "ROUND_STARTS",
           "LoopConfig", "check_answers", "check_selftrain", "create_selftrain",
           "expected_seconds", "legacy_loop", "format_rounds", "is_selftrain",
           "loop_from_dict", "read_meta", "run_selftrain", "summarize"]


def legacy_loop(loop: dict) -> dict:
    """A loop's options as stored, with the options a loop written before they existed ran
    with: fixed steps, and continue mode carrying the teacher cache (so a resumed old loop
    goes on as it started)."""
    out = dict(loop)
    out.setdefault("step_growth", 1.0)
    out.setdefault("carry_teacher", out.get("round_start", "continue") == "continue")
    out.setdefault("round_start", "continue")
    return out


def check_selftrain(base: RunConfig, loop: LoopConfig, methods: list[str],
                    seeds: list[int]) -> None:
    """Every check that needs no model or data: the loop options and each arm's config."""
    check_loop(loop)
    if not is_causal_lm(base):
        raise ConfigError.one("model", base.model, "self-training generates text: use a decoder "
                              "model such as smollm2-135m and a generation dataset such as "
                              "arith-easy")
    check_experiment(base, methods, seeds)


def check_answers(shared, dataset: str) -> None:
    """Self-training keeps the traces whose final answer is right: every row of the data needs
    its answer (a file's `answer` column; the built-ins have one)."""
    for name in ("train", "test"):
        exs = getattr(shared, name).examples
        missing = sum(e.answer is None for e in exs)
        if missing:
            raise ConfigError.one("dataset", dataset, f"{missing} of {len(exs)} {name} rows have "
                                  "no answer; self-training scores answers: add an `answer` "
                                  "column (the final answer of each target)")


# Rough CPU costs of SmolLM2-135M with LoRA on 2 shared cores: seconds per max_len token of
# a training sample (forward + backward; from a run of the encoder defaults, 200 steps of 16
# at max_len 64, vanilla + dynsdpb in lockstep: 53 steps in 27 min), and per new token of a
# generated sequence (batches of 16).
CPU_TRAIN_S_PER_TOKEN = 0.01
CPU_GEN_S_PER_TOKEN = 0.006


def expected_seconds(base: RunConfig, loop: LoopConfig, methods: list[str],
                     seeds: list[int]) -> float:
    """A rough wall-time estimate of a self-training loop on a 2-core CPU, before it starts:
    every arm's training steps (a distilling arm forwards the carried half too; max_len
    tokens per sample, as an upper bound) plus the generations (questions x samples, and
    the test split twice for self-correction, every round and for the base model)."""
    arms = [(m, s) for m in methods for s in seeds]
    train = 0.0
    for r in range(1, loop.rounds + 1):
        steps = loop.round_steps(base.steps, r)
        for m, _ in arms:
            c = base.replace(method=m)
            forwards = c.chunk_size * (2 if c.distills else 1)   # carried half + new chunk
            train += steps * forwards * base.max_len * CPU_TRAIN_S_PER_TOKEN
    q = loop.questions or 64
    per_round_gen = q * loop.samples + base.test_size * (2 if loop.loop == "selfcorrect" else 1)
    gen = (loop.rounds * len(arms) + 1) * per_round_gen * base.max_new_tokens \
        * CPU_GEN_S_PER_TOKEN
    return train + gen


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
        from dynsdpb.decoder.models import load_causal_lm
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


# ----------------------------------------------------------------------------------------
# The loop

ProgressFn = Callable[[str, dict], None]


def run_selftrain(path: str | Path, stop: threading.Event | None = None,
                  progress: ProgressFn | None = None, resume: bool = False,
                  generate: GenerateFn | None = None) -> dict:
    """Run (or resume) a self-training folder made by `create_selftrain`; returns
    {"state": finished | stopped | failed, "summary": ..., "error": ...}. A failed arm ends
    the loop after its round's training (state failed; resume retries that arm); anything
    raised also leaves DIR/status.json failed, with the error, before it propagates."""
    from dynsdpb.store import check_not_busy, one_writer
    read_meta(path)
    if resume:
        # Before anything is written: a refusal must leave the live loop's status alone.
        check_not_busy([RunDir(path)], str(path))
    with one_writer(path, str(path)):
        return _run_owned(Path(path), stop, progress, resume, generate)


def _run_owned(path: Path, stop, progress, resume, generate) -> dict:
    try:
        return _run_selftrain(Path(path), stop, progress, resume, generate)
    except Exception as e:
        if is_selftrain(path) and RunDir(path).raw_status().get("state") in ("queued",
                                                                             "running") \
                and RunDir(path).busy_elsewhere() is None:
            hint = getattr(e, "hint", None) or ("fix the input" if isinstance(e, ConfigError)
                                                else "resume to retry from the last round")
            RunDir(path).set_status("failed", error=f"{type(e).__name__}: {e}", hint=hint)
        raise


def _run_selftrain(path: Path, stop, progress, resume, generate) -> dict:
    return _Loop(path, stop, progress, generate).run()


class _Loop:
    """One self-training folder being run. `run` is the loop, in the order it happens: the base
    model is tested once; then every round generates and filters traces for each arm, fine-tunes
    every arm that kept some (in lockstep, tested at the end), and finishes the round (tests the
    arms that kept nothing, writes round.json). Each step skips what a resumed folder has done."""

    def __init__(self, path: Path, stop, progress, generate):
        from dynsdpb.engine.dist import pick_device
        from dynsdpb.tasks import prepare
        self.path = path
        self.meta = meta = read_meta(path)
        self.base = base = from_dict(meta["base_config"])
        self.opt = opt = loop_from_dict(legacy_loop(meta["loop"]))
        self.methods, self.seeds = list(meta["methods"]), [int(s) for s in meta["seeds"]]
        self.cfgs = [check_config(c) for c in check_experiment(base, self.methods, self.seeds)]
        self.gen = generate or sample
        self.stop = stop or threading.Event()
        self.progress = progress
        self.top = RunDir(path)
        self.say = progress or (lambda who, rec: None)
        self.phase(0, "loading")
        self.shared = shared = prepare(base)       # tokenizer, splits, scorer; the LoRA base
        check_answers(shared, base.dataset)        # a folder made before this was checked
        self.device = pick_device(base)
        pool = shared.train.examples
        self.questions = pool[:opt.questions] if opt.questions else pool
        self.star = opt.loop == "star"
        self.val = [LMExample(star_prompt(e.prompt) if self.star else e.prompt, e.target,
                              e.answer) for e in shared.val.examples]
        self.tests = list(shared.test.examples)
        self.policies = _Policies(shared, base, self.device)

    def run(self) -> dict:
        self.test_base_model()                                 # round 0
        for r in range(1, self.opt.rounds + 1):
            todo = self.arms_to_do(r)
            if not todo:
                continue
            if self.stop.is_set():
                return self.end("stopped")
            if not self.generate(r, todo):                     # 1-2) generate and filter
                return self.end("stopped")
            ended, tasks = self.train(r, todo)                 # 3) fine-tune, in lockstep
            if ended:
                return ended
            self.finish_round(r, todo, tasks)                  # 4) test, round.json
            write_summary(self.path)
        return self.end("finished")

    # -- the steps, in the loop's order ---------------------------------------------------
    def phase(self, r: int, name: str, **kw) -> None:
        """The loop's status: round r, phase `name`, and the arm it works on (`arm`) only when
        the phase is about one (generating and evaluating are; training is all arms at once)."""
        kw.setdefault("arm", None)        # set_status merges: an old arm must not linger
        self.top.set_status("running", round=r, rounds=self.opt.rounds, phase=name, **kw)
        self.say("selftrain", {"event": "phase", "round": r, "phase": name, **kw})

    def end(self, state: str, error: str = "") -> dict:
        return _end(self.path, self.top, state, self.meta, error)

    def test_base_model(self) -> None:
        """Round 0: the base model on the test split, once (every arm starts from it)."""
        b_path = round_dir(self.path, 0) / "baseline.json"
        if b_path.is_file():
            return
        self.phase(0, "evaluating the base model")
        m, rows = evaluate(self.opt.loop, self.gen, self.policies.get(None),
                           self.shared.tokenizer, self.tests, self.shared.score,
                           self.base.max_new_tokens)
        write_jsonl(round_dir(self.path, 0) / "eval.jsonl", rows)
        atomic_write_json(b_path, m)

    def arms_to_do(self, r: int) -> list[tuple[RunConfig, RunDir]]:
        """Round r's arms without a round.json, its experiment folder made on first entry.
        STaR grows the training steps every round (step_growth; 1 = fixed)."""
        rdir = round_dir(self.path, r)
        steps_r = self.opt.round_steps(self.base.steps, r)
        rcfgs = [c.replace(steps=steps_r) for c in self.cfgs]
        if not ExperimentDir(rdir).exists():
            create_experiment(self.path, self.base.replace(steps=steps_r), self.methods,
                              self.seeds, name=f"{self.meta.get('name')} round {r}",
                              exp_dir=rdir, check=False)
        arms = [(c, RunDir(rdir / arm_name(c))) for c in rcfgs]
        return [(c, rd) for c, rd in arms if not (rd.path / "round.json").is_file()]

    def policy_traces(self, state, seed: int, r: int) -> list[dict]:
        # Sampling is seeded by (seed, round), the same for every method: arms that generate
        # with the same weights (round 1: the base model) get the same traces.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + r)
            fn = star_traces if self.star else selfcorrect_traces
            return fn(self.gen, self.policies.get(state), self.shared.tokenizer, self.questions,
                      self.opt, self.base.max_new_tokens, self.shared.score)

    def generate(self, r: int, todo) -> bool:
        """1-2) Generate and filter, every arm before any trains; False when stopped."""
        shared_gen: dict[int, list[dict]] = {}
        for c, rd in todo:
            if (rd.path / "train.jsonl").is_file():
                continue
            self.phase(r, "generating", arm=rd.id)
            # the arm's model at the end of round r-1 (round 1: the base model)
            state, _ = end_weights(self.path, rd.id, r - 1, self.opt.round_start)
            t0 = time.time()
            if state is None and c.seed in shared_gen:
                traces = [dict(t) for t in shared_gen[c.seed]]
            else:
                traces = self.policy_traces(state, c.seed, r)
                if state is None:
                    shared_gen[c.seed] = [dict(t) for t in traces]
            rows = training_rows(self.opt.loop, traces)   # marks each trace's drop_reason
            write_jsonl(rd.path / "traces.jsonl", traces)
            atomic_write_json(rd.path / "gen.json", {"seconds": round(time.time() - t0, 2)})
            write_jsonl(rd.path / "train.jsonl", rows)   # last: its presence = generated
            if self.stop.is_set():
                return False
        return True

    def round_task(self, r: int, c: RunConfig, rd: RunDir, rows: list[dict], **kw) -> RoundTask:
        return RoundTask(self.shared, r, self.opt.loop, rows, self.val, self.tests, self.gen,
                         carried_cache(self.path, rd.id, r, self.opt, c), **kw)

    def train(self, r: int, todo) -> tuple[dict | None, dict]:
        """3) Fine-tune every arm with a kept set, in lockstep; each is tested at its end.
        Returns (the loop's end if it stopped or an arm failed, else None; the arms' tasks)."""
        self.phase(r, "training")
        live, tasks = [], {}
        for c, rd in todo:
            rows = read_jsonl(rd.path / "train.jsonl")
            if not rows or rd.status().get("state") == "finished":
                continue
            task = self.round_task(r, c, rd, rows, eval_path=rd.path / "eval.jsonl")
            resume_ckpt = rd.has_checkpoint()
            arm = Arm(c, task, rd, device=self.device, resume=resume_ckpt)
            task.attach(arm)
            if not resume_ckpt and self.opt.round_start == "continue" and r > 1:
                state, _ = end_weights(self.path, rd.id, r - 1, "continue")
                if state is not None:
                    arm.model.load_state_dict(state)
            live.append(arm)
            tasks[rd.id] = task
        final = run_arms(live, self.stop, self.progress) if live else {}
        if any(s == "stopped" for s in final.values()) or self.stop.is_set():
            return self.end("stopped"), tasks
        failed = [a for a, s in final.items() if s == "failed"]
        if failed:
            st = RunDir(round_dir(self.path, r) / failed[0]).raw_status()
            return self.end("failed", error=f"round {r}, {failed[0]}: {st.get('error')} "
                            f"(hint: {st.get('hint')}); resume to retry"), tasks
        return None, tasks

    def finish_round(self, r: int, todo, tasks: dict) -> None:
        """4) Test the arms with nothing to train, carry the cache, write round.json."""
        self.phase(r, "finishing round")
        opt, star = self.opt, self.star
        for c, rd in todo:
            rows = read_jsonl(rd.path / "train.jsonl")
            traces = read_jsonl(rd.path / "traces.jsonl")
            info = dict(round=r, arm=rd.id, method=c.method, seed=c.seed,
                        questions=len(self.questions), traces=len(traces), kept=len(rows),
                        rationalized=sum(bool(x.get("rationalized")) for x in rows),
                        rationalize_tried=sum(bool(t.get("rationalized")) for t in traces),
                        train_rows=len(rows),
                        gen_seconds=(read_json(rd.path / "gen.json", {}) or {}).get("seconds"),
                        **{f"drop_{k}": sum(t.get("drop_reason") == k for t in traces)
                           for k in DROP_REASONS})
            if not star:
                info["fixed"] = sum(t["correct"] and not t["first_correct"] for t in traces)
                info["first_correct"] = sum(bool(t["first_correct"]) for t in traces)
            cache_info = {"cache_questions": 0, "rows": 0, "aligned_tokens": 0,
                          "dropped_tokens": 0}
            if rows:
                s = rd.summary()
                task = tasks.get(rd.id)
                if task is None:     # trained before a restart: rebuild it for the counts
                    task = self.round_task(r, c, rd, rows)
                    task.teach_at = (first_appearance(BatchLayout(len(rows), c.chunk_size,
                                                                  c.seed, c.distills), c.steps)
                                     if task.carried and c.distills else {})
                cache_info = task.alignment_counts()
                info.update(steps=s.get("steps"), wall_time=s.get("wall_time"),
                            **{k: v for k, v in s.items() if k.startswith("test_")})
                if opt.carry_teacher and opt.round_start == "continue" and c.distills:
                    # the cache carried on: this round's entries over the older ones
                    new = teacher_cache(task, self.policies.get(final_weights(rd)), c,
                                        self.device, task.carried)
                    buf = io.BytesIO()
                    torch.save(new, buf)
                    atomic_write_bytes(rd.path / "cache.pt", buf.getvalue())
            else:
                # nothing kept: test the model that round r+1 will generate with (continue:
                # the latest trained weights; base: the base model, as nothing was trained)
                self.phase(r, "evaluating", arm=rd.id)
                state, _ = end_weights(self.path, rd.id, r, opt.round_start)
                m, ev = evaluate(opt.loop, self.gen, self.policies.get(state),
                                 self.shared.tokenizer, self.tests, self.shared.score,
                                 self.base.max_new_tokens)
                write_jsonl(rd.path / "eval.jsonl", ev)
                why = nothing_kept_reason(info, star, opt.rationalize, opt.round_start)
                info.update(steps=0, note=why, **m)
                rd.set_status("finished", step=0, steps=0, note=why)
            info.update(cache_info)
            atomic_write_json(rd.path / "round.json", info)
            self.say(rd.id, {"event": "round", **info})


def nothing_kept_reason(info: dict, star: bool, rationalize: bool,
                        round_start: str = "continue") -> str:
    """Why a round kept nothing, in one sentence (round.json's note; the app shows it)."""
    n = info.get("traces", 0)
    if not n:
        return "no traces were generated this round: nothing to fine-tune"
    drops = {k: info.get(f"drop_{k}", 0) for k in DROP_REASONS}
    if drops["wrong"] == n or not any(drops.values()):
        what = ("none of the {n} traces ended with the gold answer"
                + (" (hinted rationalizations included)" if star and rationalize else "")
                if star else "no correction of the {n} first attempts ended with the gold "
                "answer")
    else:
        what = "none of the {n} traces was kept (" + ", ".join(
            f"{v} {k.replace('_', ' ')}" for k, v in drops.items() if v) + ")"
    model = ("the round's model is the base model (round_start base), tested as is"
             if round_start == "base" else "the model stays as it was and is tested as is")
    return what.format(n=n) + ": nothing to fine-tune; " + model


def _end(path: Path, top: RunDir, state: str, meta: dict, error: str = "") -> dict:
    top.set_status(state, phase=state, error=error or None)
    summary = write_summary(path)
    return {"state": state, "summary": summary, "error": error}
