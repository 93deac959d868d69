"""`--report-to tensorboard` on compare and sweep: every record's numbers as scalars, one
TensorBoard run per arm; a missing extra is one line and no folder."""
from __future__ import annotations

import builtins

from dynsdpb.cli import main as cli
from dynsdpb.config import dumps
from dynsdpb.store import read_metrics
from tests.conftest import tiny_config


def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = {}
    for f in folder.glob("events.out.tfevents.*"):
        ea = EventAccumulator(str(f))
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            out[tag] = {e.step: e.value for e in ea.Scalars(tag)}
    return out


def test_compare_writes_each_arms_records_as_scalars(tiny_csv, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(dumps(tiny_config(tiny_csv, steps=4, eval_every=2)))
    out = tmp_path / "exp"
    rc = cli.main(["compare", "--config", str(cfg), "--methods", "vanilla,dynsdpb",
                   "--seeds", "0", "--report-to", "tensorboard", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    for arm in ("vanilla-s0", "dynsdpb-s0"):
        got = scalars(out / "tensorboard" / arm)
        recs = read_metrics(out / arm / "metrics.jsonl")
        for key in ("loss", "ce", "kd", "lr", "val_accuracy"):
            want = {r["step"]: r[key] for r in recs if r.get(key) is not None}
            assert want and set(got[key]) == set(want), (arm, key)
            assert all(abs(got[key][s] - v) <= 1e-6 * max(1, abs(v)) for s, v in want.items())
    assert "alpha" in scalars(out / "tensorboard" / "dynsdpb-s0")
    assert "alpha" not in scalars(out / "tensorboard" / "vanilla-s0")


def test_sweep_writes_each_run(tiny_csv, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(dumps(tiny_config(tiny_csv, steps=2, eval_every=2)))
    out = tmp_path / "sw"
    rc = cli.main(["sweep", "--config", str(cfg), "--grid", "alpha_max=0.5,2", "--methods",
                   "vanilla,dynsdpb", "--seeds", "0", "--report-to", "tensorboard",
                   "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    runs = sorted(p.relative_to(out / "tensorboard").as_posix()
                  for p in (out / "tensorboard").glob("*/*") if p.is_dir())
    assert len(runs) == 3, runs        # vanilla once (shared), dynsdpb per alpha_max
    for r in runs:
        assert {"loss", "ce", "val_accuracy"} <= set(scalars(out / "tensorboard" / r))


def test_missing_tensorboard_is_one_line_and_no_folder(tiny_csv, tmp_path, capsys,
                                                       monkeypatch):
    real = builtins.__import__

    def no_tb(name, *a, **kw):
        if name.startswith("torch.utils.tensorboard") or name == "tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_tb)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(dumps(tiny_config(tiny_csv, steps=2)))
    for cmd in (["train"], ["compare"], ["sweep", "--grid", "alpha_max=0.5,2"]):
        out = tmp_path / cmd[0]
        capsys.readouterr()
        rc = cli.main(cmd + ["--config", str(cfg), "--report-to", "tensorboard",
                             "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert "report_to" in err[0] and "dynsdpb[tensorboard]" in err[0], err
        assert not out.exists()
