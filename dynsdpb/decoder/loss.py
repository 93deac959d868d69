"""Token-level DynSDPB for decoder-only models (method.md §5), with a compact teacher cache.

    L  = CE(target tokens of every sequence in the step)
       + (1 / |K|) * sum over (i, t) in K of  alpha_i * tau_i^2 * KL( q_{i,t}^tau || p_{i,t}^tau )

    K          distilled tokens: target tokens (labels != -100 after the causal shift) of the
               carried sequences, restricted to the longest common prefix of the target ids the
               teacher was computed on and the current ones ("output-mismatch alignment").
    q^tau      the previous step's prediction at temperature tau_i (cached, no gradient)
    p^tau      softmax(z / tau_i) of this step
    alpha_i, tau_i  per sequence from the mean token signals u, d over its target tokens
               (schedules.dyn_alpha_tau); option per_token: one pair per token.

The cache (`TokenTeacher`, one per sequence) comes in two kinds:
  topk (default, k = 64): per target token the k largest teacher log-probs at tau_i, their ids
      and log q(rest), the mass outside them. The KD term is then the exact KL between the
      two distributions coarsened to the k + 1 bins {top-k ids, rest}; the student side of each
      bin comes from its full softmax at the same tau_i. With k = V it is the full KL.
      KL of coarsened distributions <= KL of the full ones (data processing inequality).
  full: all teacher logits in fp16; KD is the full KL (via losses.dynsdpb_loss).

The causal shift happens in `causal_shift` and nowhere else: every function here takes the
model's logits (B, T, V) and labels (B, T) aligned with input_ids, as HF does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dynsdpb.engine.losses import dynsdpb_loss
from dynsdpb.engine.schedules import dyn_alpha_tau, signals, static_alpha

IGNORE = -100
# Fill for "not in this bin" in log space: finite, so that logsumexp over an empty bin
# (k = V) gives a huge negative number instead of -inf, and no gradient turns into nan.
_NEG = -1e30
CACHE_KINDS = ("topk", "full")


def causal_shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position t predicts token t + 1: returns (logits[:, :-1], labels[:, 1:]).

    logits: (B, T, V); labels: (B, T) aligned with input_ids, -100 on prompt and padding.
    Returns (B, T-1, V) and (B, T-1). The only place in the package that shifts.
    """
    return logits[:, :-1, :], shift_labels(labels)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """The label side of causal_shift, (B, T) -> (B, T-1), for masks built without logits."""
    return labels[:, 1:]


@dataclass
class TokenTeacher:
    """The cached teacher of one sequence: L = its number of target tokens.

    target_ids: (L,) the target tokens the teacher was computed on (for alignment).
    alpha, tau, u, d: (L,) float32; constant along L unless per_token.
    topk:  ids (L, k) int32, logq (L, k) log q at tau, logq_rest (L,) log q(rest) at tau,
           aux (L, 3) [logsumexp(z/tau), logsumexp(z), logsumexp(z outside the top-k)] so the
           tau = 1 drift can be rebuilt without a second cache.
    full:  logits (L, V) fp16, raw (tau = 1).
    """
    target_ids: torch.Tensor
    alpha: torch.Tensor
    tau: torch.Tensor
    u: torch.Tensor
    d: torch.Tensor
    kind: str = "topk"
    ids: torch.Tensor | None = None
    logq: torch.Tensor | None = None
    logq_rest: torch.Tensor | None = None
    aux: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (
            self.target_ids, self.alpha, self.tau, self.u, self.d, self.ids, self.logq,
            self.logq_rest, self.aux, self.logits) if t is not None)

    def head(self, n: int) -> "TokenTeacher":
        """The first n target tokens (the aligned prefix)."""
        def cut(t):
            return None if t is None else t[:n]
        return TokenTeacher(cut(self.target_ids), cut(self.alpha), cut(self.tau), cut(self.u),
                            cut(self.d), self.kind, cut(self.ids), cut(self.logq),
                            cut(self.logq_rest), cut(self.aux), cut(self.logits))


