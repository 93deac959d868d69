"""Generation data for decoder models: (prompt, target[, answer]) rows, tokenized for SFT.

Built-ins come from reasoning-gym (procedural, offline, deterministic for a seed):
  arith-easy    chain_sum and products with 2 terms of 1 digit; the target is the bare
                answer ("7"). Short answers: the CPU demo. Only ~270 distinct problems exist,
                so the pool is de-duplicated before splitting (no test question in train).
  gsm-symbolic  GSM8K-style word problems; the target is the rationale (`answer_cot`, ending
                "#### N"), the answer is N.
Local .jsonl/.csv files need `prompt` and `target` columns (optional `answer` for exact
match); hub ids go through `datasets` (network needed). Their rows are de-duplicated by prompt
before splitting, as the encoders' are (`dedup_examples`).

Tokenization: prompt through the chat template (user turn + generation prompt), then the
target and eos. labels = -100 on prompt and padding positions, so CE and KD both see only
target tokens. The causal shift is NOT done here (decoder.loss.causal_shift is the one place).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from dynsdpb.catalog import GENERATION_DATASETS
from dynsdpb.errors import ConfigError
from dynsdpb.tables import dedup

IGNORE = -100


@dataclass(frozen=True)
class LMExample:
    prompt: str
    target: str
    answer: str | None = None   # final answer for exact match; None: no accuracy for it


@dataclass(frozen=True)
class LMSplits:
    train: list[LMExample]
    val: list[LMExample]
    test: list[LMExample]
    scorer: str              # "reasoning-gym:<dataset>" or "last-number"
    warnings: tuple[str, ...] = ()   # e.g. a file read as latin-1 (tables.read_table)
    dedup: dict = field(default_factory=dict)   # what `dedup_examples` dropped (files)


# (reasoning-gym dataset, its options): arith-easy mixes the two easy generators.
_RG = {
    "arith-easy": [("chain_sum", dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)),
                   ("products", dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1))],
    "gsm-symbolic": [("gsm_symbolic", {})],
}


def _rg_rows(name: str, split_seed: int, n: int) -> list[LMExample]:
    """Up to n distinct items. Prefix-stable: asking for more items only appends (reasoning-gym
    item i depends on seed and i alone), so the held-out sets cut from the front never change
    with the training size."""
    import reasoning_gym
    gens = [reasoning_gym.create_dataset(ds_name, size=max(n, 1) * 4,
                                         seed=split_seed * 1000 + j, **opts)
            for j, (ds_name, opts) in enumerate(_RG[name])]
    rows: list[LMExample] = []
    seen: set[str] = set()
    # Round-robin over the generators, dropping repeats (arith-easy runs out of new ones).
    for i in range(max(n, 1) * 4):
        for ds in gens:
            it = ds[i]
            q = it["question"]
            if q in seen:
                continue
            seen.add(q)
            target = it["metadata"].get("answer_cot") or str(it["answer"])
            rows.append(LMExample(q, target, str(it["answer"])))
            if len(rows) == n:
                return rows
    return rows


def _split(rows: list[LMExample], n_train: int, n_val: int, n_test: int, name: str
           ) -> tuple[list, list, list]:
    # test and val first, so that a larger n_train never changes the held-out sets.
    if n_val + n_test >= len(rows):
        raise ConfigError.one("val_size", n_val, f"{name} has {len(rows)} distinct examples; "
                              f"val_size + test_size ({n_val + n_test}) must leave some for "
                              "training. Lower val_size/test_size")
    test, val, rest = rows[:n_test], rows[n_test:n_test + n_val], rows[n_test + n_val:]
    train = rest[:n_train] if n_train > 0 else rest
    return train, val, test


def _read_local(path: Path) -> tuple[list[dict], list[str]]:
    """A user's .jsonl/.csv file as rows, read as an upload is (tables.read_table: the size
    limit, UTF-8 else latin-1 with a warning, quotes, delimiters), plus its warnings."""
    from dynsdpb.tables import read_table
    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise ConfigError.one("dataset", str(path), "use a .jsonl or .csv file with `prompt` and "
                              "`target` columns")
    return read_table(path)


def _rows_from_records(recs: Sequence[dict], name: str) -> list[LMExample]:
    if not recs:
        raise ConfigError.one("dataset", name, "has no rows")
    cols = set(recs[0])
    for c in ("prompt", "target"):
        if c not in cols:
            raise ConfigError.one("dataset", name, f"has no `{c}` column (found "
                                  f"{sorted(cols)}); rename your columns to prompt/target "
                                  "(and optionally answer)")
    out = []
    for i, r in enumerate(recs):
        if r["prompt"] is None or r["target"] is None or str(r["target"]) == "":
            raise ConfigError.one("dataset", name, f"row {i} has an empty prompt or target; "
                                  "remove or fill it")
        ans = r.get("answer")
        out.append(LMExample(str(r["prompt"]), str(r["target"]),
                             None if ans is None or str(ans) == "" else str(ans)))
    return out


def load_lm_splits(name: str, split_seed: int = 0, n_train: int = 0, n_val: int = 32,
                   n_test: int = 64) -> LMSplits:
    """Train/val/test rows, the same for every arm and seed (they depend on split_seed only).
    n_train = 0 keeps every remaining row for training."""
    if name in _RG:
        pool = n_train + n_val + n_test if n_train > 0 else max(2000, n_val + n_test + 1)
        rows = _rg_rows(name, split_seed, pool)
        return LMSplits(*_split(rows, n_train, n_val, n_test, name), scorer=f"reasoning-gym:{name}")
    p = Path(name).expanduser()
    if p.is_file():
        rows, warnings = _read_local(p)
        return splits_from_records(rows, name, split_seed, n_train, n_val, n_test, warnings)
    elif name.startswith((".", "/", "~")) or p.suffix.lower() in (".jsonl", ".csv", ".json"):
        raise ConfigError.one("dataset", name, "no such file; give a .jsonl/.csv file or a "
                              f"built-in ({', '.join(GENERATION_DATASETS)})")
    else:
        import datasets
        try:
            ds = datasets.load_dataset(name, split="train")
        except Exception as e:  # noqa: BLE001 - offline, unknown id
            raise ConfigError.one("dataset", name, f"could not load it from the hub "
                                  f"({str(e).splitlines()[0][:160]}). Offline, use a built-in: "
                                  f"{', '.join(GENERATION_DATASETS)}") from None
        return splits_from_records(list(ds), name, split_seed, n_train, n_val, n_test)


def _prompt_key(s: str) -> str:
    """What counts as the same prompt: case and runs of whitespace do not (as for encoders)."""
    return " ".join(s.split()).casefold()


def _answer_key(a: str | None):
    if a is None:
        return None
    try:
        return float(a.replace(",", ""))
    except ValueError:
        return a.strip()


def dedup_examples(rows: list[LMExample]) -> tuple[list[LMExample], dict]:
    """Drop repeated prompts before any split, the encoders' rule: a repeat would otherwise
    land in train and test alike. The first row of a prompt is kept, in file order (other
    targets of it are dropped as repeats); a prompt whose rows give different answers is
    dropped with all its rows."""
    return dedup(rows, key=lambda e: _prompt_key(e.prompt), label=lambda e: _answer_key(e.answer))


def splits_from_records(recs: Sequence[dict], name: str, split_seed: int = 0, n_train: int = 0,
                        n_val: int = 32, n_test: int = 64, warnings: Sequence[str] = ()
                        ) -> LMSplits:
    """Rows with prompt/target[/answer] (a file, an upload read by tables.read_table, a hub
    dataset), de-duplicated by prompt (`dedup_examples`), shuffled by split_seed and split;
    scored by their last number."""
    rows, dedup = dedup_examples(_rows_from_records(list(recs), name))
    random.Random(split_seed).shuffle(rows)
    return LMSplits(*_split(rows, n_train, n_val, n_test, name), scorer="last-number",
                    warnings=tuple(warnings), dedup=dedup)


def answer_scorer(scorer: str) -> Callable[[str | None, str], float]:
    """score(extracted_answer, gold) in [0, 1]; 1.0 means exact match."""
    if scorer.startswith("reasoning-gym:"):
        import reasoning_gym
        rg_name = _RG[scorer.split(":", 1)[1]][0][0]
        # All generators of a built-in share one answer format; score_answer only needs
        # entry["answer"] (checked for chain_sum, products and gsm_symbolic).
        opts = _RG[scorer.split(":", 1)[1]][0][1]
        ds = reasoning_gym.create_dataset(rg_name, size=1, seed=0, **opts)
        return lambda ans, gold: float(ds.score_answer(ans, {"answer": gold}))

    def last_number(ans, gold):
        if ans is None:
            return 0.0
        try:
            return float(float(ans.replace(",", "")) == float(gold.replace(",", "")))
        except ValueError:
            return float(ans.strip() == gold.strip())
    return last_number


# ---------------------------------------------------------------------------------------------
# Tokenization

def prompt_text(tokenizer, prompt: str) -> str:
    """The prompt as the model sees it: the chat template's user turn plus the assistant
    header. Tokenizers without a template get the bare prompt and a newline."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
    return prompt + "\n"


