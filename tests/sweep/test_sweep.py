"""Exploration tools (issue 11): the refeed control arm, the drift split, teacher mode,
label noise, sweeps (grid expansion, baseline sharing, resume after a kill, the heatmap's
numbers) and reports, on the tiny random BERT."""
import json
import math

import numpy as np
import pytest
import torch

from dynsdpb.config import validate
from dynsdpb.encoder.data import flip_labels, load_data
from dynsdpb.experiment import create_experiment, run_experiment
from dynsdpb.engine.schedules import describe
from dynsdpb.store import RunDir, read_metrics
from dynsdpb.tasks import prepare
from dynsdpb.engine.train import Arm
from tests.conftest import tiny_config, write_tiny_csv


def _metrics(cfg, root, method):
    exp = create_experiment(root, cfg, [method], [0])
    run_experiment(exp)
    return read_metrics(exp / f"{method}-s0" / "metrics.jsonl"), RunDir(exp / f"{method}-s0")


# -- refeed -----------------------------------------------------------------------------

def test_refeed_equals_dlb_with_alpha_zero_bit_for_bit(tiny_csv, tmp_path):
    cfg = tiny_config(tiny_csv, steps=6, eval_every=3, lr=1e-2, tau=2.0)
    ref, rd_ref = _metrics(cfg.replace(method="refeed"), tmp_path / "a", "refeed")
    dlb, rd_dlb = _metrics(cfg.replace(method="dlb", alpha=0.0), tmp_path / "b", "dlb")
    skip = {"time", "wall_time", "samples_per_s", "method", "schedule"}
    assert len(ref) == len(dlb) == 6
    for r, d in zip(ref, dlb):
        assert {k: v for k, v in r.items() if k not in skip} == \
               {k: v for k, v in d.items() if k not in skip}
        assert r["schedule"] == "refeed" and r["kd"] == 0.0
    # the re-feed layout: it forwards the carried half again, unlike vanilla
    assert ref[-1]["samples_seen"] > 6 * cfg.batch_size
    assert rd_ref.summary()["test_accuracy"] == rd_dlb.summary()["test_accuracy"]
    assert "alpha = 0" in describe(cfg.replace(method="refeed"))


def test_summary_splits_gain_into_refeed_and_distillation(tiny_csv, tmp_path):
    cfg = tiny_config(tiny_csv, steps=4, eval_every=4, lr=1e-2)
    exp = create_experiment(tmp_path, cfg, ["vanilla", "refeed", "dlb"], [0, 1])
    out = run_experiment(exp)
    s = out["summary"]["methods"]
    for seed in ("0", "1"):
        v, r, d = (s[m]["test_accuracy"]["per_seed"][seed] for m in ("vanilla", "refeed", "dlb"))
        assert v is not None and r is not None and d is not None
    split = s["dlb"]["test_accuracy"]
    want_refeed = np.mean([s["refeed"]["test_accuracy"]["per_seed"][k]
                           - s["vanilla"]["test_accuracy"]["per_seed"][k] for k in ("0", "1")])
    want_dist = np.mean([s["dlb"]["test_accuracy"]["per_seed"][k]
                         - s["refeed"]["test_accuracy"]["per_seed"][k] for k in ("0", "1")])
    assert math.isclose(split["refeed_part"]["mean"], want_refeed, abs_tol=1e-12)
    assert math.isclose(split["distillation_part"]["mean"], want_dist, abs_tol=1e-12)
    # the two parts add up to the gain over vanilla
    assert math.isclose(split["refeed_part"]["mean"] + split["distillation_part"]["mean"],
                        split["diff_vs_vanilla"]["mean"], abs_tol=1e-12)
    assert "refeed_part" not in s["refeed"]["test_accuracy"]


# -- drift split --------------------------------------------------------------------------

def _split_arm(csv, tmp_path, **kw):
    cfg = tiny_config(csv, method="dlb", steps=8, eval_every=2, checkpoint_every=0,
                      lr=5e-2, alpha=1.0, tau=1.0, **kw)
    task = prepare(cfg)
    rd = RunDir(tmp_path / "dlb-s0")
    rd.path.mkdir(parents=True)
    return Arm(cfg, task, rd)