def cache_nbytes(teachers) -> int:
    """Bytes held by a collection of cached teachers (None entries count 0)."""
    return sum(t.nbytes() for t in teachers if t is not None)


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the longest common prefix of two 1-D id tensors."""
    n = min(a.numel(), b.numel())
    if n == 0:
        return 0
    diff = (a[:n].to(b.device) != b[:n]).nonzero()
    return int(diff[0, 0]) if diff.numel() else n


def _targets(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Target mask (B, T-1) and the sequence index of each target token, in row-major order."""
    mask = y != IGNORE
    return mask, mask.nonzero()[:, 0]


@torch.no_grad()
def make_teachers(logits: torch.Tensor, labels: torch.Tensor, cfg, use_step: int, *,
                  kind: str = "topk", k: int = 64, per_token: bool = False
                  ) -> list[TokenTeacher]:
    """Cache entries for the sequences whose logits were just computed (the new chunk).

    logits: (B, T, V) model output; labels: (B, T) with -100 off-target (unshifted).
    cfg: a RunConfig (schedule, alpha/tau settings, granularity); use_step: the 0-based step
    that will distil these sequences (for step-based schedules).
    Signals per target token (C = V): u = H(q)/log V, d = q[y] - max_{c != y} q[c] at tau = 1
    (schedules.signals). dynsdpb-v1: alpha_i, tau_i = dyn_alpha_tau(mean_t u, mean_t d)
    (per_token: from u_t, d_t; granularity batch: means over the sequences). Other schedules:
    the static alpha(use_step) and tau.
    Returns one TokenTeacher per sequence (detached, on the logits' device; the caller may
    move them to the CPU to keep accelerator memory free).
    """
    if kind not in CACHE_KINDS:
        raise ValueError(f"cache kind {kind!r}: use one of {CACHE_KINDS}")
    z, y = causal_shift(logits.detach(), labels)
    B, _, V = z.shape
    mask, seq = _targets(y)
    zt = z[mask].float()                          # (N, V) target positions only
    yt = y[mask]                                  # (N,)
    u, d = signals(zt, yt)                        # (N,), (N,)
    sched = cfg.resolved_schedule
    if sched == "dynsdpb-v1":
        if per_token:
            uu, dd = u, d
        else:
            cnt = torch.bincount(seq, minlength=B).clamp_min(1).float()
            um = torch.zeros(B, device=z.device).index_add_(0, seq, u) / cnt
            dm = torch.zeros(B, device=z.device).index_add_(0, seq, d) / cnt
            if cfg.granularity == "batch":
                has = torch.bincount(seq, minlength=B) > 0
                um = um[has].mean().expand(B)
                dm = dm[has].mean().expand(B)
            uu, dd = um[seq], dm[seq]
        alpha, tau = dyn_alpha_tau(cfg, uu, dd)
    else:
        a = 0.0 if sched == "none" else static_alpha(cfg, use_step)
        alpha = torch.full_like(u, float(a))
        tau = torch.full_like(u, float(cfg.tau))
    alpha, tau = alpha.float(), tau.float()

    if kind == "topk":
        k = min(int(k), V)
        zs = zt / tau.unsqueeze(-1)
        lse_t = zs.logsumexp(-1)                                   # (N,)
        top, ids = zs.topk(k, dim=-1)                              # sorted, largest first
        logq = top - lse_t.unsqueeze(-1)                           # (N, k) log q at tau
        rest_t = zs.scatter(-1, ids, _NEG).logsumexp(-1)           # outside the top-k
        rest_1 = zt.scatter(-1, ids, _NEG).logsumexp(-1)
        logq_rest = rest_t - lse_t
        aux = torch.stack([lse_t, zt.logsumexp(-1), rest_1], -1)   # (N, 3)
        ids = ids.int()
    out = []
    for b in range(B):
        sel = seq == b
        common = dict(target_ids=yt[sel].clone(), alpha=alpha[sel].clone(),
                      tau=tau[sel].clone(), u=u[sel].clone(), d=d[sel].clone(), kind=kind)
        if kind == "topk":
            out.append(TokenTeacher(**common, ids=ids[sel].clone(), logq=logq[sel].clone(),
                                    logq_rest=logq_rest[sel].clone(), aux=aux[sel].clone()))
        else:
            out.append(TokenTeacher(**common, logits=zt[sel].half()))
    return out


