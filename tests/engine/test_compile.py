"""`compile: true` (torch.compile of the training forward). On CPU inductor needs a C++
compiler: with one, a compiled run's losses match the eager run's (dropout off: inductor draws
its dropout masks from another RNG stream) and the checkpoint holds the plain module's
state_dict; without one, the run is refused with the reason."""
from __future__ import annotations

import shutil

import pytest
import torch

from dynsdpb.errors import ConfigError
from dynsdpb.experiment import create_experiment, run_experiment
from dynsdpb.store import RunDir
from tests.conftest import tiny_config


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                    reason="inductor on CPU needs a C++ compiler")
def test_a_compiled_run_matches_the_eager_one_and_saves_plain_keys(tiny_csv, tmp_path,
                                                                   no_dropout_model):
    losses, cks = {}, {}
    for c in (False, True):
        cfg = tiny_config(tiny_csv, model=str(no_dropout_model), steps=3, eval_every=3,
                          checkpoint_every=3, compile=c)
        exp = create_experiment(tmp_path / f"compile-{c}", cfg, ["dynsdpb"], [0])
        assert run_experiment(exp)["states"] == {"dynsdpb-s0": "finished"}
        rd = RunDir(exp / "dynsdpb-s0")
        losses[c] = [(r["loss"], r["kd"]) for r in rd.metrics()]
        cks[c] = torch.load(rd.checkpoint_path, map_location="cpu", weights_only=True)["model"]
    for (l0, k0), (l1, k1) in zip(losses[False], losses[True]):
        assert l1 == pytest.approx(l0, rel=1e-4, abs=1e-6)
        assert k1 == pytest.approx(k0, rel=1e-2, abs=1e-6)
    assert not any("_orig_mod" in k for k in cks[True])
    assert cks[True].keys() == cks[False].keys()
    for k in cks[False]:
        assert torch.allclose(cks[True][k].float(), cks[False][k].float(), atol=1e-4), k


def test_compile_is_refused_on_cpu_without_a_cpp_compiler(tiny_csv, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    exp = create_experiment(tmp_path / "runs", tiny_config(tiny_csv, compile=True),
                            ["vanilla"], [0])
    with pytest.raises(ConfigError) as e:
        run_experiment(exp)
    assert "C++ compiler" in str(e.value) and "compile off" in str(e.value)
    assert RunDir(exp / "vanilla-s0").status()["state"] == "failed"