def encode(tokenizer, ex: LMExample, max_len: int, needed: list[int] | None = None
           ) -> dict[str, list[int]]:
    """input_ids = prompt ids + target ids + eos; labels = -100 on the prompt.

    Too long: the target is cut first (it must keep at least one token), then the prompt
    loses tokens from its start (the question's end and the assistant header matter most).
    `needed`: a list that gets the row's whole length when it was cut (for a warning).
    """
    # The template already holds the special tokens; don't let the tokenizer add a bos twice.
    p_ids = tokenizer(prompt_text(tokenizer, ex.prompt), add_special_tokens=False)["input_ids"]
    t_ids = tokenizer(ex.target, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        t_ids = t_ids + [tokenizer.eos_token_id]
    if max_len < 2:
        raise ConfigError.one("max_len", max_len, "must be at least 2 (one prompt and one "
                              "target token); 64-256 is usual")
    if needed is not None and len(p_ids) + len(t_ids) > max_len:
        needed.append(len(p_ids) + len(t_ids))
    t_ids = t_ids[:max(1, max_len - len(p_ids))]
    p_ids = p_ids[-(max_len - len(t_ids)):]
    return {"input_ids": p_ids + t_ids, "labels": [IGNORE] * len(p_ids) + t_ids}


def cut_warning(needed: list[int], n: int, max_len: int) -> str | None:
    """The warning for rows that `encode` had to cut (prompt + target over max_len)."""
    if not needed:
        return None
    return (f"{len(needed)} of {n} rows are longer than max_len={max_len} (prompt + "
            f"target, up to {max(needed)} tokens): their targets are cut, some to one token; "
            f"raise max_len to {max(needed)} or use shorter prompts")


def collate(encoded: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad to the longest row. position_ids count real tokens only, so a sequence gets
    the same logits whatever padding its batch needs (and as in generation)."""
    T = max(len(e["input_ids"]) for e in encoded)
    B = len(encoded)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    for i, e in enumerate(encoded):
        n = len(e["input_ids"])
        ids[i, T - n:] = torch.tensor(e["input_ids"])
        labels[i, T - n:] = torch.tensor(e["labels"])
        attn[i, T - n:] = 1
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    return {"input_ids": ids, "attention_mask": attn, "position_ids": pos, "labels": labels}
