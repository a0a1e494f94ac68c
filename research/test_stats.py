"""research/stats.py against values computed by hand (and, where scipy is present, against scipy's Wilson interval)."""
import math

import pytest

from stats import Z95, auc, fmt_rate, rate, wilson


def test_auc_hand_computed():
    assert auc([3, 4], [1, 2]) == 1.0           # every positive above every negative
    assert auc([1, 2], [3, 4]) == 0.0           # every positive below
    # pairs (1,1) tie 1/2, (1,2) loss, (2,1) win, (2,2) tie 1/2 -> 2 / 4
    assert auc([1, 2], [1, 2]) == 0.5
    # 0.9 beats 0.5 and 0.3; 0.8 beats both; 0.4 beats 0.3 only -> 5 of 6 pairs
    assert auc([0.9, 0.8, 0.4], [0.5, 0.3]) == pytest.approx(5 / 6)
    # one tie among 3 pairs: (0.5 vs 0.5) = 1/2, (0.5 vs 0.1) = 1, (0.5 vs 0.7) = 0 -> 1.5 / 3
    assert auc([0.5], [0.5, 0.1, 0.7]) == 0.5
    assert auc([5, 5, 5], [5]) == 0.5           # all tied
    assert auc([], [1.0]) is None and auc([1.0], []) is None


def test_auc_low_is_positive_by_negation():
    # uniformity: backdoored (positive) low, clean high -> negate to score
    bad, clean = [0.01, 0.02], [0.4, 0.3, 0.015]
    # -0.01 beats -0.4, -0.3, -0.015 (3); -0.02 beats -0.4, -0.3, loses to -0.015 (2) -> 5 / 6
    assert auc([-x for x in bad], [-x for x in clean]) == pytest.approx(5 / 6)


def test_auc_rejects_nan():
    with pytest.raises(ValueError):
        auc([math.nan], [1.0])


def test_wilson_hand_computed():
    z2 = Z95 ** 2
    lo, hi = wilson(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(z2 / (10 + z2))        # k = 0: upper = z^2 / (n + z^2) = 0.2775
    assert hi == pytest.approx(0.27753, abs=1e-5)
    lo, hi = wilson(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(10 / (10 + z2))        # k = n: lower = n / (n + z^2) = 0.7225
    lo, hi = wilson(5, 10)                                          # symmetric about 1/2
    assert lo == pytest.approx(0.236593, abs=1e-6) and hi == pytest.approx(0.763407, abs=1e-6)
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.490162, abs=1e-6) and hi == pytest.approx(0.943318, abs=1e-6)
    assert wilson(0, 0) is None
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_wilson_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 10), (1, 3), (8, 10), (61, 64), (17, 17)]:
        ci = stats.binomtest(k, n).proportion_ci(method="wilson")
        lo, hi = wilson(k, n)
        assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)


def test_rate_and_format():
    r = rate(3, 4)
    assert r["k"] == 3 and r["n"] == 4 and r["rate"] == 0.75 and len(r["ci95"]) == 2
    assert fmt_rate(r).startswith("0.75 (3/4) [")
    assert rate(0, 0)["rate"] is None and fmt_rate(rate(0, 0)) == "-"