def coarse_kl(cur: torch.Tensor, ids: torch.Tensor, logq: torch.Tensor,
              logq_rest: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """KL(q || p) over the k + 1 bins {ids..., rest}.

    cur: (M, V) student logits (float32, carries the gradient); ids: (M, k) teacher top-k ids;
    logq: (M, k) teacher log-probs at tau; logq_rest: (M,) teacher log-mass outside ids;
    tau: (M,). The student bins come from log_softmax(cur / tau): p_j at ids, and
    p_rest = logsumexp of the other entries (exact, no 1 - sum cancellation).
    Returns (M,).
    """
    logp = F.log_softmax(cur / tau.unsqueeze(-1), dim=-1)
    idx = ids.long()
    logp_k = logp.gather(-1, idx)
    logp_rest = logp.scatter(-1, idx, _NEG).logsumexp(-1)
    kl_k = (logq.exp() * (logq - logp_k)).sum(-1)
    # An empty rest bin (k = V) has q_rest = exp(-1e30) = 0: its term is exactly 0.
    kl_rest = logq_rest.exp() * (logq_rest - logp_rest)
    return kl_k + kl_rest


@dataclass
class TokenLossParts:
    """The parts of one step's token-level loss. M = distilled tokens (|K|)."""
    total: torch.Tensor        # scalar, carries the gradient
    ce: torch.Tensor           # scalar CE, mean over all target tokens
    kd: torch.Tensor           # scalar KD (alpha and tau^2 included), mean over K
    alpha: torch.Tensor        # (M,) alpha used at each distilled token
    tau: torch.Tensor          # (M,) tau used at each distilled token
    logit_drift: torch.Tensor  # (M,) KL(q||p) at tau = 1 before the update (top-k: coarsened)
    agreement: torch.Tensor    # (M,) 1.0 where the student's argmax equals the teacher's
    kd_mask: torch.Tensor      # (B, T-1) bool: distilled positions (after the shift)
    aligned: torch.Tensor      # (B,) distilled tokens per sequence (0 for new sequences)
    n_targets: int             # target tokens in the batch (CE's count)
    kd_tok: torch.Tensor       # (B, T-1) alpha*tau^2*KL per token, nan off K (detached)
    alpha_tok: torch.Tensor    # (B, T-1) alpha used per token, nan off K


def token_loss(logits: torch.Tensor, labels: torch.Tensor,
               teachers: list[TokenTeacher | None] | None = None) -> TokenLossParts:
    """CE on target tokens + token-level KD on the carried sequences (module docstring).

    logits: (B, T, V) model output for the step's sequences; labels: (B, T), -100 off-target.
    teachers: None (vanilla / first step) or one entry per sequence: a TokenTeacher for a
    carried sequence, None for a new one. CE is the mean over all target tokens of the batch;
    KD the mean over distilled tokens (as losses.py does for positions). `logit_drift`: KL(q||p)
    at tau = 1 before the update (coarsened to the top-k bins for the top-k cache),
    `agreement` whether the student's argmax equals the teacher's.
    """
    z, y = causal_shift(logits, labels)
    B, T1, V = z.shape
    zf = z.float()
    mask, _ = _targets(y)
    n_targets = int(mask.sum())
    if teachers is not None and len(teachers) != B:
        raise ValueError(f"teachers has {len(teachers)} entries for a batch of {B} sequences")

    kd_mask = torch.zeros_like(mask)
    aligned = torch.zeros(B, dtype=torch.long)
    pieces: list[TokenTeacher] = []
    for b, t in enumerate(teachers or []):
        if t is None:
            continue
        pos = mask[b].nonzero()[:, 0]                # target positions, in order
        n = common_prefix(t.target_ids, y[b, pos])   # output-mismatch alignment
        aligned[b] = n
        if n:
            kd_mask[b, pos[:n]] = True
            pieces.append(t.head(n))
    nan_map = torch.full((B, T1), float("nan"), device=z.device)
    if not pieces:
        ce = F.cross_entropy(zf.reshape(-1, V), y.reshape(-1), ignore_index=IGNORE)
        e = zf.new_zeros((0,))
        return TokenLossParts(ce, ce, zf.new_zeros(()), e, e, e, e, kd_mask, aligned, n_targets,
                              nan_map, nan_map.clone())
    kinds = {p.kind for p in pieces}
    if len(kinds) > 1:
        raise ValueError(f"mixed teacher cache kinds in one batch: {sorted(kinds)}")
    kind = kinds.pop()
    cat = {f: torch.cat([getattr(p, f) for p in pieces]).to(z.device)
           for f in ("alpha", "tau", "ids", "logq", "logq_rest", "aux", "logits")
           if getattr(pieces[0], f) is not None}
    a, tt = cat["alpha"], cat["tau"]

    if kind == "full":
        # Same formula as the encoders: hand the target rows to losses.dynsdpb_loss, with the
        # teacher's logits on the distilled rows. Row order: row-major (b, t), as kd_mask.
        rows_mask = kd_mask[mask]                           # (N,) distilled among targets
        prev = torch.zeros(n_targets, V, device=z.device)
        prev[rows_mask] = cat["logits"].float()
        alpha_n = torch.zeros(n_targets, device=z.device)
        tau_n = torch.ones(n_targets, device=z.device)
        alpha_n[rows_mask], tau_n[rows_mask] = a, tt
        base = dynsdpb_loss(zf[mask], y[mask], prev, alpha_n, tau_n, rows_mask)
        total, ce, kd = base.total, base.ce, base.kd
        with torch.no_grad():
            cur = zf[kd_mask].detach()
            old = cat["logits"].float()
            lp = F.log_softmax(cur / tt.unsqueeze(-1), -1)
            lq = F.log_softmax(old / tt.unsqueeze(-1), -1)
            kl_scaled = a * tt * tt * F.kl_div(lp, lq, reduction="none", log_target=True).sum(-1)
            drift = F.kl_div(F.log_softmax(cur, -1), F.log_softmax(old, -1), reduction="none",
                             log_target=True).sum(-1)
            agree = (cur.argmax(-1) == old.argmax(-1)).float()
    else:
        ce = F.cross_entropy(zf.reshape(-1, V), y.reshape(-1), ignore_index=IGNORE)
        cur = zf[kd_mask]                                   # (M, V)
        kl = coarse_kl(cur, cat["ids"], cat["logq"], cat["logq_rest"], tt)
        kd_each = a * tt * tt * kl                          # tau^2: Hinton's gradient scale
        kd = kd_each.sum() / cur.shape[0]
        total = ce + kd
        kl_scaled = kd_each.detach()
        with torch.no_grad():
            # tau = 1 teacher from the cached top-k: z_j = tau (log q_j + lse_tau).
            lse_t, lse_1, rest_1 = cat["aux"].unbind(-1)
            logq1 = tt.unsqueeze(-1) * (cat["logq"] + lse_t.unsqueeze(-1)) - lse_1.unsqueeze(-1)
            drift = coarse_kl(cur.detach(), cat["ids"], logq1, rest_1 - lse_1,
                              torch.ones_like(tt))
            agree = (cur.detach().argmax(-1) == cat["ids"][:, 0].long()).float()
    kd_tok = nan_map.clone()
    kd_tok[kd_mask] = kl_scaled.float()
    alpha_tok = nan_map.clone()
    alpha_tok[kd_mask] = a
    return TokenLossParts(total, ce, kd, a, tt, drift, agree, kd_mask, aligned, n_targets,
                          kd_tok, alpha_tok)
