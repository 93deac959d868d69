"""Evaluation of decoder models: batched greedy generation, answer extraction, exact match,
loss and perplexity on target tokens.

Exact match comes in two scores, as lm-eval-harness reports them for GSM8K:
  flexible  the last number anywhere in the completion (`extract_answer`): a cut-off
            completion that merely repeats the question's operands can count as right.
  strict    the generation ended by itself (an eos before max_new_tokens: not `truncated`)
            and its final answer sits where the target format puts it (`strict_answer`): the
            whole completion is the number, or it ends with a marked answer ("#### N",
            "The answer is N.", "The answer to this problem is N."). An equation that ends
            in the number ("5 * 9 = 45") is not marked: flexible only, as in lm-eval-harness.
`echo_share` is the share of items that a model echoing the question would get right under
the flexible rule (some number of the question equals the answer): the floor that a
flexible score has to be read against.

Generation uses left padding (tokenizer.padding_side = "left"): the new tokens are appended
on the right, so every prompt of a batch must end at the same column.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from dynsdpb.decoder.data import IGNORE, LMExample, collate, encode, prompt_text
from dynsdpb.decoder.loss import causal_shift

# A number with optional sign, thousands commas and decimals: "-1,234.5", "42", "3."
_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_NUM_S = r"(-?\d[\d,]*(?:\.\d+)?)"
# strict: the completion is the number, or ends with a marked one ("#### 7", "answer is 7.")
_BARE = re.compile(r"\$?" + _NUM_S + r"\s*\.?")
# "#### N", "answer: N", "The answer is N.", "The final answer to this problem is N."
_MARKED = re.compile(r"(?:####|\banswer\s*:|\banswer(?:\s+[^\s\d]+){0,6}?\s+is\s*:?)\s*\$?"
                     + _NUM_S + r"\s*\.?\s*$", re.IGNORECASE)


class Completion(str):
    """A generated text that knows whether it was cut off at max_new_tokens (`truncated`:
    no eos among its new tokens). A plain str is read as not truncated."""
    truncated: bool = False

    def __new__(cls, text: str, truncated: bool = False):
        obj = super().__new__(cls, text)
        obj.truncated = bool(truncated)
        return obj


def is_truncated(completion: str) -> bool:
    return bool(getattr(completion, "truncated", False))


def extract_answer(text: str) -> str | None:
    """The final answer of a completion: the last number in it ("#### 18" -> "18"), commas
    dropped; None when there is no number."""
    found = _NUM.findall(text)
    if not found:
        return None
    return found[-1].replace(",", "").rstrip(".")


def strict_answer(text: str, truncated: bool = False) -> str | None:
    """The final answer under the strict rule: None when the generation was cut off, else
    the number that is the whole completion or that ends it after a marker ("#### 18",
    "The answer is 18."); None when the completion has neither."""
    if truncated:
        return None
    t = text.strip()
    m = _BARE.fullmatch(t) or _MARKED.search(t)
    return m.group(1).replace(",", "").rstrip(".") if m else None


def echo_share(examples: Sequence[LMExample], score: Callable[[str | None, str], float]
               ) -> float:
    """Share of the items with an answer that echoing the question solves under the flexible
    rule: some number of the prompt scores as the gold answer (a completion cut off after
    repeating it would count as right). nan when no item has an answer."""
    scored = [e for e in examples if e.answer is not None]
    if not scored:
        return float("nan")
    hit = sum(any(score(n.replace(",", "").rstrip("."), e.answer) == 1.0
                  for n in _NUM.findall(e.prompt)) for e in scored)
    return hit / len(scored)


def _finished(new_ids: torch.Tensor, eos) -> list[bool]:
    """Per generated row (new tokens only): did it emit an eos (= ended by itself)?"""
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if not ids:
        return [False] * len(new_ids)
    return torch.isin(new_ids, torch.tensor(ids, device=new_ids.device)).any(1).tolist()


@torch.no_grad()
def sample(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
           temperature: float = 0.0, n: int = 1, batch_size: int = 16) -> list[list[str]]:
    """n completions per prompt (greedy when temperature is 0), each prompt through the chat
    template as in training; each a `Completion` (str) that knows whether it was cut off.
    Sampling draws from torch's global RNG (the caller seeds it)."""
    if tokenizer.padding_side != "left":
        raise ValueError("generation needs tokenizer.padding_side == 'left'")
    was = model.training
    model.eval()
    out: list[list[str]] = []
    kw = (dict(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
          if temperature > 0 else dict(do_sample=False))
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [prompt_text(tokenizer, p) for p in prompts[i:i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, num_return_sequences=n,
                                 pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **kw)
            new = gen[:, enc["input_ids"].shape[1]:]
            done = _finished(new, tokenizer.eos_token_id)
            texts = [Completion(t, truncated=not d) for t, d in
                     zip(tokenizer.batch_decode(new, skip_special_tokens=True), done)]
            out.extend(texts[j:j + n] for j in range(0, len(texts), n))
    finally:
        model.train(was)
    return out


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 32,
             batch_size: int = 16) -> list[str]:
    """Greedy completions (special tokens dropped) for raw prompts, in order.

    Each prompt goes through the chat template as in training (decoder.data.prompt_text).
    """
    return [c[0] for c in sample(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size)]


@dataclass
class GenEval:
    accuracy: float            # flexible exact-match share over items with an answer (nan if none)
    n_scored: int
    samples: list[dict]        # prompt, target, answer, completion, extracted, correct,
    #                            truncated, strict_extracted, strict_correct
    strict_accuracy: float = float("nan")   # strict exact-match share (module docstring)
    truncated: float = float("nan")         # share of all completions cut off


def exact_match(examples: Sequence[LMExample], completions: Sequence[str],
                score: Callable[[str | None, str], float], n_samples: int = 4) -> GenEval:
    """Flexible and strict exact match of the final answers (score == 1.0 counts as right)."""
    right, strict, n, cut, samples = 0, 0, 0, 0, []
    for ex, comp in zip(examples, completions, strict=True):
        got, trunc = extract_answer(comp), is_truncated(comp)
        got_s = strict_answer(comp, trunc)
        cut += trunc
        ok = ok_s = None
        if ex.answer is not None:
            ok = score(got, ex.answer) == 1.0
            ok_s = got_s is not None and score(got_s, ex.answer) == 1.0
            right += ok
            strict += ok_s
            n += 1
        if len(samples) < n_samples:
            samples.append(dict(prompt=ex.prompt, target=ex.target, answer=ex.answer,
                                completion=str(comp), extracted=got, correct=ok,
                                truncated=trunc, strict_extracted=got_s, strict_correct=ok_s))
    nan = float("nan")
    return GenEval(right / n if n else nan, n, samples, strict / n if n else nan,
                   cut / len(completions) if len(completions) else nan)


def evaluate_generation(model, tokenizer, examples: Sequence[LMExample],
                        score: Callable[[str | None, str], float], max_new_tokens: int = 32,
                        batch_size: int = 16, n_samples: int = 4) -> GenEval:
    comps = generate(model, tokenizer, [e.prompt for e in examples], max_new_tokens, batch_size)
    return exact_match(examples, comps, score, n_samples)


@torch.no_grad()
def target_loss(model, tokenizer, examples: Sequence[LMExample], max_len: int,
                batch_size: int = 16) -> tuple[float, float]:
    """(mean CE per target token, perplexity = exp of it) over the examples, eval mode.
    Token-weighted across batches, so the batch size does not change the number."""
    was_training = model.training
    model.eval()
    tot, n = 0.0, 0
    try:
        for i in range(0, len(examples), batch_size):
            enc = [encode(tokenizer, e, max_len) for e in examples[i:i + batch_size]]
            batch = {k: v.to(model.device) for k, v in collate(enc, tokenizer.pad_token_id).items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits
            z, y = causal_shift(logits, labels)
            tot += float(F.cross_entropy(z.float().reshape(-1, z.shape[-1]), y.reshape(-1),
                                         ignore_index=IGNORE, reduction="sum"))
            n += int((y != IGNORE).sum())
    finally:
        model.train(was_training)
    mean = tot / max(n, 1)
    return mean, math.exp(min(mean, 50.0))
