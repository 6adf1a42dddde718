"""The one-sided tests a rollout's gates make: two proportions against a relative margin, and a quantile's
exceedance. Plain Python (``math`` only), so the controller, ``compare`` and the benchmarks share one implementation
that tests check against scipy.

Two proportions (``ratio_test``): H0 "candidate rate <= ratio * incumbent rate" against "greater" (alerts, errors), or
H0 "candidate rate >= ratio * incumbent rate" against "less" (accuracy). Two ways, chosen by the counts:

- **score** (Farrington-Manning): the difference ``p_c - ratio * p_i`` over its standard error at the maximum
  likelihood rates restricted to the H0 boundary, read against the normal distribution. Sound once every expected
  count is large (``SCORE_MIN_EXPECTED``).
- **exact** (Berger-Boos): the incumbent's rate is bounded by its exact Clopper-Pearson bound at level ``1 - gamma``
  (``gamma = (1 - confidence) / 10``), and the candidate's count is tested by its exact binomial tail at
  ``ratio * bound``; the p-value is that tail plus ``gamma``. Valid at every sample size (never more false
  rejections than the level says, whatever the true rates), conservative: what a window of ten canary answers
  gets.

Quantile (``exceedance_test``): under H0 "the candidate's q-quantile is at most the threshold", each candidate sample
is above the threshold with probability at most ``1 - q``, so the number above is at most binomial: its exact tail
is the p-value."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from evostream.core.errors import EvoError

Alternative = Literal["greater", "less"]
SCORE_MIN_EXPECTED = 25.0
"""The smallest expected count (successes and failures on each side, at the restricted rates) with which the score
test is used; below it the exact test is (the normal approximation of a skewed binomial tail is too kind)."""
SCORE_MIN_N = 50
"""The smallest sample on either side with which the score test is used."""
_CF_ITERATIONS = 20_000
_CF_EPS = 1e-15
_TINY = 1e-300


class StatsError(EvoError, ValueError):
    """Counts or parameters that no test can take (negative counts, more successes than trials, a level outside
    (0, 1))."""


@dataclass(frozen=True)
class TestResult:
    """A one-sided test's outcome: its p-value, which method gave it, and the statistic where there is one."""

    p_value: float
    method: Literal["exact", "score", "quantile", "none"]
    statistic: float | None = None
    bound: float | None = None
    """The exact test's bound on the incumbent's rate (the Clopper-Pearson bound it tested the candidate against)."""

    def rejects(self, confidence: float) -> bool:
        """Whether H0 is rejected at ``confidence`` (p-value below 1 - confidence)."""
        return self.p_value < 1.0 - confidence


def _check_counts(x: int, n: int) -> None:
    if n < 0 or x < 0 or x > n:
        raise StatsError(f"{x} of {n} is not a count of successes in trials")


def _check_level(level: float, what: str) -> None:
    if not 0.0 < level < 1.0:
        raise StatsError(f"{what} is in (0, 1), got {level}")


# --- the distributions ---------------------------------------------------------------------------------------------
def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _beta_cf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _CF_ITERATIONS + 1):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + aa / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _CF_EPS:
            return h
    raise StatsError(f"the incomplete beta I_{x}({a}, {b}) did not converge")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, 1.0 - x) / b


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return min(1.0, max(0.0, betainc(k, n - k + 1, p)))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return min(1.0, max(0.0, betainc(n - k, k + 1, 1.0 - p)))


def quantile_upper_bound(values: Sequence[float], q: float, level: float) -> tuple[float, float] | None:
    """A distribution-free upper confidence bound on the ``q`` quantile (0..1) of the population ``values`` were drawn
    from: the smallest order statistic X_(k) with P(X_(k) >= the quantile) = P(Binomial(n, q) <= k - 1) >= ``level``,
    and that coverage. Where even the largest value covers less than ``level`` (too few values: 1 - q**n < level),
    the largest value and its coverage 1 - q**n; None without values."""
    if not 0.0 < q < 1.0:
        raise StatsError(f"a quantile is in (0, 1), got {q}")
    _check_level(level, "a level")
    if not values:
        return None
    xs = sorted(values)
    n = len(xs)
    for k in range(1, n + 1):
        covered = binom_cdf(k - 1, n, q)
        if covered >= level:
            return xs[k - 1], covered
    return xs[-1], binom_cdf(n - 1, n, q)


def clopper_pearson_upper(x: int, n: int, level: float) -> float:
    """The exact one-sided upper bound on a binomial rate from ``x`` of ``n`` at ``level``: the p at which seeing at
    most ``x`` has probability 1 - level (1 when n is 0 or every trial succeeded)."""
    _check_counts(x, n)
    _check_level(level, "a level")
    if n == 0 or x == n:
        return 1.0
    alpha = 1.0 - level
    lo, hi = x / n, 1.0
    for _ in range(200):  # P(X <= x) falls as p rises
        mid = (lo + hi) / 2.0
        if binom_cdf(x, n, mid) < alpha:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-15:
            break
    return hi


