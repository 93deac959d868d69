"""Fault injection, part 1 (issue 4): bad input.

Every bad config value, every bad data file and every hostile name gets a message that names
the field and says what to do, the same through `validate`/`load_data` (what the app shows
next to the field) and through the CLI (one line on stderr, exit code 2, no traceback).
Nothing is written outside the runs directory. No test touches the network.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynsdpb.cli import main as cli
from dynsdpb import catalog
from dynsdpb import config as C
from dynsdpb.encoder import data as D
from dynsdpb import tables
from dynsdpb.errors import ConfigError
from tests.conftest import tiny_config, write_tiny_csv

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
OFFLINE_ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")

# The tiny settings as CLI overrides (the conftest's `tiny_config`, spelled for --set).
TINY_SET = ["model=tiny-random-bert", "steps=6", "batch_size=4", "val_size=10", "test_size=10",
            "max_len=16", "eval_every=2", "checkpoint_every=2", "lr=1e-3", "probe_size=8",
            "save_model=false", "warmup_ratio=0"]


def _sets(pairs) -> list[str]:
    out = []
    for p in pairs:
        out += ["--set", p]
    return out


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """`dynsdpb ...` in this process. An exception escaping main() fails the test: that
    would be a traceback in the terminal."""
    capsys.readouterr()
    rc = cli.main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture
def no_training(monkeypatch):
    """For inputs that must be refused before anything trains: fail fast instead of training
    the default model if a check is missing."""
    import dynsdpb.experiment as E

    def refuse(*a, **kw):
        raise AssertionError("this input should have been refused before training")
    monkeypatch.setattr(E, "run_experiment", refuse)


def assert_one_line_error(rc: int, err: str, field: str, *fix: str) -> str:
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("dynsdpb: error: "), line
    assert f"{field}=" in line, (field, line)
    for words in fix:
        assert words in line, (words, line)
    return line


def assert_problem(e: ConfigError, field: str, *fix: str) -> None:
    ps = e.for_field(field)
    assert ps, (field, str(e))
    text = " ".join(p.fix for p in ps)
    for words in fix:
        assert words in text, (words, text)
    assert str(e).startswith(f"{ps[0].field}=") or f"; {field}=" in str(e)


# --------------------------------------------------------------------------------------
# Config fields: (overrides as typed, field, words the fix must contain)

CONFIG_CASES = [
    ({"lr": "0"}, "lr", "> 0"),
    ({"lr": "-1e-5"}, "lr", "> 0"),
    ({"lr": "nan"}, "lr", "> 0"),
    ({"lr": "inf"}, "lr", "> 0"),
    ({"lr": "1e30"}, "lr", "diverges", "5e-5"),
    ({"lr": "fast"}, "lr", "use a number"),
    ({"method": "dlb", "batch_size": "5"}, "batch_size", "even", "try 6"),
    ({"method": "dynsdpb", "batch_size": "1"}, "batch_size", "even batch size >= 2"),
    ({"method": "dynsdpb", "batch_size": "3", "budget": "compute"}, "batch_size", "even"),
    ({"method": "vanilla", "batch_size": "0"}, "batch_size", "at least 1"),
    ({"steps": "0"}, "steps", "at least 1 step"),
    ({"steps": "-5"}, "steps", "at least 1 step"),
    ({"steps": "ten"}, "steps", "whole number"),
    ({"steps": "2.5"}, "steps", "whole number"),
    ({"max_len": "4"}, "max_len", "at least 8"),
    ({"alpha_max": "-0.5"}, "alpha_max", ">= 0"),
    ({"alpha_max": "nan"}, "alpha_max", ">= 0"),
    ({"alpha": "-1"}, "alpha", ">= 0"),
    ({"tau": "0"}, "tau", "> 0"),
    ({"tau_0": "-1"}, "tau_0", "> 0"),
    ({"tau_min": "0"}, "tau_min", "> 0"),
    ({"tau_max": "-2"}, "tau_max", "> 0"),
    ({"tau_min": "5", "tau_max": "2"}, "tau_min", "tau_min must be <= tau_max"),
    ({"top_k": "0"}, "top_k", "at least 1"),
    ({"seed": "1.5"}, "seed", "whole number"),
    ({"seed": "abc"}, "seed", "whole number"),
    ({"seed": "-1"}, "seed", ">= 0"),
    ({"split_seed": "-3"}, "split_seed", ">= 0"),
    ({"seed": str(2 ** 64)}, "seed", ">= 0"),
    ({"method": "sgd"}, "method", "vanilla, refeed, dlb, dynsdpb"),
    ({"schedule": "cosine"}, "schedule", "auto, static, warmup, linear, dynsdpb-v1"),
    ({"method": "dlb", "schedule": "dynsdpb-v1"}, "schedule", "use method=dynsdpb"),
    ({"budget": "time"}, "budget", "epochs, compute"),
    ({"granularity": "token"}, "granularity", "encoders use sample or batch"),
    ({"tau_direction": "up"}, "tau_direction", "soften-uncertain"),
    ({"task": "ranking"}, "task", "classification, regression"),
    ({"device": "tpu"}, "device", "auto, cpu, cuda"),
    ({"model": ""}, "model", "built-in model name"),
    ({"dataset": " "}, "dataset", "built-in dataset name"),
    ({"text_column": ""}, "text_column", "column that holds the text"),
    ({"label_column": ""}, "label_column", "column that holds the label"),
    ({"label_column": "text"}, "label_column", "a column of its own"),
    ({"text_pair_column": "s2", "label_column": "s2"}, "label_column", "a column of its own"),
    ({"text_pair_column": "text"}, "text_pair_column", "another column than text_column"),
    ({"val_size": "-1"}, "val_size", "at least 1"),
    ({"test_size": "-1"}, "test_size", "at least 1"),
    ({"eval_every": "0"}, "eval_every", ">= 1"),
    ({"checkpoint_every": "-1"}, "checkpoint_every", "0 (only at the end)"),
    ({"warmup_ratio": "1.5"}, "warmup_ratio", "[0, 1)"),
    ({"weight_decay": "-0.1"}, "weight_decay", ">= 0"),
    ({"grad_clip": "-1"}, "grad_clip", ">= 0"),
    ({"min_confidence": "2"}, "min_confidence", "[0, 1]"),
    ({"max_train_samples": "-1"}, "max_train_samples", "positive"),
    ({"probe_size": "0"}, "probe_size", "at least 1"),
    ({"warmup_alpha_steps": "-1"}, "warmup_alpha_steps", "0 or more"),
    ({"trust_remote_code": "maybe"}, "trust_remote_code", "true or false"),
    ({"save_model": "2"}, "save_model", "true or false"),
    ({"lerning_rate": "1e-5"}, "lerning_rate", "unknown field", "dynsdpb train --help"),
]
CASE_IDS = ["-".join(f"{k}={v}" for k, v in c[0].items())[:40] for c in CONFIG_CASES]


@pytest.mark.parametrize("over,field,fix", [(c[0], c[1], c[2:]) for c in CONFIG_CASES],
                         ids=CASE_IDS)
def test_config_value_is_named_with_its_fix(over, field, fix):
    # from_dict: what the CLI, YAML loading and the app's text inputs go through
    with pytest.raises(ConfigError) as ei:
        C.from_dict(over)
    assert_problem(ei.value, field, *fix)
    # validate: what the app calls to put the message next to the field
    try:
        cfg = C.from_dict(over, check=False)
    except ConfigError:
        return  # a value that cannot even be parsed (checked above)
    problems = [p for p in C.validate(cfg) if p.field == field]
    assert problems and all(w in " ".join(p.fix for p in problems) for w in fix)
    assert repr(problems[0].value) == repr(getattr(cfg, field))


@pytest.mark.parametrize("over,field,fix", [(c[0], c[1], c[2:]) for c in CONFIG_CASES],
                         ids=CASE_IDS)
def test_config_value_on_the_cli(over, field, fix, capsys, tmp_path, no_training):
    out = tmp_path / "exp"
    rc, _, err = run_cli(["train", *_sets(f"{k}={v}" for k, v in over.items()),
                          "--out", str(out)], capsys)
    assert_one_line_error(rc, err, field, *fix)
    assert not out.exists()  # nothing was created for a config that does not validate


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as ei:
        C.from_dict({"lr": "0", "steps": "0", "tau_min": "9", "top_k": "0"})
    assert {p.field for p in ei.value.problems} >= {"lr", "steps", "tau_min", "top_k"}


def test_good_defaults_validate():
    assert C.validate(C.RunConfig()) == []
    assert C.RunConfig().trust_remote_code is False


# --------------------------------------------------------------------------------------
# CLI-only inputs: seeds/method lists, --set syntax, config files

@pytest.mark.parametrize("args,field,fix", [
    (["compare", "--seeds", "0,x"], "seeds", "whole numbers"),
    (["compare", "--seeds", "0.5"], "seeds", "whole numbers"),
    (["compare", "--seeds", ","], "seeds", "at least one value"),
    (["compare", "--seeds", "0,-1"], "seed", ">= 0"),
    (["compare", "--seeds", "1,2,1"], "seeds", "give each of the seeds once"),
    (["compare", "--methods", "vanilla,sgd"], "methods", "vanilla, refeed, dlb, dynsdpb"),
    (["compare", "--methods", ""], "methods", "vanilla, refeed, dlb, dynsdpb"),
    (["compare", "--methods", "dlb", "--batch-size", "7"], "batch_size", "even"),
    (["train", "--set", "lr"], "--set", "key=value"),
    (["train", "--config", "no/such/config.yaml"], "config", "no such file"),
    (["resume", "no/such/experiment"], "dir", "not an experiment folder"),
    (["train", "--out", "{tmp}/a-file"], "--out", "is a file"),
    (["train", "--out", "{tmp}/a-file/sub"], "--out", "under a file"),
    (["train", "--out", "/proc/no-such-dir/x"], "--out", "cannot create it"),
    (["train", "--out", "{tmp}/full"], "--out", "not empty"),
])
def test_cli_lists_and_syntax(args, field, fix, capsys, tmp_path, no_training):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] != "resume" and "--out" not in args:
        args += ["--out", str(tmp_path / "o")]
    rc, _, err = run_cli(args, capsys)
    assert_one_line_error(rc, err, field, fix)
    assert (tmp_path / "full" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("text,suffix,fix", [
    ("lr: [1, 2\n", ".yaml", "not valid YAML"),
    ("{\"lr\": }", ".json", "not valid YAML/JSON"),
    ("- 1\n- 2\n", ".yaml", "must be a mapping"),
    ("lr: 0\nsteps: 0\n", ".yaml", "> 0"),
    ("lr: !!python/object/apply:os.system ['touch pwned']\n", ".yaml", "not valid YAML"),
])
def test_bad_config_file(text, suffix, fix, capsys, tmp_path, no_training, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / f"c{suffix}"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        C.load(p)
    assert fix in str(ei.value)
    rc, _, err = run_cli(["train", "--config", str(p), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and fix in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pwned").exists()  # YAML tags never run code (safe_load)


def test_cli_errors_in_a_real_process_are_one_line(tmp_path):
    """The same through a real `python -m dynsdpb.cli`: stderr holds one line, no traceback."""
    csv = write_tiny_csv(tmp_path / "d.csv")
    cases = [
        (["train", "--set", "lr=-1"], "lr=", "> 0"),
        (["compare", "--seeds", "1,two"], "seeds=", "whole numbers"),
        (["train", *_sets(TINY_SET), "--set", f"dataset={csv}", "--set", "label_column=y"],
         "label_column=", "the data has: text, label"),
    ]
    for i, (args, field, fix) in enumerate(cases):
        r = subprocess.run([PY, "-m", "dynsdpb.cli", *args, "--out", str(tmp_path / f"o{i}")],
                           cwd=ROOT, env=OFFLINE_ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert field in lines[0] and fix in lines[0], lines[0]


# --------------------------------------------------------------------------------------
# Data files: (file bytes, suffix, config overrides, field, words of the fix)

def _csv(rows, header="text,label") -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


GOOD_ROWS = [f"{'good nice day' if i % 2 else 'bad sad day'} {i},{'pos' if i % 2 else 'neg'}"
             for i in range(60)]

FILE_CASES = {
    "empty": (b"", ".csv", {}, "dataset", "the file is empty"),
    "blank": (b"  \n\n  \n", ".csv", {}, "dataset", "holds no data"),
    "header-only": (b"text,label\n", ".csv", {}, "dataset", "no rows"),
    "one-column": (b"text\nhello\nworld\n", ".csv", {}, "dataset", "delimiter"),
    "space-delimited": (b"text label\ngood pos\nbad neg\n", ".csv", {}, "dataset", "delimiter"),
    "tsv-with-commas": (_csv(GOOD_ROWS), ".tsv", {}, "dataset", "delimiter"),
    "missing-label-column": (_csv(GOOD_ROWS), ".csv", {"label_column": "sentiment"},
                             "label_column", "no such column", "text, label"),
    "missing-text-column": (_csv(GOOD_ROWS), ".csv", {"text_column": "body"},
                            "text_column", "no such column", "text, label"),
    "missing-pair-column": (_csv(GOOD_ROWS), ".csv", {"text_pair_column": "hypothesis"},
                            "text_pair_column", "no such column"),
    "mixed-labels": (_csv(GOOD_ROWS[:30] + [f"meh {i},{i % 3}" for i in range(30)]), ".csv",
                     {}, "label_column", "mixed label types", "all class names or all numbers"),
    "one-class": (_csv([f"text {i},pos" for i in range(60)]), ".csv", {}, "label_column",
                  "only one class", "at least 2"),
    "too-few-rows": (_csv(GOOD_ROWS[:20]), ".csv", {}, "test_size",
                     "lower test_size and val_size"),
    "split-needs-more": (_csv(GOOD_ROWS), ".csv", {"val_size": 30, "test_size": 30},
                         "test_size", "usable rows", "lower test_size"),
    # a quote opened on line 12 (header = line 1) and never closed: once read as an "empty
    # label" (the rest of the file became that row's text)
    "unclosed-quote": (_csv(GOOD_ROWS[:10] + ['"bad sad day 99,neg'] + GOOD_ROWS[10:]), ".csv",
                       {}, "dataset", "quoting error", "line 12", "close the quote"),
    "fewer-than-a-batch": (_csv(GOOD_ROWS), ".csv", {"max_train_samples": 2}, "max_train_samples",
                           "fewer than one batch"),
    "empty-text-column": (_csv([f",{'pos' if i % 2 else 'neg'}" for i in range(60)]), ".csv",
                          {}, "text_column", "empty text"),
    "empty-label-column": (_csv([f"text {i}," for i in range(60)]), ".csv", {}, "label_column",
                           "empty"),
    "constant-regression-target": (_csv([f"text {i},0.5" for i in range(60)]), ".csv", {},
                                   "label_column", "every target is 0.5", "vary"),
    "regression-on-words": (_csv(GOOD_ROWS), ".csv", {"task": "regression"}, "task",
                            "not numbers", "task=classification"),
    "unsupported-type": (b"text,label\n", ".xlsx", {}, "dataset", "unsupported file type",
                         ".csv"),
    "bad-jsonl": (b'{"text": "a", "label": "x"}\n{"text": \n', ".jsonl", {}, "dataset",
                  "not valid JSON Lines", "one JSON object per line"),
    "jsonl-not-objects": (b'[1, 2]\n"x"\n', ".jsonl", {}, "dataset", "must be a JSON object"),
    "bad-parquet": (b"PAR1 this is not parquet", ".parquet", {}, "dataset",
                    "not a readable Parquet file"),
    "image-renamed-to-csv": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, ".csv", {},
                             "dataset", "fewer than 2 columns", "header row"),
}


def _file_cfg(path: Path, over: dict) -> C.RunConfig:
    return tiny_config(path, **over)


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_file_through_load_data(case, tmp_path):
    raw, suffix, over, field, *fix = FILE_CASES[case]
    p = tmp_path / f"data{suffix}"
    p.write_bytes(raw)
    with pytest.raises(ConfigError) as ei:
        D.load_data(_file_cfg(p, over))
    assert_problem(ei.value, field, *fix)
    # the same bytes as an upload (the app passes the bytes, nothing on disk)
    with pytest.raises(ConfigError) as ei:
        D.load_data(_file_cfg(tmp_path / f"upload{suffix}", over), upload=raw)
    assert_problem(ei.value, field, *fix)


@pytest.mark.parametrize("case", ["empty", "tsv-with-commas", "missing-label-column",
                                  "mixed-labels", "one-class", "too-few-rows", "unclosed-quote",
                                  "empty-text-column", "unsupported-type"])
def test_bad_file_on_the_cli(case, capsys, tmp_path):
    raw, suffix, over, field, *fix = FILE_CASES[case]
    p = tmp_path / f"data{suffix}"
    p.write_bytes(raw)
    rc, out, err = run_cli(["train", *_sets(TINY_SET), "--set", f"dataset={p}",
                            *_sets(f"{k}={v}" for k, v in over.items()),
                            "--out", str(tmp_path / "exp")], capsys)
    assert_one_line_error(rc, err, field, *fix)


def test_missing_file_and_unknown_names(tmp_path, capsys):
    cases = [({"dataset": str(tmp_path / "nope.csv")}, "dataset", "no such file"),
             ({"dataset": "imdb"}, "dataset", "tweets-sentiment, bbc-news"),
             ({"dataset": "nobody/no-such-dataset"}, "dataset", "Offline",
              "tweets-sentiment")]
    for over, field, *fix in cases:
        with pytest.raises(ConfigError) as ei:
            D.load_data(tiny_config("x.csv", **over))
        assert_problem(ei.value, field, *fix)
        rc, _, err = run_cli(["train", *_sets(TINY_SET),
                              *_sets(f"{k}={v}" for k, v in over.items()),
                              "--out", str(tmp_path / f"o-{len(over[field])}")], capsys)
        assert_one_line_error(rc, err, field, *fix)


def test_unknown_model_lists_the_builtins(tmp_path, capsys):
    from dynsdpb.encoder.models import load_tokenizer
    csv = write_tiny_csv(tmp_path / "d.csv")
    for name, fix in [("nobody/no-such-model", "minilm-l6, tiny-random-bert"),
                      ("./no/such/folder", "no such folder")]:
        with pytest.raises(ConfigError) as ei:
            load_tokenizer(tiny_config(csv, model=name))
        assert_problem(ei.value, "model", fix)
        rc, _, err = run_cli(["train", *_sets(TINY_SET), "--set", f"dataset={csv}",
                              "--set", f"model={name}", "--out", str(tmp_path / name[-4:])],
                             capsys)
        assert_one_line_error(rc, err, "model", fix)


def test_max_len_over_the_model_limit(tmp_path, capsys, no_training):
    """Built-ins: checked by validate (the app shows it before Start). Other models: when
    the model is loaded, with the same message."""
    for model, limit in [("tiny-random-bert", 128), ("minilm-l6", 512)]:
        with pytest.raises(ConfigError) as ei:
            C.from_dict({"model": model, "max_len": limit + 1})
        assert_problem(ei.value, "max_len", f"at most {limit}", "lower max_len")
        assert C.validate(C.RunConfig(model=model, max_len=limit)) == []
    rc, _, err = run_cli(["train", "--set", "model=tiny-random-bert", "--set", "max_len=1000",
                          "--out", str(tmp_path / "exp")], capsys)
    assert_one_line_error(rc, err, "max_len", "at most 128", "lower max_len")
    # the table agrees with the models themselves
    from dynsdpb.encoder.models import minilm_dir, build_model, load_tokenizer, tiny_bert_config
    import json as _json
    assert _json.loads((minilm_dir() / "config.json").read_text())[
        "max_position_embeddings"] == catalog.BUILTIN_MAX_LEN["minilm-l6"]
    assert tiny_bert_config(10, 2, "classification").max_position_embeddings == \
        catalog.BUILTIN_MAX_LEN["tiny-random-bert"]
    # the load-time check (what a local or hub model gets)
    cfg = tiny_config("x.csv")
    tok = load_tokenizer(cfg)
    with pytest.raises(ConfigError) as ei:
        build_model(cfg.replace(max_len=1000), 2, "classification", tok)
    assert_problem(ei.value, "max_len", "at most 128", "lower max_len")


def test_file_over_the_size_limit(tmp_path, monkeypatch, capsys):
    raw = _csv(GOOD_ROWS)  # about 1.2 KB
    p = tmp_path / "big.csv"
    p.write_bytes(raw)
    monkeypatch.setattr(tables, "MAX_FILE_MB", 0.001)
    for upload in (None, raw):
        with pytest.raises(ConfigError) as ei:
            D.load_data(tiny_config(p), upload=upload)
        assert_problem(ei.value, "dataset", "limit", "DYNSDPB_MAX_FILE_MB")
        assert "0.001 MB" in str(ei.value)  # the limit is shown as set, not rounded to 0
    rc, _, err = run_cli(["train", *_sets(TINY_SET), "--set", f"dataset={p}",
                          "--out", str(tmp_path / "exp")], capsys)
    assert_one_line_error(rc, err, "dataset", "limit")
    # The limit is configurable from the environment, and the default is 200 MB.
    r = subprocess.run([PY, "-c", "import dynsdpb.tables as t; print(t.MAX_FILE_MB)"], cwd=ROOT,
                       env=dict(OFFLINE_ENV, DYNSDPB_MAX_FILE_MB="0.5"), capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.strip() == "0.5"
    env = {k: v for k, v in OFFLINE_ENV.items() if k != "DYNSDPB_MAX_FILE_MB"}
    r = subprocess.run([PY, "-c", "import dynsdpb.tables as t; print(t.MAX_FILE_MB)"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "200.0"


def test_non_utf8_file_falls_back_with_a_warning(tmp_path, capsys):
    rows = [f"caf\xe9 cr\xe8me {i},{'pos' if i % 2 else 'neg'}" for i in range(60)]
    raw = ("text,label\n" + "\n".join(rows) + "\n").encode("latin-1")
    p = tmp_path / "latin.csv"
    p.write_bytes(raw)
    td = D.load_data(tiny_config(p))
    assert any("not valid UTF-8" in w and "latin-1" in w and "save the file as UTF-8" in w
               for w in td.warnings), td.warnings
    assert any("café" in t for t in td.train.texts)
    # The CLI trains and shows the warning on stderr.
    rc, out, err = run_cli(["train", *_sets(TINY_SET), "--set", f"dataset={p}",
                            "--set", "steps=2", "--out", str(tmp_path / "exp")], capsys)
    assert rc == 0, err
    assert "not valid UTF-8" in err and "Traceback" not in err
    from dynsdpb.store import RunDir
    st = RunDir(tmp_path / "exp" / "dynsdpb-s0").status()
    assert st["state"] == "finished"
    assert any("not valid UTF-8" in w for w in st.get("warnings", []))


def test_other_delimiters_are_read_with_a_warning(tmp_path):
    for delim in (";", "|"):
        p = tmp_path / "semi.csv"
        p.write_bytes(_csv([r.replace(",", delim) for r in GOOD_ROWS], f"text{delim}label"))
        td = D.load_data(tiny_config(p))
        assert td.label_names == ["neg", "pos"]
        assert any(repr(delim) in w for w in td.warnings)


# --------------------------------------------------------------------------------------
# Names: path traversal and shell characters

HOSTILE = ["../../evil", "..", ".", "a/../../b", "/etc/passwd", "C:\\Windows\\evil",
           "..\\..\\evil", "run; rm -rf ~", "$(touch pwned)", "`touch pwned`", "x|y&z>w<v",
           "name\x00nul", "\n", "-rf", "~", "", "*", "con?", "'quoted' \"name\"",
           "ünïcödé", "a" * 500]


@pytest.mark.parametrize("name", HOSTILE, ids=[repr(n)[:20] for n in HOSTILE])
def test_safe_name_is_one_harmless_path_component(name):
    from dynsdpb.store import safe_name
    s = safe_name(name)
    assert s and len(s) <= 80
    assert s not in (".", "..") and not s.startswith((".", "-", "~"))
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in s), s


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_hostile_experiment_and_upload_names_stay_inside_the_runs_dir(tmp_path, monkeypatch):
    from dynsdpb.jobs.queue import JobManager
    monkeypatch.chdir(tmp_path)  # a relative escape would land here
    runs = tmp_path / "box" / "runs"
    jm = JobManager(runs, autostart=False)  # nothing trains: only the folders are written
    csv_bytes = write_tiny_csv(tmp_path / "d.csv").read_bytes()
    def outside_runs():
        return {p for p in _tree(tmp_path) if not p.startswith("box/runs")}
    before = outside_runs()
    cfg = tiny_config("unused.csv")
    names = HOSTILE[:14]
    for i, name in enumerate(names):
        job = jm.submit(cfg, ["vanilla"], [0], name=name,
                        upload=(name + ".csv", csv_bytes) if i % 2 else None)
        assert job.exp_dir.parent.resolve() == runs.resolve(), (name, job.exp_dir)
        for rd in jm.arms(job.id):
            assert rd.path.resolve().is_relative_to(job.exp_dir.resolve())
        if i % 2:
            ds = Path(C.from_dict(jm.arms(job.id)[0].config()).dataset)
            assert ds.resolve().parent == (job.exp_dir / "data").resolve(), ds
            assert ds.read_bytes() == csv_bytes
    uploads = ["../../../etc/passwd.csv", "/tmp/abs.csv", "..\\..\\x.csv", "a;rm -rf ~.csv",
               "$(id).csv", "...csv", "C:\\Users\\me\\My Data.CSV"]
    for name in uploads:
        job = jm.submit(cfg, ["vanilla"], [0], upload=(name, csv_bytes))
        dest = Path(C.from_dict(jm.arms(job.id)[0].config()).dataset)
        assert dest.resolve().parent == (job.exp_dir / "data").resolve(), (name, dest)
        assert dest.suffix == ".csv"
        assert not any(c in dest.name for c in ";$()` ")
    after = outside_runs()
    assert after == before, after - before
    assert len(jm.queue()) == len(names) + len(uploads)  # each submit got its own folder
    assert len({j for j in jm.queue()}) == len(jm.queue())


def test_bad_upload_writes_nothing(tmp_path):
    from dynsdpb.jobs.queue import JobManager
    runs = tmp_path / "runs"
    jm = JobManager(runs, autostart=False)
    for case in ["empty", "one-column", "missing-label-column", "mixed-labels", "one-class",
                 "too-few-rows", "empty-text-column", "unsupported-type"]:
        raw, suffix, over, field, *fix = FILE_CASES[case]
        with pytest.raises(ConfigError) as ei:
            jm.submit(_file_cfg(Path("x.csv"), over), ["vanilla", "dynsdpb"], [0],
                      upload=(f"up{suffix}", raw))
        assert_problem(ei.value, field, *fix)
        assert _tree(runs) == set(), case
    assert jm.queue() == []


def test_lookups_with_hostile_ids_stay_inside(tmp_path):
    from dynsdpb.jobs.queue import JobManager
    from dynsdpb.store import delete_run_or_experiment
    runs = tmp_path / "runs"
    jm = JobManager(runs, autostart=False)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "experiment.json").write_text('{"arms": []}')
    for bad in ["../precious", "../../", "/", str(outside)]:
        with pytest.raises(ConfigError):
            jm.resume(bad)
        assert jm.stop(bad) is False
        assert all(rd.path.resolve().is_relative_to(runs.resolve()) for rd in jm.arms(bad))
        with pytest.raises(ValueError):
            delete_run_or_experiment(runs, runs / bad)
    with pytest.raises(ValueError):
        delete_run_or_experiment(runs, runs)
    # a symlink inside the runs dir that points outside is not followed
    (runs / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError):
        delete_run_or_experiment(runs, runs / "link")
    assert (outside / "experiment.json").is_file()


def test_app_binds_to_localhost_unless_asked(monkeypatch):
    """`dynsdpb app` runs app/server.py (app/main.py plus the live feed's routes), whose
    folder's app/.streamlit/config.toml (read by Streamlit from any current folder) binds it
    to 127.0.0.1; a --server.address the user gives is
    passed through. The current folder stays the user's (./runs, relative data paths)."""
    import tomllib
    conf = tomllib.loads((ROOT / "app" / ".streamlit" / "config.toml").read_text())
    assert conf["server"]["address"] == "127.0.0.1"
    calls = []
    # exec (POSIX) or a child in the current folder: either way one argument list, no shell
    monkeypatch.setattr(os, "execve", lambda path, cmd, env: calls.append((cmd, env, path)))
    monkeypatch.setattr(subprocess, "call", lambda cmd, **kw: calls.append(
        (cmd, kw["env"], kw["cwd"])) or 0)
    monkeypatch.delenv("STREAMLIT_SERVER_ADDRESS", raising=False)
    assert cli.main(["app"]) == 0
    cmd, env, where = calls[0]
    assert isinstance(cmd, list)  # an argument list, never a shell string
    if os.name == "posix":
        assert where == cmd[0]       # exec'd: the process stays in the user's folder
    else:
        assert Path(where).resolve() == Path.cwd().resolve()
    assert Path(cmd[cmd.index("run") + 1]) == ROOT / "app" / "server.py"
    assert not any("address" in c for c in cmd)
    assert "STREAMLIT_SERVER_ADDRESS" not in env
    assert cli.main(["app", "--server.address", "0.0.0.0"]) == 0
    assert calls[-1][0][-2:] == ["--server.address", "0.0.0.0"]


def test_refused_input_leaves_no_half_made_experiment(tmp_path, capsys):
    """Fix the input and run the same command again: no 'already holds an experiment'."""
    csv = write_tiny_csv(tmp_path / "d.csv")
    out = tmp_path / "exp"
    args = ["train", *_sets(TINY_SET), "--set", f"dataset={csv}", "--set", "steps=2",
            "--out", str(out)]
    rc, _, err = run_cli(args + ["--set", "label_column=sentiment"], capsys)
    assert_one_line_error(rc, err, "label_column", "no such column")
    assert not out.exists() or not any(out.iterdir())
    rc, _, err = run_cli(args, capsys)
    assert rc == 0, err
    from dynsdpb.store import RunDir
    assert RunDir(out / "dynsdpb-s0").status()["state"] == "finished"


def test_job_manager_refuses_bad_requests_before_writing(tmp_path):
    from dynsdpb.jobs.queue import JobManager
    runs = tmp_path / "runs"
    jm = JobManager(runs, autostart=False)
    csv = write_tiny_csv(tmp_path / "d.csv")
    cfg = tiny_config(csv, method="vanilla", batch_size=5)  # fine for vanilla, odd for dlb
    for methods, seeds, field, fix in [([], [0], "methods", "at least one method"),
                                       (["vanilla"], [], "seeds", "at least one seed"),
                                       (["vanilla"], [0, -2], "seed", ">= 0"),
                                       (["vanilla", "dlb"], [0], "batch_size", "even"),
                                       (["vanilla"], [3, 3], "seeds", "once"),
                                       (["vanilla", "vanilla"], [0], "methods", "once")]:
        for upload in (None, ("d.csv", csv.read_bytes())):
            with pytest.raises(ConfigError) as ei:
                jm.submit(cfg, methods, seeds, name="x", upload=upload)
            assert_problem(ei.value, field, fix)
            assert _tree(runs) == set() and jm.queue() == []


def test_an_id_column_picked_as_label_gets_a_warning(tmp_path):
    p = tmp_path / "ids.csv"
    p.write_bytes(_csv([f"some text {i},row-{i}" for i in range(60)]))
    td = D.load_data(tiny_config(p))
    assert any("'label' has 60 classes for 60 rows" in w for w in td.warnings), td.warnings
    assert not any("classes" in w for w in D.load_data(tiny_config(
        write_tiny_csv(tmp_path / "ok.csv"))).warnings)


def test_invalid_size_limit_env_falls_back_with_a_warning():
    r = subprocess.run([PY, "-W", "always", "-c",
                        "import dynsdpb.tables as t; print(t.MAX_FILE_MB)"], cwd=ROOT,
                       env=dict(OFFLINE_ENV, DYNSDPB_MAX_FILE_MB="abc"),
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "200.0"
    assert "DYNSDPB_MAX_FILE_MB='abc'" in r.stderr and "Traceback" not in r.stderr
