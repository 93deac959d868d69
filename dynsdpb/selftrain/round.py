"""One arm's engine task in one self-training round (selftrain.py builds one per arm and
round): `RoundTask`, the decoder task on the round's kept set with the loop's evaluation and
the teacher cache carried from earlier rounds; `first_appearance`, where that cache teaches;
`teacher_cache`, the cache the round's final model hands to the next round.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from dynsdpb.config import RunConfig
from dynsdpb.engine.layout import BatchLayout
from dynsdpb.decoder.data import IGNORE, LMExample
from dynsdpb.decoder.loss import TokenTeacher, common_prefix, token_loss
from dynsdpb.decoder.task import CausalLMTask, fingerprint
from dynsdpb.selftrain.loops import GenerateFn, evaluate
from dynsdpb.selftrain.store import write_jsonl
from dynsdpb.engine.train import Arm


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


def prompt_ids(row: dict[str, list[int]]) -> torch.Tensor:
    """The prompt token ids of an encoded row (input ids where the labels are -100)."""
    return torch.tensor([i for i, t in zip(row["input_ids"], row["labels"]) if t == IGNORE])


def same_prompt(entry: dict, row: dict[str, list[int]]) -> bool:
    """Was the cached teacher computed on this row's prompt? A self-correction row's prompt
    holds the first attempt, which changes every round: a teacher computed on another
    prompt is another input, and none of its tokens count as aligned. (An entry without
    prompt ids, from an older cache file, is not trusted either.)"""
    p = entry.get("prompt_ids")
    return p is not None and torch.equal(p.to(torch.long), prompt_ids(row))


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
        self.data.train_fingerprint = fingerprint(exs)
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
                r = self.train.rows[row]
                n = common_prefix(e["target_ids"], _target_ids(r)) if same_prompt(e, r) else 0
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
            # a teacher computed on another prompt teaches nothing (counted as dropped)
            if e is not None and teachers[n_car + j] is None \
                    and same_prompt(e, self.train.rows[row]):
                teachers[n_car + j] = TokenTeacher(kind="full" if "logits" in e else "topk",
                                                   **{k: v for k, v in e.items()
                                                      if k != "prompt_ids"})
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
            write_jsonl(self.eval_path, rows)
        return m


@torch.no_grad()
def teacher_cache(task: RoundTask, model, cfg: RunConfig, device, old: dict | None = None,
                  bs: int = 16) -> dict:
    """The cache carried to the next round (loop option carry_teacher): per question of the
    kept set, the round's final model (eval mode: no dropout) on the question's first kept
    trace, packed as the in-round cache is (alpha/tau fixed now, at the round's last step),
    with the prompt ids it was computed on. Questions not trained this round keep their older
    entry."""
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
                # the prompt it was computed on: a row on another prompt gets no teacher
                out[task.keys[i]] = {**e, "prompt_ids": prompt_ids(task.train.rows[i])
                                     .to(torch.int32)}
    finally:
        model.train(was)
    return out
