"""Evaluation metrics and the statistics behind the comparison table."""
from __future__ import annotations

import math

import numpy as np


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float((np.asarray(y) == np.asarray(p)).mean()) if len(y) else float("nan")


def confusion(y: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (np.asarray(y, int), np.asarray(p, int)), 1)
    return m


def macro_f1(y, p, k: int) -> float:
    m = confusion(y, p, k)
    tp = np.diag(m).astype(float)
    prec_den, rec_den = m.sum(0), m.sum(1)
    f1 = []
    for c in range(k):
        if rec_den[c] == 0 and prec_den[c] == 0:
            continue  # class absent from both: not counted (sklearn's labels=present)
        pr = tp[c] / prec_den[c] if prec_den[c] else 0.0
        rc = tp[c] / rec_den[c] if rec_den[c] else 0.0
        f1.append(2 * pr * rc / (pr + rc) if pr + rc else 0.0)
    return float(np.mean(f1)) if f1 else float("nan")


def mcc(y, p, k: int) -> float:
    """Multiclass Matthews correlation (Gorodkin's R_K), as in sklearn."""
    m = confusion(y, p, k).astype(float)
    t, pk = m.sum(1), m.sum(0)
    c, s = np.trace(m), m.sum()
    num = c * s - t @ pk
    den = math.sqrt(max(s * s - pk @ pk, 0.0)) * math.sqrt(max(s * s - t @ t, 0.0))
    return float(num / den) if den else 0.0


def pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank)."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    return pearson(_rank(a), _rank(b))


def classification_metrics(y, p, k: int) -> dict[str, float]:
    return {"accuracy": accuracy(y, p), "macro_f1": macro_f1(y, p, k), "mcc": mcc(y, p, k)}


def regression_metrics(y, yhat) -> dict[str, float]:
    y, yhat = np.asarray(y, float), np.asarray(yhat, float)
    return {"pearson": pearson(y, yhat), "spearman": spearman(y, yhat),
            "mse": float(((y - yhat) ** 2).mean()) if len(y) else float("nan")}


PRIMARY = {"classification": "accuracy", "regression": "pearson", "causal-lm": "exact_match"}

# Two-sided 95% quantiles of Student's t for df = 1..30 (then the normal 1.96 is close).
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


# One-sided 80% quantiles of Student's t for df = 1..30 (then the normal 0.842): power 0.8.
_T80 = [1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879, 0.876, 0.873,
        0.870, 0.868, 0.866, 0.865, 0.863, 0.862, 0.861, 0.860, 0.859, 0.858, 0.858, 0.857,
        0.856, 0.856, 0.855, 0.855, 0.854, 0.854]


def t95(df: int) -> float:
    if df < 1:
        return float("nan")
    return _T95[df - 1] if df <= len(_T95) else 1.96


def t80(df: int) -> float:
    if df < 1:
        return float("nan")
    return _T80[df - 1] if df <= len(_T80) else 0.842


def mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray([x for x in xs if x is not None and math.isfinite(x)], float)
    if len(a) == 0:
        return float("nan"), float("nan")
    # One value has no spread to report: nan (shown as n/a), not a misleading 0.
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan")


def paired_diff(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean of a_i - b_i over paired seeds with a 95% t-interval (nan bounds for one pair), and
    `mde`, the smallest effect these seeds could detect with 80% power."""
    d = np.asarray([x - y for x, y in zip(a, b)
                    if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)])
    if len(d) == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    m = float(d.mean())
    if len(d) < 2:
        return {"mean": m, "ci_low": float("nan"), "ci_high": float("nan"), "n": 1,
                "mde": float("nan")}
    se = float(d.std(ddof=1)) / math.sqrt(len(d))
    half = t95(len(d) - 1) * se
    # The smallest true difference these pairs would detect (two-sided 5% test) 80% of the time,
    # from their observed spread: (t_.975 + t_.80) x sd / sqrt(n).
    mde = (t95(len(d) - 1) + t80(len(d) - 1)) * se
    return {"mean": m, "ci_low": m - half, "ci_high": m + half, "n": int(len(d)), "mde": mde}