def _eval_records(arm):
    recs = []
    while not arm.done:
        rec = arm.step()
        if arm.eval_due and rec.get("update_drift") is not None:
            recs.append(rec)
    return recs


def test_drift_split_frozen_weights_leave_only_dropout(tiny_csv, tmp_path):
    arm = _split_arm(tiny_csv, tmp_path)
    arm.opt.step = lambda *a, **k: None      # frozen weights: only the dropout masks differ
    recs = _eval_records(arm)
    assert len(recs) == 4                    # evaluations after steps 2, 4, 6, 8
    for r in recs:
        assert r["logit_drift"] > 1e-6       # the tiny model has dropout: the drift is not 0
        assert math.isclose(r["dropout_drift"], r["logit_drift"], rel_tol=1e-5, abs_tol=1e-9)
        assert abs(r["update_drift"]) < 1e-9


def test_drift_split_without_dropout_is_the_update(tiny_csv, tmp_path):
    arm = _split_arm(tiny_csv, tmp_path)
    for m in arm.model.modules():            # dropout off everywhere (layers and attention)
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "dropout_prob"):
            m.dropout_prob = 0.0
    recs = _eval_records(arm)
    assert len(recs) == 4
    for r in recs:
        assert r["update_drift"] > 1e-6
        assert math.isclose(r["update_drift"], r["logit_drift"], rel_tol=1e-4, abs_tol=1e-9)
        assert abs(r["dropout_drift"]) < 1e-9


def test_drift_split_leaves_training_unchanged_and_is_logged(tiny_csv, tmp_path):
    # the split's extra forwards restore the dropout RNG: the records equal a run whose
    # evaluations come at other steps (no split at steps 1-5)
    cfg = tiny_config(tiny_csv, method="dynsdpb", steps=6, lr=1e-2, checkpoint_every=0)
    a, _ = _metrics(cfg.replace(eval_every=2), tmp_path / "a", "dynsdpb")
    b, _ = _metrics(cfg.replace(eval_every=6), tmp_path / "b", "dynsdpb")
    for ra, rb in zip(a, b):
        assert (ra["loss"], ra["kd"], ra["alpha"]) == (rb["loss"], rb["kd"], rb["alpha"])
    assert a[3]["update_drift"] is not None and a[3]["dropout_drift"] is not None
    assert a[2]["update_drift"] is None      # no evaluation at step 3
    v, _ = _metrics(cfg.replace(method="vanilla", eval_every=2), tmp_path / "c", "vanilla")
    assert all(r["update_drift"] is None for r in v)   # no carried half, no split


# -- teacher mode --------------------------------------------------------------------------

def test_teacher_mode_eval_teaches_without_dropout(tiny_csv, tmp_path):
    cfg = tiny_config(tiny_csv, method="dlb", steps=4, eval_every=4, lr=1e-2, alpha=1.0)
    tr, _ = _metrics(cfg, tmp_path / "a", "dlb")
    ev, rd = _metrics(cfg.replace(teacher_mode="eval"), tmp_path / "b", "dlb")
    assert tr[0]["loss"] == ev[0]["loss"]            # step 1 has no teacher yet
    assert ev[1]["kd"] != tr[1]["kd"]                # another target from step 2 on
    assert ev[1]["ce"] == tr[1]["ce"]                # same weights, same masks at step 2
    assert rd.summary()["teacher_mode"] == "eval"
    assert any(p.field == "teacher_mode" for p in validate(cfg.replace(teacher_mode="x")))


# -- label noise ---------------------------------------------------------------------------

