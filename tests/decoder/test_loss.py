"""Token-level loss, top-k teacher cache and output-mismatch alignment (method.md §5).

References are computed one sequence and one token at a time, with formulas written out
here (entropy, margin, sort, 1 - sum), independently of the batched code."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dynsdpb.config import RunConfig
from dynsdpb.decoder.loss import (IGNORE, TokenTeacher, cache_nbytes, causal_shift, coarse_kl,
                             common_prefix, make_teachers, token_loss)

DYN = RunConfig(method="dynsdpb")
DLB = RunConfig(method="dlb", alpha=0.5, tau=3.0)


def batch(B=3, T=9, V=13, seed=0, scale=3.0):
    """Left-padded rows: [pad..., prompt..., target...] with -100 on pad and prompt."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * scale
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = torch.full((B, T), IGNORE)
    for b in range(B):
        pad, prompt = b, 2 + b % 2                       # different lengths per row
        labels[b, pad + prompt:] = ids[b, pad + prompt:]
    return logits, labels


def ref_signals(z, y):
    q = torch.softmax(z.double(), -1)
    u = float(-(q * q.log()).sum() / math.log(len(q)))
    others = q.clone()
    others[y] = -1
    return u, float(q[y] - others.max())


def ref_alpha_tau(cfg, u, d):
    alpha = cfg.alpha_max * min(max((1 - u) * (1 + d) / 2, 0.0), 1.0)
    tau = min(max(cfg.tau_0 * (1 + u), cfg.tau_min), cfg.tau_max)
    return alpha, tau


def ref_token_kd(cur, prev, tau, k):
    """Coarsened KL for one token, by sorting and 1 - sum (float64)."""
    q = torch.softmax(prev.double() / tau, -1)
    p = torch.softmax(cur.double() / tau, -1)
    ids = q.argsort(descending=True)[:k]
    qk, pk = q[ids], p[ids]
    qr, pr = 1 - qk.sum(), 1 - pk.sum()
    kl = float((qk * (qk / pk).log()).sum())
    if qr > 1e-12:
        kl += float(qr * (qr / pr).log())
    return kl


def test_ce_is_on_shifted_target_tokens_only():
    logits, labels = batch()
    parts = token_loss(logits, labels)
    terms = [F.cross_entropy(logits[b, t], labels[b, t + 1])
             for b in range(labels.shape[0]) for t in range(labels.shape[1] - 1)
             if labels[b, t + 1] != IGNORE]
    assert parts.ce.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-6)
    assert parts.n_targets == len(terms)
    assert parts.kd.item() == 0.0 and parts.total.item() == parts.ce.item()


def test_causal_shift_is_the_documented_one():
    logits, labels = batch()
    z, y = causal_shift(logits, labels)
    assert torch.equal(z, logits[:, :-1]) and torch.equal(y, labels[:, 1:])


@pytest.mark.parametrize("kind", ["topk", "full"])
def test_prompt_and_padding_positions_get_no_gradient(kind):
    prev, labels = batch(seed=1)
    teachers = make_teachers(prev, labels, DYN, use_step=1, kind=kind, k=5)
    logits = batch(seed=2)[0].requires_grad_(True)
    parts = token_loss(logits, labels, teachers)
    assert parts.kd.item() > 0
    parts.total.backward()
    # Position t is trained iff labels[t + 1] is a target; the last position never is.
    live = torch.zeros_like(labels, dtype=torch.bool)
    live[:, :-1] = labels[:, 1:] != IGNORE
    g = logits.grad.abs().sum(-1)
    assert torch.all(g[~live] == 0)
    assert torch.all(g[live] > 0)


def test_batched_loss_equals_one_sequence_one_token_reference():
    V, k = 17, 6
    prev, labels = batch(B=4, T=10, V=V, seed=3)
    cur = batch(B=4, T=10, V=V, seed=4)[0]
    teachers = make_teachers(prev, labels, DYN, use_step=1, kind="topk", k=k)
    # Rows 0 and 2 carried (have a teacher), 1 and 3 new.
    teachers[1] = teachers[3] = None
    parts = token_loss(cur, labels, teachers)

    ce_terms, kd_terms = [], []
    for b in range(4):
        tgt = [t for t in range(9) if labels[b, t + 1] != IGNORE]
        sig = [ref_signals(prev[b, t], int(labels[b, t + 1])) for t in tgt]
        u = sum(s[0] for s in sig) / len(sig)
        d = sum(s[1] for s in sig) / len(sig)
        alpha, tau = ref_alpha_tau(DYN, u, d)
        for t in tgt:
            ce_terms.append(float(F.cross_entropy(cur[b, t].double(), labels[b, t + 1])))
            if b in (0, 2):
                kd_terms.append(alpha * tau * tau * ref_token_kd(cur[b, t], prev[b, t], tau, k))
        if b in (0, 2):
            assert teachers[b].alpha[0].item() == pytest.approx(alpha, rel=1e-5)
            assert teachers[b].tau[0].item() == pytest.approx(tau, rel=1e-5)
    assert parts.ce.item() == pytest.approx(sum(ce_terms) / len(ce_terms), rel=1e-5)
    assert parts.kd.item() == pytest.approx(sum(kd_terms) / len(kd_terms), rel=1e-4)
    assert parts.alpha.numel() == len(kd_terms) == int(parts.kd_mask.sum())
    assert parts.aligned.tolist() == [len(teachers[0].target_ids), 0,
                                      len(teachers[2].target_ids), 0]


