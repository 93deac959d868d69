"""Local data files: CSV/TSV/JSONL/JSON/Parquet read into rows (dicts), with the checks a
user's file needs: a size limit (DYNSDPB_MAX_FILE_MB), the encoding (UTF-8, else latin-1 with
a warning), a quote that never closes, a delimiter that is not a comma. Every refusal is a
ConfigError naming the file and the fix. data.py turns the rows into a task's splits.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from dynsdpb.errors import ConfigError


def _max_file_mb(default: float = 200.0) -> float:
    """Upload/file size limit from DYNSDPB_MAX_FILE_MB; a value that is not a positive
    number falls back to the default with a warning instead of breaking the import."""
    raw = os.environ.get("DYNSDPB_MAX_FILE_MB", "")
    if not raw:
        return default
    try:
        v = float(raw)
        if v > 0 and math.isfinite(v):
            return v
    except ValueError:
        pass
    import warnings
    warnings.warn(f"DYNSDPB_MAX_FILE_MB={raw!r} is not a positive number of MB; using "
                  f"{default:g}", stacklevel=2)
    return default


MAX_FILE_MB = _max_file_mb()
FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def _decode(raw: bytes, path: str) -> tuple[str, list[str]]:
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError as e:
        return raw.decode("latin-1"), [
            f"{path} is not valid UTF-8 (byte {e.start}); read it as latin-1. If characters "
            "look wrong, save the file as UTF-8."]


def _check_quotes(text: str, delim: str, start: int, name: str) -> None:
    """Refuse a quote that opens a field and never closes. Python's csv (non-strict) reads
    the rest of the file into that one field without a word, which then surfaces as an
    'empty label'. An unclosed quote swallows everything to the end, so it can only sit in
    the last record (it starts after line `start`): re-read that record strictly (strict
    everywhere would refuse files that read fine today, e.g. `"a"b`)."""
    lines = io.StringIO(text, newline="").readlines()  # the lines csv counts (not \u2028)
    try:
        for _ in csv.reader(io.StringIO("".join(lines[start:]), newline=""), delimiter=delim,
                            strict=True):
            pass
    except csv.Error as e:
        if "unexpected end of data" not in str(e):
            return
        at = next((start + k + 1 for k, ln in enumerate(lines[start:]) if '"' in ln), start + 1)
        raise ConfigError.one("dataset", name, f"quoting error: the quote on line {at} opens a "
                              "field that is never closed, so the rest of the file would be "
                              "read as one field; close the quote (a quote inside a quoted "
                              'field is written "") or remove it') from None


def read_table(path: str | Path, data: bytes | None = None) -> tuple[list[dict], list[str]]:
    """Rows of a CSV/TSV/JSONL/JSON/Parquet file as dicts, plus warnings.

    `data` lets the app pass an upload's bytes without writing it anywhere first.
    """
    p = Path(path)
    name = p.name
    suffix = p.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise ConfigError.one("dataset", str(path), f"unsupported file type {suffix or '(none)'}; "
                              f"use one of {', '.join(FILE_SUFFIXES)}")
    if data is None:
        if not p.is_file():
            raise ConfigError.one("dataset", str(path), "no such file; check the path")
        size = p.stat().st_size
    else:
        size = len(data)
    if size > MAX_FILE_MB * 1e6:
        raise ConfigError.one("dataset", name, f"the file is {size / 1e6:.3g} MB, over the "
                              f"{MAX_FILE_MB:g} MB limit; use a smaller sample (or raise "
                              "DYNSDPB_MAX_FILE_MB)")
    if size == 0:
        raise ConfigError.one("dataset", name, "the file is empty")
    raw = data if data is not None else p.read_bytes()
    warnings: list[str] = []
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            rows = pq.read_table(io.BytesIO(raw)).to_pylist()
        except Exception as e:  # noqa: BLE001 - any parse error is the user's file
            raise ConfigError.one("dataset", name, f"not a readable Parquet file ({e})") from None
        return rows, warnings
    text, warnings = _decode(raw, name)
    if not text.strip():
        raise ConfigError.one("dataset", name, "the file holds no data")
    if suffix in (".jsonl", ".json"):
        stripped = text.lstrip()
        try:
            if suffix == ".json" and stripped.startswith("["):
                rows = json.loads(stripped)
            else:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ConfigError.one("dataset", name, f"not valid JSON Lines (line {e.lineno}: "
                                  f"{e.msg}); write one JSON object per line") from None
        if not all(isinstance(r, dict) for r in rows):
            raise ConfigError.one("dataset", name, "each line must be a JSON object such as "
                                  '{"text": "...", "label": "..."}')
        return rows, warnings
    # CSV / TSV: sniff the delimiter among the usual ones.
    sample = text[:20000]
    if suffix == ".tsv":
        delim = "\t"
    else:
        try:
            delim = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
        except csv.Error:
            delim = ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delim)
    rows, last_start, end = [], 0, 0
    for r in reader:
        rows.append(dict(r))
        last_start, end = end, reader.line_num  # lines before the last record, after it
    _check_quotes(text, delim, last_start, name)
    if not reader.fieldnames or len(reader.fieldnames) < 2:
        raise ConfigError.one("dataset", name, "found fewer than 2 columns; is the delimiter "
                              "right? Use commas (or tabs in a .tsv) and a header row such as "
                              "text,label")
    if delim != ",":
        warnings.append(f"{name}: read with delimiter {delim!r}.")
    return rows, warnings


def dedup(items: list, key, label) -> tuple[list, dict]:
    """Drop repeated rows before any split (a repeat would otherwise land in train and test
    alike): rows with the same `key(row)` are one, the first copy kept, in file order. A key
    whose rows carry different labels (`label(row)`; None counts as no label) is dropped with
    all its copies: not a majority vote, as two copies are a tie and regression targets have no
    majority. The encoders key by (text, pair), the decoders by prompt."""
    groups: dict = {}
    for i, x in enumerate(items):
        groups.setdefault(key(x), []).append(i)
    keep, repeats, conflicts, conflict_rows = [], 0, 0, 0
    for idx in groups.values():      # in order of first appearance
        if len({label(items[i]) for i in idx} - {None}) > 1:
            conflicts += 1
            conflict_rows += len(idx)
            continue
        keep.append(items[idx[0]])
        repeats += len(idx) - 1
    return keep, {"rows": len(items), "repeats_dropped": repeats,
                  "conflicting_texts": conflicts, "conflicting_rows_dropped": conflict_rows,
                  "kept": len(keep)}