def test_label_noise_flips_exact_count_only_in_train_deterministically(tmp_path):
    csv = write_tiny_csv(tmp_path / "d.csv", n=200)
    cfg = tiny_config(csv, val_size=20, test_size=20)
    clean = load_data(cfg)
    noisy = load_data(cfg.replace(label_noise=0.25))
    again = load_data(cfg.replace(label_noise=0.25))
    n = len(clean.train)
    changed = clean.train.labels != noisy.train.labels
    assert changed.sum() == round(0.25 * n) == noisy.flipped
    assert clean.train.texts == noisy.train.texts
    assert np.array_equal(noisy.train.labels, again.train.labels)       # deterministic
    assert np.array_equal(clean.val.labels, noisy.val.labels)           # val untouched
    assert np.array_equal(clean.test.labels, noisy.test.labels)         # test untouched
    other = load_data(cfg.replace(label_noise=0.25, split_seed=1))
    assert noisy.train_fingerprint != clean.train_fingerprint
    assert other.flipped == round(0.25 * len(other.train))
    # three classes: a flip never lands on the true class
    y = np.arange(300) % 3
    z, k = flip_labels(y, 3, 0.5, seed=4)
    assert k == 150 and (z != y).sum() == 150 and set(np.unique(z)) <= {0, 1, 2}
    bad = validate(cfg.replace(label_noise=1.0))
    assert [p.field for p in bad] == ["label_noise"] and "[0, 1)" in bad[0].fix


# -- sweeps --------------------------------------------------------------------------------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from dynsdpb.sweep import spec as SW  # noqa: E402
from dynsdpb.sweep import read as SR  # noqa: E402
from dynsdpb.sweep import run as SX  # noqa: E402
from dynsdpb.config import dumps  # noqa: E402
from dynsdpb.errors import ConfigError  # noqa: E402


def test_grid_expansion_and_parsing():
    g = SW.parse_grid(["alpha_max=0.5,1,2,4", "lr=2e-5,5e-5,2e-4"])
    assert g == {"alpha_max": [0.5, 1.0, 2.0, 4.0], "lr": [2e-5, 5e-5, 2e-4]}
    cells = SW.expand_grid(g)
    assert len(cells) == 12 and cells[0] == {"alpha_max": 0.5, "lr": 2e-5}
    assert cells[1] == {"alpha_max": 0.5, "lr": 5e-5}       # the first axis varies slowest
    assert SW.parse_search(["alpha_max=0.1:4"]) == {"alpha_max": [0.1, 4.0]}
    for bad, flag in ((["alfa=1,2"], "--grid"), (["seed=1,2"], "--grid"),
                      (["lr=1,1"], "--grid"), (["lr"], "--grid")):
        with pytest.raises(ConfigError) as e:
            SW.parse_grid(bad)
        assert e.value.problems[0].field == flag
    with pytest.raises(ConfigError):
        SW.parse_search(["alpha_max=4:0.1"])
    with pytest.raises(ConfigError):
        SW.parse_search(["granularity=1:2"])


def test_baselines_are_shared_across_settings_they_do_not_read(tiny_csv):
    base = tiny_config(tiny_csv)
    k = lambda **kw: SW.run_key(base.replace(**kw))  # noqa: E731
    # vanilla and refeed read no KD field; dlb does not read alpha_max (static schedule)
    for m in ("vanilla", "refeed", "dlb"):
        assert k(method=m, alpha_max=0.5) == k(method=m, alpha_max=4.0)
    assert k(method="dynsdpb", alpha_max=0.5) != k(method="dynsdpb", alpha_max=4.0)
    assert k(method="vanilla", lr=1e-3) != k(method="vanilla", lr=1e-2)
    assert k(method="vanilla", budget="compute") == k(method="vanilla", budget="epochs")
    assert k(method="refeed", budget="compute") != k(method="refeed", budget="epochs")
    assert k(method="dlb", schedule="linear", alpha_max=0.5) != \
        k(method="dlb", schedule="linear", alpha_max=4.0)
    assert k(method="vanilla", seed=0) != k(method="vanilla", seed=1)


