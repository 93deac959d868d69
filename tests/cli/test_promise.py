"""Every command keeps the promise (issue 19): bad input is one line naming the field and the
fix (exit 2) and creates nothing; an --out folder follows one rule; external state (a
database URL, a damaged folder) is checked; a folder has one writer at a time, and a refusal
writes nothing into the live folder; Ctrl-C and SIGTERM end with one line and a resume hint
that works; options that would be ignored are refused.

The tests are parametrized over the parser's own subcommands (which have --out, --resume,
--storage, ...), so a command added later falls under them; `test_every_command_is_classified`
fails until a new command is put in KIND (and, if it writes a folder, given arguments in
`good_args`). Tiny models only (tiny-random-bert, the tiny Llama of tests/lm_tiny.py)."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from dynsdpb.cli import main as cli
from tests.conftest import tiny_config, write_tiny_csv
from tests.lm_tiny import tiny_decoder_files

# What each command does with folders: creates one (--out), writes into one (--out, may
# exist), continues one, or neither. A new subcommand must be classified here.
KIND = {"train": "creates", "compare": "creates", "sweep": "creates", "selftrain": "creates",
        "report": "writes", "app": "serves", "resume": "continues", "list": "reads",
        "bench": "measures"}
OUT_FLAG = {"app": "--runs-dir"}        # the folder option of a command that is not --out


def subcommands() -> dict:
    p = cli.build_parser()
    sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(sub.choices)


def options(cmd: str) -> set[str]:
    return {o for a in subcommands()[cmd]._actions for o in a.option_strings}


def with_option(flag: str) -> list[str]:
    return sorted(c for c in subcommands() if flag in options(c))


def out_commands() -> list[str]:
    return sorted(c for c in subcommands() if OUT_FLAG.get(c, "--out") in options(c))


# ----------------------------------------------------------------------------------------
# Fixtures: a tiny CSV, the tiny decoder, and valid arguments for every command that writes

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("promise")
    csv = write_tiny_csv(root / "d.csv")
    model, data = tiny_decoder_files(root)
    return {"csv": str(csv), "model": model, "data": data, "root": root}


def enc_flags(csv: str) -> list[str]:
    return ["--model", "tiny-random-bert", "--dataset", csv, "--steps", "4", "--batch-size",
            "4", "--val-size", "10", "--test-size", "10", "--max-len", "16", "--eval-every",
            "2", "--checkpoint-every", "2", "--probe-size", "8", "--save-model", "false",
            "--lr", "1e-3", "--warmup-ratio", "0"]


def dec_flags(files) -> list[str]:
    return ["--model", files["model"], "--dataset", files["data"], "--val-size", "2",
            "--test-size", "4", "--max-len", "48", "--steps", "2", "--batch-size", "4",
            "--lora-target-modules", "q_proj,v_proj", "--lora-r", "4", "--max-new-tokens", "4",
            "--probe-size", "2", "--save-model", "false", "--top-k", "8", "--eval-every", "2",
            "--checkpoint-every", "1"]


def an_experiment(root: Path, csv: str) -> Path:
    from dynsdpb.experiment import create_experiment
    return create_experiment(root, tiny_config(csv), ["vanilla"], [0], exp_dir=root / "exp")


def good_args(cmd: str, files, tmp_path) -> list[str]:
    """Arguments with which `cmd` would run (less its folder option)."""
    if cmd in ("train", "compare", "sweep"):
        extra = {"train": ["--method", "dlb"], "compare": ["--methods", "vanilla,dlb",
                 "--seeds", "0"], "sweep": ["--methods", "vanilla,dynsdpb", "--seeds", "0",
                                            "--grid", "alpha_max=1,2"]}[cmd]
        return [cmd, *enc_flags(files["csv"]), *extra]
    if cmd == "selftrain":
        return [cmd, *dec_flags(files), "--methods", "vanilla", "--seeds", "0", "--rounds", "1",
                "--questions", "4", "--temperature", "0"]
    if cmd == "report":
        return [cmd, str(an_experiment(tmp_path / "src", files["csv"]))]
    if cmd == "app":
        return [cmd]
    raise AssertionError(f"{cmd} writes a folder: give it arguments here")


def call(args, capfd) -> tuple[int, str, str]:
    """`dynsdpb ...` in this process; an exception escaping main() fails the test (it would be
    a traceback). capfd: also what Optuna's or a library's own handlers print."""
    capfd.readouterr()
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    out, err = capfd.readouterr()
    return rc, out, err


def one_line(rc, err, field, *words) -> str:
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("dynsdpb: error: ") and f"{field}=" in lines[0], lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(Path(root).rglob("*"))}


@pytest.fixture
def no_serve(monkeypatch):
    """`dynsdpb app` checks its runs folder, then would exec Streamlit: record instead."""
    served = []
    monkeypatch.setattr(cli, "_serve", lambda cmd, env: served.append(env) or 0)
    return served


def test_every_command_is_classified():
    assert set(subcommands()) == set(KIND), "classify the new command in KIND"
    for cmd in out_commands():
        assert KIND[cmd] in ("creates", "writes", "serves"), cmd


# ----------------------------------------------------------------------------------------
# Checks before creation

FAULTS = ["missing-dataset", "no-cuda", "grid-value-missing-dataset"]


@pytest.mark.parametrize("cmd,fault", [
    (c, f) for c in out_commands() if KIND[c] == "creates" for f in FAULTS
    if f != "grid-value-missing-dataset" or "--grid" in options(c)])
def test_refused_input_creates_nothing(cmd, fault, files, tmp_path, capfd, monkeypatch):
    args = good_args(cmd, files, tmp_path)
    missing = str(tmp_path / ("missing.jsonl" if cmd == "selftrain" else "missing.csv"))
    if fault == "missing-dataset":
        args += ["--dataset", missing]
        field = "dataset"
    elif fault == "no-cuda":
        import torch
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        args += ["--device", "cuda"]
        field = "device"
    else:
        args += ["--grid", f"dataset={files['csv']},{missing}"]
        field = "dataset"
    out = tmp_path / "out"
    rc, _, err = call([*args, "--out", out], capfd)
    one_line(rc, err, field)
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_selftrain_data_without_answers_is_refused_before_anything(files, tmp_path, capfd):
    rows = [json.loads(ln) for ln in Path(files["data"]).read_text().splitlines()]
    noans = tmp_path / "noans.jsonl"
    noans.write_text("".join(json.dumps({"prompt": r["prompt"], "target": r["target"]}) + "\n"
                             for r in rows))
    out = tmp_path / "st"
    rc, _, err = call([*good_args("selftrain", files, tmp_path), "--dataset", noans,
                       "--out", out], capfd)
    one_line(rc, err, "dataset", "answer")
    assert not out.exists()


def test_a_decoder_file_that_is_not_utf8_is_read_with_a_warning(files, tmp_path):
    from dynsdpb.decoder.data import load_lm_splits
    rows = [json.loads(ln) for ln in Path(files["data"]).read_text().splitlines()]
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes("".join(json.dumps(dict(r, prompt=r["prompt"] + " café"),
                                       ensure_ascii=False) + "\n" for r in rows).encode("latin-1"))
    sp = load_lm_splits(str(bad), n_val=2, n_test=4)
    # every distinct prompt is kept (decoder files are de-duplicated by prompt before splitting)
    assert len(sp.train) + len(sp.val) + len(sp.test) == len({r["prompt"] for r in rows})
    assert sp.train[0].prompt.endswith("café")
    assert any("not valid UTF-8" in w for w in sp.warnings)


# ----------------------------------------------------------------------------------------
# Output paths: one rule and one message for every command's folder

OUT_CASES = ["is-a-file", "under-a-file", "read-only", "holds-an-experiment"]


@pytest.mark.parametrize("cmd", out_commands())
@pytest.mark.parametrize("case", OUT_CASES)
def test_bad_out_is_one_line_and_touches_nothing(cmd, case, files, tmp_path, capfd, monkeypatch,
                                                 no_serve):
    args = good_args(cmd, files, tmp_path)
    flag = OUT_FLAG.get(cmd, "--out")
    f = tmp_path / "a-file"
    f.write_text("keep me")
    words = []
    if case == "is-a-file":
        out, words = f, ["is a file"]
    elif case == "under-a-file":
        out, words = f / "sub" / "dir", ["under a file"]
    elif case == "read-only":
        ro = tmp_path / "ro"
        ro.mkdir()
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, **kw: False if Path(p) == ro
                            else real(p, m, **kw))
        out, words = ro / "new", ["cannot write"]
    else:
        out = an_experiment(tmp_path / "other", files["csv"])
        words = ["already holds an experiment"]
    before = snapshot(tmp_path)
    rc, _, err = call([*args, flag, out], capfd)
    one_line(rc, err, flag, *words)
    assert snapshot(tmp_path) == before
    assert not no_serve


def test_the_job_manager_refuses_a_bad_runs_folder_in_one_problem(tmp_path):
    from dynsdpb.errors import ConfigError
    from dynsdpb.jobs.queue import JobManager
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(ConfigError, match="under a file"):
        JobManager(f / "runs", autostart=False)
    assert f.read_text() == "x"


def test_the_app_reports_a_bad_runs_folder_on_its_page(tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from app import common
    f = tmp_path / "f"
    f.write_text("x")
    monkeypatch.setenv("DYNSDPB_RUNS_DIR", str(f / "runs"))
    assert "under a file" in common.check_runs_dir()
    monkeypatch.setenv("DYNSDPB_RUNS_DIR", str(tmp_path / "runs"))
    assert common.check_runs_dir() is None and (tmp_path / "runs").is_dir()


# ----------------------------------------------------------------------------------------
# External state: a database URL, damaged folders

@pytest.mark.parametrize("cmd", with_option("--storage"))
@pytest.mark.parametrize("url", ["nosuchdriver://x/y", "sqlite:///{tmp}/not-a-db.sqlite"])
def test_bad_storage_is_one_line_and_creates_nothing(cmd, url, files, tmp_path, capfd):
    (tmp_path / "not-a-db.sqlite").write_bytes(b"this is not a database" * 100)
    out = tmp_path / "out"
    rc, _, err = call([*good_args(cmd, files, tmp_path), "--storage",
                       url.format(tmp=tmp_path), "--out", out], capfd)
    one_line(rc, err, "--storage")
    assert not out.exists()


def made(kind: str, files, root: Path) -> Path:
    """A folder of each kind that can be continued, made without training."""
    from dynsdpb import config as C
    if kind == "experiment":
        return an_experiment(root, files["csv"])
    if kind == "sweep":
        from dynsdpb.sweep import spec as SW
        base = tiny_config(files["csv"], steps=4, eval_every=2, checkpoint_every=2)
        return SW.create_sweep(root / "sw", base, ["vanilla", "dynsdpb"], [0],
                               grid=SW.parse_grid(["alpha_max=1,2"]))
    from dynsdpb.selftrain.run import create_selftrain, loop_from_dict
    base = C.from_dict({"model": files["model"], "dataset": files["data"], "val_size": 2,
                        "test_size": 4, "max_len": 48, "steps": 2, "batch_size": 4,
                        "lora_target_modules": "q_proj,v_proj", "lora_r": 4,
                        "max_new_tokens": 4, "probe_size": 2, "save_model": False,
                        "top_k": 8, "eval_every": 2, "checkpoint_every": 1})
    return create_selftrain(root / "st", base, loop_from_dict({"rounds": 1, "questions": 4,
                                                                "temperature": 0}),
                            ["vanilla"], [0])


# (how to continue it, which kind of folder, the file to damage)
RESUMES = [("resume", "experiment", "experiment.json"), ("resume", "selftrain", "selftrain.json"),
           ("selftrain", "selftrain", "selftrain.json"), ("sweep", "sweep", "sweep.json"),
           ("sweep", "sweep", "study.db")]


def continue_args(cmd: str, d: Path) -> list[str]:
    return ["resume", d] if cmd == "resume" else [cmd, "--resume", d]


def test_every_way_to_continue_is_covered():
    assert {c for c, _, _ in RESUMES} == set(with_option("--resume")) | {"resume"}


def test_resume_of_a_sweep_names_the_command_that_continues_it(files, tmp_path, capfd):
    d = made("sweep", files, tmp_path)
    before = snapshot(d)
    rc, _, err = call(["resume", d], capfd)
    one_line(rc, err, "dir", f"dynsdpb sweep --resume {d}")
    assert snapshot(d) == before


@pytest.mark.parametrize("cmd,kind,damage", RESUMES)
def test_a_damaged_folder_is_refused_in_one_line(cmd, kind, damage, files, tmp_path, capfd):
    d = made(kind, files, tmp_path)
    (d / damage).write_bytes(b'{"arms": [' if damage.endswith(".json") else b"garbage" * 500)
    before = snapshot(d)
    rc, _, err = call(continue_args(cmd, d), capfd)
    one_line(rc, err, "", "damaged" if damage != "sweep.json" else "not a sweep folder")
    assert snapshot(d) == before


# ----------------------------------------------------------------------------------------
# A second writer

def live_pid() -> int:
    return os.getppid()     # a process that is alive and is not this one


def as_live_writer(status_path: Path, **extra) -> int:
    from dynsdpb.store import _proc_start
    pid = live_pid()
    st = json.loads(status_path.read_text()) if status_path.is_file() else {}
    status_path.parent.mkdir(parents=True, exist_ok=True)
    status_path.write_text(json.dumps(dict(st, state="running", owner="other", pid=pid,
                                           pid_start=_proc_start(pid), **extra)))
    return pid


@pytest.mark.parametrize("cmd,kind,where", [
    ("resume", "experiment", "arm"), ("resume", "selftrain", "top"),
    ("selftrain", "selftrain", "top"), ("sweep", "sweep", "top"), ("sweep", "sweep", "run"),
    ("selftrain", "selftrain", "lock"), ("sweep", "sweep", "lock")])
def test_a_second_writer_is_refused_and_writes_nothing(cmd, kind, where, files, tmp_path,
                                                       capfd):
    d = made(kind, files, tmp_path)
    if where == "lock":
        # the other writer holds the folder but its status does not say so yet (both checked
        # at the same moment): the OS lock refuses the second one
        import fcntl
        with open(d / ".writer.lock", "a+b") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            before = snapshot(d)
            rc, _, err = call(continue_args(cmd, d), capfd)
        one_line(rc, err, "", "still running")
        assert snapshot(d) == before
        return
    if kind == "experiment":
        status = d / "vanilla-s0" / "status.json"
    elif where == "top":
        status = d / "status.json"
    else:   # one run of the sweep is being trained by the other process (no checkpoint yet)
        from dynsdpb.experiment import create_experiment
        from dynsdpb.sweep import spec as SW
        key, cfg = next(iter(SW.plan_runs(d).items()))
        run = create_experiment(d / "runs", cfg, [cfg.method], [cfg.seed],
                                exp_dir=SW.run_dir(d, key))
        status = run / f"{cfg.method}-s{cfg.seed}" / "status.json"
    pid = as_live_writer(status)
    before = snapshot(d)
    rc, _, err = call(continue_args(cmd, d), capfd)
    one_line(rc, err, "", "still running", f"pid {pid}")
    after = snapshot(d)
    if where == "run":   # the refused sweep may open its study; the live run is untouched
        after = {k: v for k, v in after.items()
                 if k not in ("study.db", "status.json", ".writer.lock")}
        before = {k: v for k, v in before.items() if k in after}
    assert after == before


def test_every_command_that_continues_refuses_a_second_writer():
    covered = {"resume", "selftrain", "sweep"}
    assert set(with_option("--resume")) | {"resume"} <= covered


# ----------------------------------------------------------------------------------------
# Interrupts: Ctrl-C and SIGTERM, one line and a resume hint that works

TRAINS = ["train", "compare", "sweep", "selftrain"]


def test_every_training_command_is_interrupt_tested():
    assert {c for c, k in KIND.items() if k == "creates"} == set(TRAINS)


class Terminated(Exception):
    """What a SIGTERM raises here when the CLI has no handler of its own."""


@pytest.mark.parametrize("cmd", TRAINS)
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupt_is_one_line_with_a_resume_hint_that_works(cmd, how, files, tmp_path, capfd,
                                                            monkeypatch):
    import dynsdpb.experiment as E
    import dynsdpb.selftrain.run as S

    def interrupted(*a, **kw):          # the first training step, or the first evaluation
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    def terminated(signum, frame):
        raise Terminated("SIGTERM reached the test's handler: the CLI has none")
    old = signal.signal(signal.SIGTERM, terminated)
    try:
        monkeypatch.setattr(E, "run_arms", interrupted)
        monkeypatch.setattr(S, "run_arms", interrupted)
        monkeypatch.setattr(S, "evaluate", interrupted)   # selftrain: before its first round
        out = tmp_path / "out"
        rc, _, err = call([*good_args(cmd, files, tmp_path), "--out", out], capfd)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert rc == 130, (rc, err)
    assert "Traceback" not in err, err
    last = [ln for ln in err.strip().splitlines() if ln.strip()][-1]
    assert "interrupted" in last and "dynsdpb " in last, err
    hint = last.split("dynsdpb ", 1)[1].split()
    monkeypatch.undo()
    rc, _, err = call(hint, capfd)
    assert rc == 0, err


@pytest.mark.parametrize("cmd", TRAINS)
def test_a_full_disk_outside_a_run_is_one_line(cmd, files, tmp_path, capfd, monkeypatch):
    """A write that fails outside an arm (the study database, a round's files): one line with
    a hint, exit 1; the arms' own faults fail the arm (tests/test_faults_runs.py)."""
    import errno
    import dynsdpb.experiment as E
    import dynsdpb.selftrain.run as S

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(E, "run_arms", full)
    monkeypatch.setattr(S, "evaluate", full)
    rc, _, err = call([*good_args(cmd, files, tmp_path), "--out", tmp_path / "out"], capfd)
    assert rc == 1 and "Traceback" not in err, err
    last = [ln for ln in err.strip().splitlines() if ln.strip()][-1]
    assert "No space left on device" in last and "free space" in last, err


def test_a_successful_resume_clears_the_old_error(files, tmp_path, capfd, monkeypatch):
    from dynsdpb.engine.train import Arm
    from dynsdpb.store import RunDir
    real = Arm.step

    def nan_once(self):
        if self.step_idx == 2:
            raise ValueError("injected fault")
        return real(self)
    monkeypatch.setattr(Arm, "step", nan_once)
    out = tmp_path / "exp"
    rc, _, err = call([*good_args("compare", files, tmp_path), "--out", out], capfd)
    assert rc == 1
    rd = RunDir(out / "vanilla-s0")
    assert rd.raw_status()["state"] == "failed" and rd.raw_status()["error"]
    monkeypatch.setattr(Arm, "step", real)
    rc, _, err = call(["resume", out], capfd)
    assert rc == 0, err
    st = rd.raw_status()
    assert st["state"] == "finished" and not st.get("error") and not st.get("hint"), st


# ----------------------------------------------------------------------------------------
# Silent surprises: refused, or a warning

SURPRISES = [
    (["--grid", "alpha_max=1,,2"], "--grid", "empty value"),
    (["--grid", "alpha_max=1,2,"], "--grid", "empty value"),
    (["--grid", "name=a,b"], "--grid", "cannot change"),
    (["--grid", "alpha_max=1,2", "--grid", "save_model=true,false"], "--grid", "cannot change"),
    (["--search", "checkpoint_every=1:5", "--trials", "2"], "--search", "cannot change"),
    (["--grid", "alpha_max=1,2", "--trials", "3"], "--trials", "--search only"),
]


def test_sweep_dump_prints_what_it_would_write_and_creates_nothing(files, tmp_path, capfd):
    out = tmp_path / "out"
    rc, text, err = call([*good_args("sweep", files, tmp_path), "--dump", "--out", out], capfd)
    assert rc == 0, err
    assert json.loads(text)["grid"] == {"alpha_max": [1.0, 2.0]} and not out.exists()


@pytest.mark.parametrize("extra,field,words", SURPRISES)
def test_sweep_options_that_would_be_ignored_or_make_identical_cells(extra, field, words, files,
                                                                     tmp_path, capfd):
    args = [a for a in good_args("sweep", files, tmp_path) if a != "alpha_max=1,2"]
    args.remove("--grid")
    out = tmp_path / "out"
    rc, _, err = call([*args, *extra, "--out", out], capfd)
    one_line(rc, err, field, words)
    assert not out.exists()


@pytest.mark.parametrize("cmd", with_option("--resume"))
@pytest.mark.parametrize("extra", [["--out", "elsewhere"], ["--set", "lr=0.1"], ["--steps", "9"]])
def test_options_do_not_apply_with_resume(cmd, extra, files, tmp_path, capfd):
    d = made(cmd, files, tmp_path)
    before = snapshot(d)
    rc, _, err = call([cmd, "--resume", d, *extra], capfd)
    one_line(rc, err, extra[0], "does not apply with --resume")
    assert snapshot(d) == before and not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("extra", [["--model", "x"], ["--dataset", "y"], ["--steps", "3"]])
def test_bench_app_refuses_options_it_does_not_read(extra, capfd, monkeypatch):
    import dynsdpb.bench.app as B
    monkeypatch.setattr(B, "run", lambda log: pytest.fail("measured despite the refusal"))
    rc, _, err = call(["bench", "--app", *extra], capfd)
    one_line(rc, err, extra[0], "does not apply")


def test_a_prompt_longer_than_max_len_is_a_warning(files):
    from dynsdpb import config as C
    from dynsdpb.tasks import prepare
    base = dict(model=files["model"], dataset=files["data"], val_size=2, test_size=4,
                lora_target_modules="q_proj,v_proj")
    # (the file repeats prompts: the de-duplication's own warning is not this test's subject)
    def too_long(cfg):
        return [w for w in prepare(cfg).data.warnings if "max_len" in w]
    assert not too_long(C.from_dict({**base, "max_len": 48}))
    ws = too_long(C.from_dict({**base, "max_len": 10}))
    assert len(ws) == 1 and "longer than max_len=10" in ws[0] and "raise max_len to" in ws[0]

