"""Small statistics for the quality evidence (research/quality): ROC AUC by Mann-Whitney and Wilson intervals.

Kept free of numpy/scipy so the definitions are readable in one place and tested against hand-computed values
(research/test_stats.py).
"""
from __future__ import annotations

import math
from typing import Iterable

Z95 = 1.959963984540054  # the 97.5% quantile of N(0, 1)


def auc(positives: Iterable[float], negatives: Iterable[float]) -> float | None:
    """ROC AUC of a score that is meant to be HIGHER for positives: the Mann-Whitney estimate
    P(s_pos > s_neg) + 1/2 P(s_pos = s_neg) over every (positive, negative) pair. None when a class is empty.

    For a statistic where LOW means positive (uniformity: low = backdoored), pass the negated values.
    """
    pos, neg = [float(x) for x in positives], [float(x) for x in negatives]
    if not pos or not neg:
        return None
    if any(math.isnan(x) for x in pos + neg):
        raise ValueError("auc: NaN score")
    wins = 0.0
    for p in pos:
        for q in neg:
            wins += 1.0 if p > q else 0.5 if p == q else 0.0
    return wins / (len(pos) * len(neg))


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for k successes in n trials (95% by default); None when n = 0.

    centre = (p + z^2 / 2n) / (1 + z^2 / n),  half = z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n).
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return None
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(k: int, n: int) -> dict:
    """{"k", "n", "rate", "ci95"}: a proportion with its Wilson interval (rate and ci None when n = 0)."""
    ci = wilson(k, n)
    return {"k": int(k), "n": int(n), "rate": (k / n) if n else None, "ci95": list(ci) if ci else None}


def fmt_rate(r: dict | None, digits: int = 2) -> str:
    """'0.75 (3/4) [0.30, 0.95]' or '-'."""
    if not r or not r.get("n"):
        return "-"
    lo, hi = r["ci95"]
    return f"{r['rate']:.{digits}f} ({r['k']}/{r['n']}) [{lo:.{digits}f}, {hi:.{digits}f}]"
