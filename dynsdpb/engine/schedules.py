"""alpha and tau schedules: pure functions, like nanoGPT's `get_lr`.

They are evaluated when the teacher logits are produced (step t-1, the gold labels at hand),
for the step t that will use them, and stored with the cached entry; the loop logs exactly
the values the loss used (method.md §3).

Which parts are the paper's and which are ours is stated in `describe()`; the app and run
summaries show that text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dynsdpb.config import RunConfig


@dataclass(frozen=True)
class Teacher:
    """Per-sample distillation settings for the carried samples of one step."""
    alpha: torch.Tensor  # (M,)
    tau: torch.Tensor    # (M,)
    u: torch.Tensor      # (M,) uncertainty in [0, 1] (nan for regression)
    d: torch.Tensor      # (M,) margin in [-1, 1]   (nan for regression)


@torch.no_grad()
def signals(prev_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Uncertainty u and discrimination margin d of the previous predictions (tau = 1).

    prev_logits: (M, C); labels: (M,) gold class ids.
    u = H(q) / log C;  d = q[y] - max_{c != y} q[c]
    """
    q = torch.softmax(prev_logits.float(), dim=-1)
    C = q.shape[-1]
    ent = -(q * torch.log(q.clamp_min(1e-12))).sum(-1)
    u = (ent / math.log(C)).clamp(0.0, 1.0) if C > 1 else torch.zeros_like(ent)
    q_y = q.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    others = q.scatter(-1, labels.long().unsqueeze(-1), -1.0)
    d = q_y - others.max(-1).values
    return u, d


def _full(m: int, v: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full((m,), float(v), dtype=torch.float32, device=like.device)


@torch.no_grad()
def teacher_for(cfg: RunConfig, prev_logits: torch.Tensor, labels: torch.Tensor,
                use_step: int, task: str = "classification",
                target_std: float = 1.0) -> Teacher:
    """alpha_i, tau_i (and the signals behind them) for samples whose logits were just recorded.

    use_step: the 0-based step at which these samples will be distilled.
    """
    m = prev_logits.shape[0]
    sched = cfg.resolved_schedule
    if task == "regression":
        # method.md §4 [ours]: KD term alpha_i * (yhat - yhat_prev)^2; tau is not used.
        nan = _full(m, float("nan"), prev_logits)
        one = _full(m, 1.0, prev_logits)
        if sched == "dynsdpb-v1":
            err = (prev_logits.float().view(-1) - labels.float().view(-1)).abs()
            alpha = cfg.alpha_max * torch.exp(-err / max(target_std, 1e-6))
        else:
            alpha = _full(m, static_alpha(cfg, use_step), prev_logits)
        return Teacher(alpha.float(), one, nan, nan)

    u, d = signals(prev_logits, labels)
    if sched == "dynsdpb-v1":
        if cfg.granularity == "batch":
            u = u.mean().expand(m).clone()
            d = d.mean().expand(m).clone()
        alpha, tau = dyn_alpha_tau(cfg, u, d)
        return Teacher(alpha.float(), tau.float(), u, d)
    return Teacher(_full(m, static_alpha(cfg, use_step), u), _full(m, cfg.tau, u), u, d)


def dyn_alpha_tau(cfg: RunConfig, u: torch.Tensor, d: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """dynsdpb-v1 [ours]: alpha_i, tau_i from uncertainty u in [0,1] and margin d in [-1,1]."""
    # 1) Near-uniform predictions (u ~ 1) or confidently wrong ones (d < 0) teach little.
    alpha = cfg.alpha_max * ((1 - u) * (1 + d) / 2).clamp(0.0, 1.0)
    # 2) Temperature follows uncertainty: softer targets where the model is unsure (default).
    if cfg.tau_direction == "soften-uncertain":
        tau = cfg.tau_0 * (1 + u)
    else:
        tau = cfg.tau_0 * (1 - u / 2)
    return alpha, tau.clamp(cfg.tau_min, cfg.tau_max)


def static_alpha(cfg: RunConfig, step: int) -> float:
    """alpha of the step-based schedules (static, warmup, linear)."""
    sched = cfg.resolved_schedule
    if sched == "refeed":
        # The control arm: DLB's layout and loss with the KD term weighted 0.
        return 0.0
    if sched == "warmup":
        # 1) no distillation while predictions are unreliable; 2) then DLB's fixed alpha.
        return 0.0 if step < cfg.warmup_alpha_steps else cfg.alpha
    if sched == "linear":
        # PS-KD style ramp from 0 at the first step to alpha_max at the last one.
        return cfg.alpha_max * min(1.0, step / max(1, cfg.steps - 1))
    return cfg.alpha


FORMULAS = {
    "none": "Plain fine-tuning: loss = CE. No distillation term (the vanilla baseline).",
    "refeed": "Re-feed control [ours]: DLB's batch layout (the previous step's new half "
              "trained on again) with alpha = 0: loss = CE over all samples, no distillation "
              "term. Its gain over vanilla is what re-feeding alone buys.",
    "static": "DLB [paper]: loss = CE + alpha * tau^2 * KL(softmax(prev_logits/tau) || "
              "softmax(logits/tau)) over the carried half, with fixed alpha = {alpha} and "
              "tau = {tau}.",
    "warmup": "Warmup ablation [ours]: as DLB, but alpha = 0 for the first {warmup_alpha_steps} "
              "steps, then alpha = {alpha}; tau = {tau}.",
    "linear": "Linear ramp [ours, PS-KD style]: as DLB, with alpha rising linearly from 0 to "
              "alpha_max = {alpha_max} over the run; tau = {tau}.",
    "dynsdpb-v1": "DynSDPB. The paper states the idea: alpha and tau adapt to the previous "
                  "predictions' uncertainty and discrimination, so early, unreliable "
                  "predictions teach little. The formulas are ours (schedule dynsdpb-v1): "
                  "u = H(q)/log C, d = q[y] - max other q; alpha_i = {alpha_max} * "
                  "clip((1-u)(1+d)/2, 0, 1); tau_i = clip({tau_0} * {tau_term}, {tau_min}, "
                  "{tau_max}); granularity: {granularity}.",
}
REGRESSION_FORMULA = ("Regression [ours]: loss = MSE + alpha_i * (yhat - yhat_prev)^2 with "
                      "{alpha_rule}; tau is not used.")


def describe(cfg: RunConfig, task: str = "classification") -> str:
    """Plain words for the formula a run uses, saying what is the paper's and what is ours."""
    sched = cfg.resolved_schedule
    if task == "regression" and sched not in ("none", "refeed"):
        rule = ("alpha_i = alpha_max * exp(-|yhat_prev - y| / s), s = std of the training "
                "targets" if sched == "dynsdpb-v1" else f"the {sched} schedule's alpha")
        text = REGRESSION_FORMULA.format(alpha_rule=rule)
    else:
        tau_term = "(1 + u)" if cfg.tau_direction == "soften-uncertain" else "(1 - u/2)"
        text = FORMULAS[sched].format(tau_term=tau_term, **cfg.to_dict())
    return text + (VIEWS_FORMULA.format(**cfg.to_dict()) if cfg.augment != "none" else "")


VIEWS_FORMULA = (" Views [DLB's second view, ours for text]: every training forward sees its own "
                 "{augment} view of a sample (p = {augment_p}), so a carried sample's second "
                 "pass sees another view than the pass its soft target came from.")
