"""Properties of the pure loss function (TRL style): alpha=0 gives CE, identical logits give
KD=0, the tau^2 factor, masking, token-shaped logits, and a hand-written reference."""
import math

import pytest
import torch
import torch.nn.functional as F

from dynsdpb.engine.losses import dynsdpb_loss


def _data(n=6, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, requires_grad=True)
    prev = torch.randn(n, c, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    mask = torch.tensor([True] * (n // 2) + [False] * (n - n // 2))
    return z, prev, y, mask


def reference(z, prev, y, mask, alpha, tau):
    """Written from the formula, one sample at a time."""
    ce = F.cross_entropy(z, y)
    terms = []
    for i in range(len(z)):
        if not mask[i]:
            continue
        a, t = float(alpha[i]), float(tau[i])
        q = torch.softmax(prev[i] / t, -1)
        p = torch.softmax(z[i] / t, -1)
        kl = (q * (q.log() - p.log())).sum()
        terms.append(a * t * t * kl)
    kd = torch.stack(terms).mean()
    return ce, kd


def test_alpha_zero_gives_ce():
    z, prev, y, mask = _data()
    out = dynsdpb_loss(z, y, prev, torch.zeros(6), torch.full((6,), 3.0), mask)
    assert torch.allclose(out.total, F.cross_entropy(z, y))
    assert float(out.kd.detach()) == 0.0


def test_no_teacher_is_plain_ce():
    z, _, y, _ = _data()
    out = dynsdpb_loss(z, y)
    assert torch.equal(out.total, out.ce)
    assert float(out.kd.detach()) == 0.0 and out.alpha.numel() == 0


def test_identical_logits_give_zero_kd_and_drift():
    z, _, y, mask = _data()
    out = dynsdpb_loss(z, y, z.detach().clone(), 0.7, 2.0, mask)
    assert abs(float(out.kd.detach())) < 1e-6
    assert float(out.logit_drift.abs().max()) < 1e-6
    assert float(out.agreement.min()) == 1.0


def test_matches_hand_written_reference():
    z, prev, y, mask = _data(n=8, c=5, seed=3)
    alpha = torch.linspace(0.1, 0.9, 8)
    tau = torch.linspace(1.0, 4.0, 8)
    out = dynsdpb_loss(z, y, prev, alpha, tau, mask)
    ce, kd = reference(z, prev, y, mask, alpha, tau)
    assert torch.allclose(out.ce, ce, atol=1e-6)
    assert torch.allclose(out.kd, kd, atol=1e-6)
    assert torch.allclose(out.total, ce + kd, atol=1e-6)
    # the per-position alpha/tau returned are those of the masked samples
    assert torch.allclose(out.alpha, alpha[mask]) and torch.allclose(out.tau, tau[mask])


def test_tau_squared_factor():
    """KD = alpha * tau^2 * KL at that tau: dividing by tau^2 recovers the plain KL."""
    z, prev, y, mask = _data()
    for t in (1.0, 2.0, 5.0):
        out = dynsdpb_loss(z, y, prev, 1.0, t, mask)
        kl = F.kl_div(F.log_softmax(z[mask] / t, -1), F.softmax(prev[mask] / t, -1),
                      reduction="batchmean")
        assert math.isclose(float(out.kd.detach()), t * t * float(kl.detach()), rel_tol=1e-5)


def test_gradient_flows_only_through_current_logits():
    z, prev, y, mask = _data()
    prev = prev.clone().requires_grad_(True)
    out = dynsdpb_loss(z, y, prev, 0.5, 3.0, mask)
    out.total.backward()
    assert z.grad is not None and prev.grad is None


def test_mask_excludes_new_half():
    z, prev, y, mask = _data()
    prev2 = prev.clone()
    prev2[~mask] += 100.0  # garbage outside the mask must not matter
    a = dynsdpb_loss(z, y, prev, 0.5, 3.0, mask)
    b = dynsdpb_loss(z, y, prev2, 0.5, 3.0, mask)
    assert torch.allclose(a.total, b.total)


def test_empty_mask_is_zero_not_nan():
    z, prev, y, _ = _data()
    out = dynsdpb_loss(z, y, prev, 0.5, 3.0, torch.zeros(6, dtype=torch.bool))
    assert float(out.kd.detach()) == 0.0 and torch.isfinite(out.total)


def test_token_shaped_logits_with_mask_and_ignore_index():
    """(N, T, V) logits: distil on masked tokens only; CE ignores -100 labels."""
    g = torch.Generator().manual_seed(1)
    N, T, V = 2, 5, 7
    z = torch.randn(N, T, V, generator=g, requires_grad=True)
    prev = torch.randn(N, T, V, generator=g)
    y = torch.randint(0, V, (N, T), generator=g)
    y[:, :2] = -100
    mask = y != -100
    out = dynsdpb_loss(z, y, prev, torch.tensor([0.5, 1.0]).unsqueeze(1), 2.0, mask)
    flat_mask = mask.reshape(-1)
    zf, pf = z.reshape(-1, V)[flat_mask], prev.reshape(-1, V)[flat_mask]
    alpha_tok = torch.tensor([0.5, 1.0]).unsqueeze(1).expand(N, T).reshape(-1)[flat_mask]
    kl = F.kl_div(F.log_softmax(zf / 2, -1), F.softmax(pf / 2, -1), reduction="none").sum(-1)
    assert torch.allclose(out.kd, (alpha_tok * 4 * kl).mean(), atol=1e-6)
    assert torch.allclose(out.ce, F.cross_entropy(z.reshape(-1, V), y.reshape(-1),
                                                  ignore_index=-100), atol=1e-6)


def test_regression_kd_is_weighted_squared_difference():
    yhat = torch.tensor([0.1, 0.5, 0.9, 0.3], requires_grad=True)
    prev = torch.tensor([0.2, 0.5, 0.0, 9.0])
    y = torch.tensor([0.0, 0.5, 1.0, 0.0])
    mask = torch.tensor([True, True, True, False])
    alpha = torch.tensor([1.0, 1.0, 0.5, 1.0])
    out = dynsdpb_loss(yhat, y, prev, alpha, None, mask, task="regression")
    expect = (1.0 * 0.01 + 0.0 + 0.5 * 0.81) / 3
    assert math.isclose(float(out.kd.detach()), expect, rel_tol=1e-5)
    assert math.isclose(float(out.ce.detach()), float(F.mse_loss(yhat, y).detach()), rel_tol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_are_computed_in_float32(dtype):
    z, prev, y, mask = _data()
    lo = dynsdpb_loss(z.to(dtype), y, prev.to(dtype), 0.5, 3.0, mask)
    assert lo.total.dtype == torch.float32 and torch.isfinite(lo.total)
