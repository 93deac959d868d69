"""Views for text: a second, differently augmented look at a carried sample, as DLB has for images.

DLB's official code returns two independently augmented views of every image and re-forwards the
carried half with the second one, so its soft target is a consistency target across views and
across one optimizer step. Text has no standard views; without them teacher and student see the
same tokens and differ only by dropout and one update (method.md §8). These augmenters make one.

Every training forward of a sample draws its own view from (seed, sample id, step): a sample is
forwarded as new at step t and as carried at step t+1, so the two passes see different views, and
the same run (or a resumed one) draws the same views again. Every arm gets views of the same kind
on its forwards, vanilla and refeed too, so refeed stays the exact control of a distilling arm
(same layout, same views, alpha 0). Evaluation never augments.

They work on token ids after tokenization (model-free, a few lines each, no re-tokenizing), and
never touch special tokens ([CLS], [SEP], padding):
    token-mask    each token is replaced by the mask token with probability p (BERT's MLM noise)
    word-dropout  each word (all its word pieces) is removed with probability p; at least one
                  word of every segment stays
    span-cutoff   one contiguous span of about p x the segment's tokens is removed from every
                  segment (span cutoff, Shen et al. 2020, "A Simple but Tough-to-Beat Data
                  Augmentation Approach", which zeroes the span's embeddings; removing it is the
                  same for the tokens around it apart from their positions)
"""
from __future__ import annotations

import math
import numpy as np

from dynsdpb.config import AUGMENTS
_SALT = 0x5EED_715  # keeps view draws apart from every other stream drawn from the seed


def view_rng(seed: int, sample_id: int, step: int) -> np.random.Generator:
    return np.random.default_rng([_SALT, int(seed), int(sample_id), int(step)])


def augment(ids: list[int], types: list[int] | None, words: list[int], kind: str, p: float,
            rng: np.random.Generator, mask_id: int) -> tuple[list[int], list[int] | None]:
    """One view of one tokenized sample. `words[i]` groups position i into a word: -1 for a
    special token (never touched), else segment * 100000 + word index. Returns (ids, types)."""
    if kind == "none" or p <= 0:
        return ids, types
    n = len(ids)
    if kind == "token-mask":
        hit = rng.random(n) < p
        out = [mask_id if (h and w >= 0) else t for t, h, w in zip(ids, hit, words)]
        return out, types
    keep = np.ones(n, dtype=bool)
    segments: dict[int, list[int]] = {}
    for i, w in enumerate(words):
        if w >= 0:
            segments.setdefault(w // 100000, []).append(i)
    for seg in segments.values():
        if kind == "word-dropout":
            wids = sorted({words[i] for i in seg})
            drop = rng.random(len(wids)) < p
            if drop.all():   # keep one word of the segment
                drop[rng.integers(len(wids))] = False
            gone = {w for w, d in zip(wids, drop) if d}
            for i in seg:
                if words[i] in gone:
                    keep[i] = False
        elif kind == "span-cutoff":
            span = min(len(seg) - 1, max(1, math.ceil(p * len(seg))))
            if span <= 0:
                continue
            start = int(rng.integers(0, len(seg) - span + 1))
            keep[seg[start:start + span]] = False
        else:
            raise ValueError(f"unknown augment {kind!r}; use one of {AUGMENTS}")
    idx = np.flatnonzero(keep)
    return [ids[i] for i in idx], (None if types is None else [types[i] for i in idx])


def word_groups(word_ids: list[int | None], sequence_ids: list[int | None]) -> list[int]:
    """The `words` that `augment` takes, from a fast tokenizer's word_ids() and sequence_ids()."""
    return [-1 if w is None or s is None else int(s) * 100000 + int(w)
            for w, s in zip(word_ids, sequence_ids)]