def test_topk_with_k_equal_vocab_is_the_full_kl():
    V = 23
    prev, labels = batch(V=V, seed=5)
    full = make_teachers(prev, labels, DYN, 1, kind="full")
    topv = make_teachers(prev, labels, DYN, 1, kind="topk", k=V)
    grads = []
    for teachers in (full, topv):
        logits = batch(V=V, seed=6)[0].requires_grad_(True)
        parts = token_loss(logits, labels, teachers)
        parts.total.backward()
        grads.append((parts, logits.grad))
    (pf, gf), (pt, gt) = grads
    # full stores fp16 logits: agreement to fp16 precision.
    assert pt.kd.item() == pytest.approx(pf.kd.item(), rel=2e-3)
    assert torch.allclose(gt, gf, atol=1e-4)
    assert torch.allclose(pt.logit_drift, pf.logit_drift, rtol=2e-3, atol=1e-5)
    assert torch.equal(pt.agreement, pf.agreement)


def test_topk_with_k_equal_vocab_equals_full_kl_exactly_in_float32():
    g = torch.Generator().manual_seed(0)
    cur, prev = torch.randn(7, 31, generator=g), torch.randn(7, 31, generator=g) * 2
    tau = torch.rand(7, generator=g) * 3 + 1
    zs = prev / tau[:, None]
    logq = zs.log_softmax(-1)
    ids = torch.arange(31).expand(7, 31)
    coarse = coarse_kl(cur, ids, logq, torch.full((7,), -1e30), tau)
    full = F.kl_div((cur / tau[:, None]).log_softmax(-1), logq, reduction="none",
                    log_target=True).sum(-1)
    assert torch.allclose(coarse, full, rtol=1e-5, atol=1e-7)


def test_top64_is_close_to_full_on_a_peaked_distribution():
    V = 2000
    g = torch.Generator().manual_seed(0)
    prev = torch.randn(1, 12, V, generator=g)
    # Mass on ~20 tokens even at tau = 3 (a logit gap of 30 is usual for a trained LM).
    prev[..., :20] += 30.0
    cur = prev + 0.3 * torch.randn(1, 12, V, generator=g)
    labels = torch.full((1, 12), IGNORE)
    labels[0, 4:] = torch.randint(0, 20, (8,), generator=g)
    kd = {}
    for kind, k in (("full", V), ("topk", 64)):
        kd[kind] = token_loss(cur, labels, make_teachers(prev, labels, DLB, 1, kind=kind,
                                                         k=k)).kd.item()
    # Coarsening can only lose information (data processing), and here it loses little.
    assert kd["topk"] <= kd["full"] * (1 + 1e-3)
    assert kd["topk"] == pytest.approx(kd["full"], rel=0.03)


def test_alpha_tau_options():
    prev, labels = batch(B=3, seed=7)
    per_seq = make_teachers(prev, labels, DYN, 1)
    for t in per_seq:                               # one alpha per sequence by default
        assert torch.all(t.alpha == t.alpha[0]) and torch.all(t.tau == t.tau[0])
    per_tok = make_teachers(prev, labels, DYN, 1, per_token=True)
    t0 = per_tok[0]
    assert t0.alpha.unique().numel() > 1
    for j in range(len(t0.alpha)):
        a, tau = ref_alpha_tau(DYN, float(t0.u[j]), float(t0.d[j]))
        assert t0.alpha[j].item() == pytest.approx(a, rel=1e-5)
        assert t0.tau[j].item() == pytest.approx(tau, rel=1e-5)
    batch_g = make_teachers(prev, labels, RunConfig(method="dynsdpb", granularity="batch"), 1)
    assert len({round(float(t.alpha[0]), 6) for t in batch_g}) == 1
    static = make_teachers(prev, labels, DLB, 1)
    assert all(torch.all(t.alpha == 0.5) and torch.all(t.tau == 3.0) for t in static)