def clopper_pearson_lower(x: int, n: int, level: float) -> float:
    """The exact one-sided lower bound on a binomial rate from ``x`` of ``n`` at ``level`` (0 when n or x is 0)."""
    _check_counts(x, n)
    if n == 0:
        _check_level(level, "a level")
        return 0.0
    return 1.0 - clopper_pearson_upper(n - x, n, level)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation between order statistics (numpy's default);
    None for no values."""
    if not 0.0 <= q <= 100.0:
        raise StatsError(f"a percentile is in [0, 100], got {q}")
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# --- the tests -----------------------------------------------------------------------------------------------------
def restricted_rates(x_c: int, n_c: int, x_i: int, n_i: int, ratio: float) -> tuple[float, float]:
    """The maximum likelihood rates (candidate, incumbent) under ``p_c = ratio * p_i`` (Farrington-Manning): the
    smaller root of the likelihood equation's quadratic in p_i."""
    a = (n_c + n_i) * ratio
    b = -(n_c * ratio + x_c + n_i + x_i * ratio)
    c = x_c + x_i
    disc = max(0.0, b * b - 4.0 * a * c)
    p_i = (-b - math.sqrt(disc)) / (2.0 * a)
    p_i = min(max(p_i, 0.0), 1.0, 1.0 / ratio)
    return ratio * p_i, p_i


def score_test(x_c: int, n_c: int, x_i: int, n_i: int, ratio: float, alternative: Alternative) -> TestResult:
    """The Farrington-Manning score test of the candidate's rate against ``ratio`` times the incumbent's."""
    pc, pi = restricted_rates(x_c, n_c, x_i, n_i, ratio)
    var = pc * (1.0 - pc) / n_c + ratio * ratio * pi * (1.0 - pi) / n_i
    diff = x_c / n_c - ratio * x_i / n_i
    if var <= 0.0:  # both samples at 0 (or at 1): no spread, no evidence either way beyond the sign
        p = 1.0 if (diff <= 0.0 if alternative == "greater" else diff >= 0.0) else 0.0
        return TestResult(p, "score", None)
    z = diff / math.sqrt(var)
    return TestResult(normal_sf(z) if alternative == "greater" else normal_sf(-z), "score", z)


def exact_test(
    x_c: int, n_c: int, x_i: int, n_i: int, ratio: float, alternative: Alternative, confidence: float
) -> TestResult:
    """The Berger-Boos exact test: the candidate's binomial tail at ``ratio`` times the incumbent's Clopper-Pearson
    bound at ``1 - gamma``, plus ``gamma`` (``gamma = (1 - confidence) / 10``)."""
    gamma = (1.0 - confidence) / 10.0
    if alternative == "greater":
        bound = clopper_pearson_upper(x_i, n_i, 1.0 - gamma)
        tail = binom_sf(x_c, n_c, min(1.0, ratio * bound))
    else:
        bound = clopper_pearson_lower(x_i, n_i, 1.0 - gamma)
        tail = binom_cdf(x_c, n_c, min(1.0, ratio * bound))
    return TestResult(min(1.0, tail + gamma), "exact", None, bound)


def ratio_test(
    x_c: int,
    n_c: int,
    x_i: int,
    n_i: int,
    ratio: float,
    alternative: Alternative,
    confidence: float,
) -> TestResult:
    """One-sided test of the candidate's rate (``x_c`` of ``n_c``) against ``ratio`` times the incumbent's (``x_i``
    of ``n_i``): "greater" tests H0 ``p_c <= ratio * p_i``, "less" tests H0 ``p_c >= ratio * p_i``. The score test
    where every expected count is large, the exact test otherwise; p-value 1 ("none") with no trials on a side."""
    _check_counts(x_c, n_c)
    _check_counts(x_i, n_i)
    _check_level(confidence, "a confidence")
    if not ratio > 0.0:
        raise StatsError(f"a ratio is positive, got {ratio}")
    if alternative not in ("greater", "less"):
        raise StatsError(f"an alternative is 'greater' or 'less', got {alternative!r}")
    if n_c == 0 or n_i == 0:
        return TestResult(1.0, "none")
    pc, pi = restricted_rates(x_c, n_c, x_i, n_i, ratio)
    expected = min(n_c * pc, n_c * (1.0 - pc), n_i * pi, n_i * (1.0 - pi))
    if min(n_c, n_i) >= SCORE_MIN_N and expected >= SCORE_MIN_EXPECTED:
        return score_test(x_c, n_c, x_i, n_i, ratio, alternative)
    return exact_test(x_c, n_c, x_i, n_i, ratio, alternative, confidence)


def exceedance_test(above: int, n: int, share: float = 0.05) -> TestResult:
    """H0 "a sample is above the threshold with probability at most ``share``" (the threshold is at least the
    ``1 - share`` quantile) from ``above`` of ``n`` samples above it: the exact binomial tail P(X >= above)."""
    _check_counts(above, n)
    _check_level(share, "a share")
    if n == 0:
        return TestResult(1.0, "none")
    return TestResult(binom_sf(above, n, share), "quantile")