def test_a_field_added_to_runconfig_after_a_sweep_keeps_its_run_keys(tiny_csv):
    """A sweep made before RunConfig had `compile` keyed its runs without it; after the code
    update its keys must not change, or its finished runs are lost and retrained."""
    import hashlib
    cfg = tiny_config(tiny_csv, method="dynsdpb")
    assert hasattr(cfg, "compile") and cfg.compile is False
    old_fields = set(cfg.to_dict()) - {"compile"}
    legacy = {k: v for k, v in SW.effective(cfg).to_dict().items() if k in old_fields}
    h = hashlib.sha1(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:10]
    assert SW.run_key(cfg, old_fields) == f"dynsdpb-s0-{h}"
    assert SW.run_key(cfg) != SW.run_key(cfg, old_fields)     # hashing every field would
    # the new field set away from its default is a different run
    assert SW.run_key(cfg.replace(compile=True), old_fields) != SW.run_key(cfg, old_fields)
    # a sweep made now: every field is known, the key is the full hash
    assert SW.spec_key({"base_config": cfg.to_dict()}, cfg) == SW.run_key(cfg)


def _sweep(tmp_path, csv, grid, methods, seeds, **kw):
    base = tiny_config(csv, steps=3, eval_every=3, checkpoint_every=0, **kw)
    return SW.create_sweep(tmp_path / "sw", base, methods, seeds, grid=SW.parse_grid(grid))


def test_grid_sweep_runs_each_unique_run_once_and_heatmap_equals_summaries(tiny_csv, tmp_path):
    out = _sweep(tmp_path, tiny_csv, ["alpha_max=0.5,2", "lr=1e-3,1e-2"],
                 ["vanilla", "refeed", "dlb", "dynsdpb"], [0, 1])
    plan = SW.plan_runs(out)
    # per seed: vanilla, refeed and dlb once per lr (2 each), dynsdpb once per cell (4)
    assert len(plan) == 2 * (2 + 2 + 2 + 4)
    ran = []
    res = SX.run_sweep(out, on_run=lambda key, reused: ran.append((key, reused)))
    assert res["complete"]
    fresh = [k for k, r in ran if not r]
    assert sorted(fresh) == sorted(plan) and len(set(fresh)) == len(fresh)
    assert len(list((out / "runs").iterdir())) == len(plan)
    cl = SR.cells(out)
    assert len(cl) == 4 and all(c["runs_done"] == c["runs_total"] == 8 for c in cl)
    from dynsdpb.compare import summarize
    for vs in ("vanilla", "dlb"):
        hm = SR.heatmap(cl, "alpha_max", "lr", "dynsdpb", vs)
        assert hm["x"] == [0.5, 2.0] and hm["y"] == [1e-3, 1e-2]
        for c in cl:
            # recompute the cell's summary from its runs' summary.json files
            sums = [SW.local_summary(out, SW.run_key(cfg))
                    for cfg in SW.cell_configs(SW.load_sweep(out), c["params"])]
            d = summarize(sums)["methods"]["dynsdpb"]["test_accuracy"][f"diff_vs_{vs}"]
            i, j = hm["y"].index(c["params"]["lr"]), hm["x"].index(c["params"]["alpha_max"])
            assert (hm["z"][i][j], hm["ci_low"][i][j], hm["ci_high"][i][j]) == \
                   (d["mean"], d["ci_low"], d["ci_high"])
            assert hm["significant"][i][j] == (d["ci_low"] > 0 or d["ci_high"] < 0)
    # a second call finds everything done and trains nothing
    again = []
    SX.run_sweep(out, on_run=lambda key, reused: again.append(reused))
    assert again == []

    # the report on this finished sweep
    from dynsdpb.report import write_report
    md = write_report([str(out)], tmp_path / "rep")
    assert (tmp_path / "rep" / "report.md").read_text() == md
    assert "| alpha_max=0.5, lr=0.001 |" in md and "vs vanilla" in md
    assert "distillation part" in md and "runs" in md
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert pngs == ["sw-heatmap-dlb.png", "sw-heatmap-vanilla.png"], pngs
    assert "![dynsdpb - vanilla](sw-heatmap-vanilla.png)" in md
    # the config diff names what the sweep's base set away from the defaults
    assert "| model | 'minilm-l6' | 'tiny-random-bert' |" in md
    cell = next(c for c in cl if c["params"] == {"alpha_max": 2.0, "lr": 1e-2})
    d = cell["summary"]["methods"]["dynsdpb"]["test_accuracy"]["diff_vs_vanilla"]
    from dynsdpb.compare import fmt_ci
    assert fmt_ci(d, True) in md
    # the decomposition table: per cell, refeed - vanilla and each method - refeed
    assert "Where the gain over vanilla comes from" in md
    dd = cell["summary"]["methods"]["dynsdpb"]["test_accuracy"]
    after = md[md.index("Where the gain over vanilla comes from"):].splitlines()
    row = next(ln for ln in after if ln.startswith("| alpha_max=2.0, lr=0.01 |"))
    r = cell["summary"]["methods"]["refeed"]["test_accuracy"]["diff_vs_vanilla"]
    assert row.split(" | ")[1].strip("*") == fmt_ci(r, True)
    assert fmt_ci(dd["distillation_part"], True) in row and fmt_ci(dd["diff_vs_dlb"], True) in row
    assert fmt_ci({"mean": -1e-9, "ci_low": -0.01, "ci_high": 0.01}, True) == \
        "+0.00 [-1.00, +1.00]"
    # the dynamics table: per cell and distilling method, kd / loss from the runs' records
    dyn = SR.dynamics(out)
    assert {(tuple(d["params"].items()), d["method"]) for d in dyn} == {
        (tuple(c["params"].items()), m) for c in cl for m in ("dlb", "dynsdpb")}
    d = next(x for x in dyn if x["method"] == "dynsdpb"
             and x["params"] == {"alpha_max": 2.0, "lr": 1e-2})
    import statistics
    shares = []
    for cfg in SW.cell_configs(SW.load_sweep(out), d["params"]):
        if cfg.method == "dynsdpb":
            recs = [r for r in RunDir(SW.run_dir(out, SW.run_key(cfg)) / f"dynsdpb-s{cfg.seed}")
                    .metrics() if r.get("kd") is not None][-20:]
            shares.append(statistics.mean(r["kd"] for r in recs)
                          / statistics.mean(r["loss"] for r in recs))
    assert d["seeds"] == 2 and abs(d["kd_share"] - statistics.mean(shares)) < 1e-12
    assert f"{100 * d['kd_share']:.2f}%" in md and "kd / loss" in md


