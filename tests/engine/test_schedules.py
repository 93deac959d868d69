"""alpha/tau schedules: ranges, early uniform predictions teach little, options behave."""
import math

import torch

from dynsdpb.config import RunConfig
from dynsdpb.engine.schedules import describe, dyn_alpha_tau, signals, static_alpha, teacher_for

DYN = RunConfig(method="dynsdpb")


def test_signals_ranges_and_extremes():
    uniform = torch.zeros(3, 4)
    u, d = signals(uniform, torch.tensor([0, 1, 2]))
    assert torch.allclose(u, torch.ones(3)) and torch.allclose(d, torch.zeros(3), atol=1e-7)
    sure_right = torch.tensor([[20.0, 0, 0, 0]])
    u, d = signals(sure_right, torch.tensor([0]))
    assert float(u) < 1e-3 and float(d) > 0.99
    u, d = signals(sure_right, torch.tensor([1]))  # confidently wrong
    assert float(d) < -0.99
    z = torch.randn(200, 5)
    u, d = signals(z, torch.randint(0, 5, (200,)))
    assert float(u.min()) >= 0 and float(u.max()) <= 1
    assert float(d.min()) >= -1 and float(d.max()) <= 1


def test_early_uniform_predictions_give_alpha_near_zero():
    z = torch.randn(16, 3) * 1e-3  # an untrained head: near-uniform
    t = teacher_for(DYN, z, torch.randint(0, 3, (16,)), use_step=1)
    assert float(t.alpha.max()) < 0.01
    assert torch.allclose(t.tau, torch.full((16,), 6.0), atol=0.01)  # tau_0*(1+u) -> clipped 6


def test_confident_correct_gets_alpha_max_and_confident_wrong_is_damped():
    z = torch.tensor([[12.0, 0, 0], [12.0, 0, 0]])
    t = teacher_for(DYN, z, torch.tensor([0, 1]), use_step=1)
    assert float(t.alpha[0]) > 0.99 and float(t.alpha[1]) < 0.01
    assert 2.99 < float(t.tau[0]) < 3.01


def test_ranges_over_random_logits():
    cfg = DYN.replace(alpha_max=0.8, tau_0=2.0, tau_min=1.5, tau_max=3.5)
    z = torch.randn(500, 6) * 3
    t = teacher_for(cfg, z, torch.randint(0, 6, (500,)), use_step=3)
    assert float(t.alpha.min()) >= 0 and float(t.alpha.max()) <= 0.8
    assert float(t.tau.min()) >= 1.5 and float(t.tau.max()) <= 3.5


def test_batch_granularity_gives_one_value():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 3, generator=g) * 2
    y = torch.randint(0, 3, (8,), generator=g)
    t = teacher_for(DYN.replace(granularity="batch"), z, y, 1)
    # one value for the batch (up to float rounding of vectorised kernels)
    assert float(t.alpha.max() - t.alpha.min()) < 1e-6 and float(t.tau.max() - t.tau.min()) < 1e-6
    u, d = signals(z, y)
    a, tau = alpha_tau_curve(DYN, float(u.mean()), float(d.mean()))
    assert math.isclose(float(t.alpha[0]), a, rel_tol=1e-5)


def alpha_tau_curve(cfg, u: float, d: float) -> tuple[float, float]:
    """alpha and tau of dynsdpb-v1 for scalar signals."""
    a, t = dyn_alpha_tau(cfg, torch.tensor([float(u)]), torch.tensor([float(d)]))
    return float(a[0]), float(t[0])


def test_tau_direction():
    soft, sharp = DYN, DYN.replace(tau_direction="sharpen-uncertain")
    assert alpha_tau_curve(soft, 0.8, 0)[1] > alpha_tau_curve(soft, 0.1, 0)[1]
    assert alpha_tau_curve(sharp, 0.8, 0)[1] < alpha_tau_curve(sharp, 0.1, 0)[1]


def test_step_schedules():
    dlb = RunConfig(method="dlb", alpha=0.5, tau=3.0)
    assert static_alpha(dlb, 0) == 0.5 and static_alpha(dlb, 99) == 0.5
    w = dlb.replace(schedule="warmup", warmup_alpha_steps=10)
    assert static_alpha(w, 9) == 0.0 and static_alpha(w, 10) == 0.5
    lin = dlb.replace(schedule="linear", alpha_max=1.0, steps=11)
    assert static_alpha(lin, 0) == 0.0 and static_alpha(lin, 10) == 1.0
    assert math.isclose(static_alpha(lin, 5), 0.5)
    t = teacher_for(dlb, torch.randn(4, 3), torch.zeros(4, dtype=torch.long), 5)
    assert torch.all(t.alpha == 0.5) and torch.all(t.tau == 3.0)


def test_regression_alpha_from_error():
    t = teacher_for(DYN, torch.tensor([1.0, 1.0]), torch.tensor([1.0, 3.0]), 1, "regression", 1.0)
    assert math.isclose(float(t.alpha[0]), 1.0) and math.isclose(float(t.alpha[1]), math.exp(-2),
                                                                   rel_tol=1e-5)
    assert torch.all(t.tau == 1.0)


def test_describe_says_what_is_ours():
    assert "ours" in describe(DYN) and "paper" in describe(DYN)
    assert "fixed alpha = 0.5" in describe(RunConfig(method="dlb"))
    assert "vanilla" in describe(RunConfig(method="vanilla"))
    assert "Regression" in describe(DYN, "regression")


def test_dynsdpb_arm_ignores_the_dlb_schedule():
    """One experiment can run dlb with warmup next to dynsdpb: `schedule` is the dlb arm's."""
    from dynsdpb.config import validate
    base = RunConfig(schedule="warmup")
    assert base.replace(method="dynsdpb").resolved_schedule == "dynsdpb-v1"
    assert base.replace(method="dlb").resolved_schedule == "warmup"
    assert base.replace(method="vanilla").resolved_schedule == "none"
    assert validate(base.replace(method="dynsdpb")) == []
    assert [p.field for p in validate(RunConfig(method="dlb", schedule="dynsdpb-v1"))] == ["schedule"]