def _one_seq(target, prompt=3, V=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = prompt + len(target)
    labels = torch.full((1, T), IGNORE)
    labels[0, prompt:] = torch.tensor(target)
    return torch.randn(1, T, V, generator=g) * 2, labels


@pytest.mark.parametrize("cached,current,n", [
    ([5, 6, 7, 8], [5, 6, 7, 8], 4),     # equal: every target token (plain SFT)
    ([5, 6, 7, 8], [5, 6], 2),           # current shorter
    ([5, 6], [5, 6, 7, 8], 2),           # current longer
    ([5, 6, 7, 8], [5, 6, 9, 8], 2),     # diverging at the third token, even if 8 matches later
    ([5, 6, 7, 8], [9, 6, 7, 8], 0),     # diverging at once: no KD
])
def test_alignment_distils_the_longest_common_prefix(cached, current, n):
    prev, lab_prev = _one_seq(cached, seed=1)
    teacher = make_teachers(prev, lab_prev, DLB, 1, kind="topk", k=8)[0]
    assert teacher.target_ids.tolist() == cached
    cur, lab_cur = _one_seq(current, seed=2)
    parts = token_loss(cur, lab_cur, [teacher])
    assert parts.aligned.tolist() == [n]
    assert int(parts.kd_mask.sum()) == n
    if n == 0:
        assert parts.kd.item() == 0.0
        return
    # The distilled tokens are the first n targets, each against the teacher of its position.
    pos = (lab_cur[0, 1:] != IGNORE).nonzero()[:n, 0]
    assert parts.kd_mask[0].nonzero()[:, 0].tolist() == pos.tolist()
    ref = [0.5 * 9 * ref_token_kd(cur[0, p], prev[0, p], 3.0, 8) for p in pos.tolist()]
    assert parts.kd.item() == pytest.approx(sum(ref) / n, rel=1e-4)


def test_alignment_is_a_noop_when_padding_changes():
    """Plain SFT: a carried sequence comes back in a differently padded batch."""
    prev, labels = batch(B=2, seed=8)
    teachers = make_teachers(prev, labels, DYN, 1)
    # Same two sequences, one more pad column on the left.
    pad = torch.full((2, 1), IGNORE)
    labels2 = torch.cat([pad, labels], 1)
    cur = torch.cat([torch.zeros(2, 1, prev.shape[-1]), prev], 1)
    parts = token_loss(cur, labels2, teachers)
    assert parts.aligned.tolist() == [len(t.target_ids) for t in teachers]
    # Same logits as the teacher: the KD term and the drift are (numerically) zero.
    assert parts.kd.item() == pytest.approx(0.0, abs=1e-5)
    assert parts.logit_drift.abs().max().item() < 1e-5
    assert parts.agreement.min().item() == 1.0


def test_common_prefix():
    t = torch.tensor
    assert common_prefix(t([1, 2, 3]), t([1, 2, 3])) == 3
    assert common_prefix(t([1, 2, 3]), t([1, 2])) == 2
    assert common_prefix(t([]), t([1])) == 0
    assert common_prefix(t([4, 2]), t([1, 2])) == 0


def test_cache_bytes_topk_vs_full():
    V, k = 1000, 16
    prev, labels = batch(B=2, T=12, V=V, seed=9)
    n_tok = int((labels[:, 1:] != IGNORE).sum())
    topk = make_teachers(prev, labels, DYN, 1, kind="topk", k=k)
    full = make_teachers(prev, labels, DYN, 1, kind="full")
    # per token: ids int32 + logq f32 (k each), rest + 3 aux f32, target id int64, 4 f32 signals
    per_tok_common = 8 + 4 * 4
    assert cache_nbytes(topk) == n_tok * (per_tok_common + k * 8 + 4 + 12)
    assert cache_nbytes(full) == n_tok * (per_tok_common + V * 2)
    assert cache_nbytes([None, *topk]) == cache_nbytes(topk)


def test_mixed_cache_kinds_are_refused():
    prev, labels = batch(B=2, seed=10)
    a = make_teachers(prev, labels, DYN, 1, kind="topk")
    b = make_teachers(prev, labels, DYN, 1, kind="full")
    with pytest.raises(ValueError, match="mixed"):
        token_loss(prev, labels, [a[0], b[1]])
    with pytest.raises(ValueError, match="cache kind"):
        make_teachers(prev, labels, DYN, 1, kind="fp8")


def test_vanilla_teachers_have_zero_alpha():
    prev, labels = batch(B=2, seed=11)
    teachers = make_teachers(prev, labels, RunConfig(method="vanilla"), 1)
    parts = token_loss(prev + 0.5, labels, teachers)
    assert parts.kd.item() == 0.0 and parts.total.item() == pytest.approx(parts.ce.item())
    assert isinstance(teachers[0], TokenTeacher)