def test_sweep_resumes_after_a_kill(tiny_csv, tmp_path):
    base = tiny_config(tiny_csv, steps=60, eval_every=30, checkpoint_every=5)
    cfg_file = tmp_path / "base.yaml"
    cfg_file.write_text(dumps(base))
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "dynsdpb.cli", "sweep", "--config", str(cfg_file),
           "--grid", "alpha_max=0.5,2", "--methods", "vanilla,dynsdpb", "--seeds", "0",
           "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # kill -9 once one run finished and another is past its first checkpoint
    deadline = time.time() + 240
    while time.time() < deadline:
        done = list(out.glob("runs/*/*/summary.json"))
        ckpt = [c for c in out.glob("runs/*/*/checkpoint/state.pt")
                if not (c.parent.parent / "summary.json").exists()]
        if done and ckpt:
            break
        assert p.poll() is None, p.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    finished = {c.parent.parent.name: c.stat().st_mtime_ns for c in done}
    ran = []
    res = SX.run_sweep(out, on_run=lambda key, reused: ran.append((key, reused)))
    assert res["complete"]
    assert len(list((out / "runs").iterdir())) == 3          # vanilla shared, 2 x dynsdpb
    for key, mtime in finished.items():                        # finished runs: not redone
        assert (key, True) in ran
        assert next((out / "runs" / key).glob("*/summary.json")).stat().st_mtime_ns == mtime
    # the interrupted run continued from its checkpoint: a resumed_from in its status
    resumed = [json.loads(s.read_text()).get("resumed_from")
               for s in out.glob("runs/*/*/status.json")]
    assert any(r for r in resumed), resumed
    import optuna
    st = optuna.load_study(study_name=SW.STUDY, storage=SW.storage_url(out, SW.load_sweep(out)))
    states = sorted(t.state.name for t in st.get_trials())
    assert states.count("COMPLETE") == 2 and "FAIL" in states and "RUNNING" not in states
