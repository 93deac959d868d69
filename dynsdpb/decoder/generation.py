"""Evaluation of decoder models: batched greedy generation, answer extraction, exact match,
loss and perplexity on target tokens.

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


def extract_answer(text: str) -> str | None:
    """The final answer of a completion: the last number in it ("#### 18" -> "18"), commas
    dropped; None when there is no number."""
    found = _NUM.findall(text)
    if not found:
        return None
    return found[-1].replace(",", "").rstrip(".")


@torch.no_grad()
def sample(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
           temperature: float = 0.0, n: int = 1, batch_size: int = 16) -> list[list[str]]:
    """n completions per prompt (greedy when temperature is 0), each prompt through the chat
    template as in training. Sampling draws from torch's global RNG (the caller seeds it)."""
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
            texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:],
                                           skip_special_tokens=True)
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
    accuracy: float            # exact-match share over items that have an answer (nan if none)
    n_scored: int
    samples: list[dict]        # prompt, target, answer, completion, extracted, correct


def exact_match(examples: Sequence[LMExample], completions: Sequence[str],
                score: Callable[[str | None, str], float], n_samples: int = 4) -> GenEval:
    """Exact match of the extracted final answers (score == 1.0 counts as right)."""
    right, n, samples = 0, 0, []
    for ex, comp in zip(examples, completions, strict=True):
        got = extract_answer(comp)
        ok = None
        if ex.answer is not None:
            ok = score(got, ex.answer) == 1.0
            right += ok
            n += 1
        if len(samples) < n_samples:
            samples.append(dict(prompt=ex.prompt, target=ex.target, answer=ex.answer,
                                completion=comp, extracted=got, correct=ok))
    return GenEval(right / n if n else float("nan"), n, samples)


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
