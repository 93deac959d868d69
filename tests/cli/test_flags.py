"""CLI flags generated from RunConfig, --preset/--config experiment files, `bench`."""
import json

import pytest
import yaml

from dynsdpb.cli import main as cli
from dynsdpb import config as C
from dynsdpb.presets import dump_experiment, load_experiment


def run(args, capsys):
    capsys.readouterr()
    try:
        rc = cli.main(args)
    except SystemExit as e:          # argparse's own usage errors exit from inside
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line(rc, err, *words):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dynsdpb: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("cmd", ["train", "compare"])
def test_every_field_is_a_flag_with_its_help(cmd, capsys):
    with pytest.raises(SystemExit):
        cli.main([cmd, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    flat = "".join(text.split())            # argparse wraps lines, also after hyphens
    for name, f in C.FIELDS.items():
        assert "--" + name.replace("_", "-") + " " in text, name
        if cmd == "train" or name not in ("method", "seed"):
            assert "".join(f.metadata["help"].split()) in flat, name
    assert "{sample,batch,token}" in text and "true|false" in text


def test_flags_are_typed_and_reach_the_config(capsys):
    rc, out, err = run(["train", "--lr", "3e-5", "--alpha-max", "2", "--batch-size", "16",
                        "--granularity", "batch", "--no-save-model", "--method", "dlb",
                        "--text-pair-column", "b", "--dump"], capsys)
    assert rc == 0, err
    d = yaml.safe_load(out)
    assert (d["lr"], d["alpha_max"], d["batch_size"], d["granularity"], d["save_model"],
            d["method"], d["text_pair_column"]) == (3e-5, 2.0, 16, "batch", False, "dlb", "b")


@pytest.mark.parametrize("args,value", [(["--save-model"], True), (["--no-save-model"], False),
                                        (["--save-model", "false"], False),
                                        (["--save-model", "true"], True), ([], True)])
def test_bool_flag_forms(args, value, capsys):
    rc, out, err = run(["train", *args, "--dump"], capsys)
    assert rc == 0, err
    assert yaml.safe_load(out)["save_model"] is value


@pytest.mark.parametrize("args,words", [
    (["--lr", "3e-5", "--set", "lr=1e-4"], ["lr=", "--lr 3e-5", "--set lr=1e-4"]),
    (["--no-save-model", "--set", "save_model=true"], ["save_model=", "--set save_model=true"]),
    (["--lr", "abc"], ["lr=", "use a number"]),
    (["--granularity", "word"], ["granularity=", "sample, batch, token"]),
    (["--save-model", "maybe"], ["save_model=", "true or false"]),
    (["--batch-size", "2.5"], ["batch_size=", "whole number"]),
    (["--set", "lrr=1"], ["lrr=", "unknown field"]),
    (["--lr"], ["expected one argument"]),
    (["--l", "1"], ["unrecognized arguments"]),          # no prefix guessing
])
def test_bad_flags_are_one_line_exit_2(args, words, capsys, tmp_path):
    rc, _, err = run(["train", *args, "--out", str(tmp_path / "o")], capsys)
    one_line(rc, err, *words)
    assert not (tmp_path / "o").exists()


def test_same_value_twice_is_fine_and_file_is_below_flags(capsys, tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(C.dumps(C.RunConfig(lr=1e-4, steps=7, method="dlb")))
    rc, out, err = run(["train", "--config", str(p), "--lr", "3e-5", "--set", "lr=0.00003",
                        "--dump"], capsys)
    assert rc == 0, err
    d = yaml.safe_load(out)
    assert (d["lr"], d["steps"], d["method"]) == (3e-5, 7, "dlb")


def test_compare_preset_and_experiment_files(capsys, tmp_path):
    rc, out, err = run(["compare", "--preset", "quick-demo", "--steps", "30", "--dump"], capsys)
    assert rc == 0, err
    e = load_experiment(out, "dump")
    assert (e.methods, e.seeds, e.base.steps, e.base.max_len) == (["vanilla", "dynsdpb"], [0],
                                                                  30, 48)
    # an experiment file states its methods and seeds; flags replace them
    p = tmp_path / "e.yaml"
    p.write_text(dump_experiment(C.RunConfig(steps=5), ["dlb"], [4, 5]))
    e = load_experiment(run(["compare", "--config", str(p), "--dump"], capsys)[1], "d")
    assert (e.methods, e.seeds, e.base.steps) == (["dlb"], [4, 5], 5)
    e = load_experiment(run(["compare", "--config", str(p), "--seed", "9", "--methods",
                             "vanilla", "--dump"], capsys)[1], "d")
    assert (e.methods, e.seeds) == (["vanilla"], [9])
    # an old single-run file is a base config: compare runs all methods on 3 seeds, as before
    old = tmp_path / "old.yaml"
    old.write_text(C.dumps(C.RunConfig(method="dlb", seed=3)))
    e = load_experiment(run(["compare", "--config", str(old), "--dump"], capsys)[1], "d")
    assert (e.methods, e.seeds) == (["vanilla", "dlb", "dynsdpb"], [0, 1, 2])


@pytest.mark.parametrize("args,words", [
    (["compare", "--methods", "vanilla,dlb", "--method", "dlb"], ["methods=", "--method"]),
    (["compare", "--seeds", "0,1", "--set", "seed=1"], ["seeds=", "--set seed=1"]),
    (["compare", "--preset", "nope"], ["preset=", "quick-demo"]),
    (["compare", "--preset", "quick-demo", "--config", "x.yaml"], ["--preset=", "not both"]),
    (["train", "--preset", "paper-equal-epochs"], ["methods=", "--method"]),
    (["train", "--preset", "paper-equal-epochs", "--method", "dlb"], ["seeds=", "--seed"]),
])
def test_one_field_cannot_be_set_two_ways(args, words, capsys, tmp_path):
    rc, _, err = run([*args, "--out", str(tmp_path / "o")], capsys)
    one_line(rc, err, *words)
    assert not (tmp_path / "o").exists()


def test_train_picks_one_arm_of_an_experiment_file(capsys):
    rc, out, err = run(["train", "--preset", "paper-equal-epochs", "--method", "dlb",
                        "--seed", "2", "--dump"], capsys)
    assert rc == 0, err
    d = yaml.safe_load(out)
    assert (d["method"], d["seed"], d["steps"], d["budget"]) == ("dlb", 2, 120, "epochs")


def test_compare_with_an_experiment_file_runs_its_arms(tiny_csv, tmp_path, capsys):
    base = C.RunConfig(model="tiny-random-bert", dataset=str(tiny_csv), steps=2, batch_size=4,
                       val_size=10, test_size=10, max_len=16, eval_every=2, probe_size=8,
                       checkpoint_every=0, save_model=False, warmup_ratio=0.0)
    p = tmp_path / "e.yaml"
    p.write_text(dump_experiment(base, ["vanilla", "dynsdpb"], [1]))
    out = tmp_path / "exp"
    rc, _, err = run(["compare", "--config", str(p), "--lr", "1e-3", "--out", str(out)], capsys)
    assert rc == 0, err
    assert sorted(x.name for x in out.iterdir() if x.is_dir()) == ["dynsdpb-s1", "vanilla-s1"]
    saved = json.loads((out / "vanilla-s1" / "config.json").read_text())
    assert saved["lr"] == 1e-3 and saved["steps"] == 2


def test_bench_app_prints_one_json_line(monkeypatch, capsys):
    pytest.importorskip("playwright")    # a dev extra; the "no --app" case below needs none
    import dynsdpb.bench.app as B
    monkeypatch.setattr(B, "run", lambda log=None, **kw: (log("phase 0"), {"phases": {"0": 1}})[1])
    rc, out, err = run(["bench", "--app", "--json"], capsys)
    assert rc == 0
    assert json.loads(out.strip().splitlines()[-1]) == {"phases": {"0": 1}}
    assert len(out.strip().splitlines()) == 1 and "phase 0" in err     # progress on stderr
    rc, out, err = run(["bench", "--app"], capsys)
    assert rc == 0 and out.strip().splitlines()[0] == "phase 0"
