"""The DynSDPB loss as a pure function (method.md §2).

    L = CE(all samples) + mean over distilled positions i of alpha_i * tau_i^2 * KL(q_i || p_i)
    q_i = softmax(prev_logits_i / tau_i)   recorded one step earlier, detached: a fixed target
    p_i = softmax(logits_i / tau_i)        this step, carries the gradient

Shapes: logits (N, C) for encoders, or (N, T, V) for decoders (positions flattened; the
caller applies the causal shift). `kd_mask` marks the positions that have a teacher (the
carried half; for decoders, target tokens). alpha/tau broadcast to kd_mask's shape.
No trainer state, no Streamlit: this is what the tests pin down.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossParts:
    total: torch.Tensor      # scalar, carries the gradient
    ce: torch.Tensor         # scalar supervised term (MSE for regression)
    kd: torch.Tensor         # scalar distillation term (alpha and tau^2 included)
    alpha: torch.Tensor      # (M,) alpha used at each distilled position
    tau: torch.Tensor        # (M,) tau used at each distilled position
    logit_drift: torch.Tensor  # (M,) KL(q||p) at tau = 1, before the update
    agreement: torch.Tensor  # (M,) 1.0 where argmax did not change since the previous step


def _flat(x: torch.Tensor, like_mask: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32, device=like_mask.device
                           ).expand(like_mask.shape).reshape(-1)


def dynsdpb_loss(logits: torch.Tensor, labels: torch.Tensor,
                 prev_logits: torch.Tensor | None = None,
                 alpha: torch.Tensor | float | None = None,
                 tau: torch.Tensor | float | None = None,
                 kd_mask: torch.Tensor | None = None, *,
                 task: str = "classification", ignore_index: int = -100) -> LossParts:
    """CE + alpha * tau^2 * KL over masked positions. See the module docstring for shapes.

    prev_logits has the shape of logits; rows outside kd_mask are ignored. With
    prev_logits=None (vanilla, or the first step) the result is plain CE and kd = 0.
    """
    # Numerics in float32 whatever the autocast dtype (torchtune, TRL).
    z = logits.float()
    if task == "regression":
        z = z.reshape(labels.shape)
        ce = F.mse_loss(z, labels.float())
    else:
        V = z.shape[-1]
        ce = F.cross_entropy(z.reshape(-1, V), labels.reshape(-1).long(), ignore_index=ignore_index)
    zero = z.new_zeros(())
    empty = z.new_zeros((0,))
    # (no host read of kd_mask: a mask with no position set gives kd = 0 below, exactly)
    if prev_logits is None or kd_mask is None or kd_mask.numel() == 0:
        return LossParts(ce, ce, zero, empty, empty, empty, empty)

    mask = kd_mask.bool()
    a = _flat(1.0 if alpha is None else alpha, mask)
    t = _flat(1.0 if tau is None else tau, mask)
    m = mask.reshape(-1)
    a, t = a[m], t[m]
    # The teacher is last step's output of this same model: detach() makes it a fixed
    # target, as in DLB; gradients flow only through this step's logits.
    prev = prev_logits.detach().float()
    if task == "regression":
        cur = z.reshape(-1)[m]
        old = prev.reshape(-1)[m]
        sq = (cur - old) ** 2
        kd = (a * sq).sum() / m.sum().clamp_min(1)
        drift = sq.detach()
        agree = torch.full_like(drift, float("nan"))
        return LossParts(ce + kd, ce, kd, a, torch.ones_like(a), drift, agree)

    V = z.shape[-1]
    cur = z.reshape(-1, V)[m]           # (M, V)
    old = prev.reshape(-1, V)[m]        # (M, V)
    tt = t.unsqueeze(-1)
    log_p = F.log_softmax(cur / tt, dim=-1)
    log_q = F.log_softmax(old / tt, dim=-1)
    # KL(q || p) = sum q (log q - log p). F.kl_div(input=log p, target=log q, log_target=True)
    # computes exactly this; note kl_div takes the *student* first, the reverse of the math.
    kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)  # (M,)
    # tau^2 keeps the gradient of the soft term on the same scale for any tau (Hinton et al.):
    # d KL / d z scales as 1/tau^2.
    kd = (a * t * t * kl).sum() / m.sum().clamp_min(1)
    with torch.no_grad():
        lp1 = F.log_softmax(cur, dim=-1)
        lq1 = F.log_softmax(old, dim=-1)
        drift = F.kl_div(lp1, lq1, reduction="none", log_target=True).sum(-1)
        agree = (cur.argmax(-1) == old.argmax(-1)).float()
    return LossParts(ce + kd, ce, kd, a, t, drift, agree)
