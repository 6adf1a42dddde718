from __future__ import annotations

import math

import numpy as np
import pytest

from evostream.rollout import stats

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("n", [1, 7, 30, 500, 20_000])
@pytest.mark.parametrize("p", [1e-4, 0.01, 0.05, 0.3, 0.8, 0.999])
def test_binomial_tails_match_scipy(n: int, p: float) -> None:
    for k in sorted({0, 1, n // 20, n // 3, n // 2, n - 1, n}):
        sf, cdf = stats.binom_sf(k, n, p), stats.binom_cdf(k, n, p)
        assert sf == pytest.approx(scipy_stats.binom.sf(k - 1, n, p), rel=1e-8, abs=1e-280)
        assert cdf == pytest.approx(scipy_stats.binom.cdf(k, n, p), rel=1e-8, abs=1e-280)


def test_binomial_tails_at_the_edges() -> None:
    assert stats.binom_sf(0, 10, 0.3) == 1.0
    assert stats.binom_sf(11, 10, 0.3) == 0.0
    assert stats.binom_sf(3, 10, 0.0) == 0.0
    assert stats.binom_cdf(10, 10, 0.3) == 1.0
    assert stats.binom_cdf(-1, 10, 0.3) == 0.0
    assert stats.binom_cdf(3, 10, 1.0) == 0.0


@pytest.mark.parametrize(("x", "n"), [(0, 10), (1, 10), (25, 500), (160, 200), (499, 500), (3, 100_000)])
@pytest.mark.parametrize("level", [0.9, 0.99, 0.999])
def test_clopper_pearson_bounds_match_the_beta_quantiles(x: int, n: int, level: float) -> None:
    upper = scipy_stats.beta.ppf(level, x + 1, n - x)
    lower = scipy_stats.beta.ppf(1 - level, x, n - x + 1) if x > 0 else 0.0
    assert stats.clopper_pearson_upper(x, n, level) == pytest.approx(upper, rel=1e-9)
    assert stats.clopper_pearson_lower(x, n, level) == pytest.approx(lower, rel=1e-9, abs=1e-15)
    assert stats.clopper_pearson_upper(n, n, level) == 1.0
    assert stats.clopper_pearson_upper(0, 0, level) == 1.0


def test_normal_tail_matches_scipy() -> None:
    for z in (-3.0, -0.5, 0.0, 1.0, 2.326, 6.0):
        assert stats.normal_sf(z) == pytest.approx(scipy_stats.norm.sf(z), rel=1e-12)


def test_percentile_interpolates_as_numpy() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 2, 19, 20, 101):
        xs = list(rng.lognormal(4.0, 0.5, n))
        for q in (0, 50, 95, 100):
            assert stats.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12)
    assert stats.percentile([], 95) is None


@pytest.mark.parametrize(
    ("xc", "nc", "xi", "ni", "ratio"), [(12, 100, 50, 1000, 1.1), (0, 80, 3, 900, 1.02), (40, 50, 700, 1000, 0.95)]
)
def test_restricted_rates_maximize_the_likelihood_on_the_null_boundary(
    xc: int, nc: int, xi: int, ni: int, ratio: float
) -> None:
    from scipy.optimize import minimize_scalar

    def nll(p: float) -> float:
        q = ratio * p
        return -float(
            scipy_stats.binom.logpmf(xc, nc, q) + scipy_stats.binom.logpmf(xi, ni, p)  # the joint likelihood
        )

    best = minimize_scalar(nll, bounds=(1e-12, min(1.0, 1 / ratio) - 1e-12), method="bounded", options={"xatol": 1e-12})
    pc, pi = stats.restricted_rates(xc, nc, xi, ni, ratio)
    assert pc == pytest.approx(ratio * pi)
    assert pi == pytest.approx(best.x, abs=1e-6)


def test_the_score_test_at_ratio_one_is_the_pooled_two_proportion_z_test() -> None:
    # 60 of 1000 against 50 of 1000: pooled p = 0.055, se = sqrt(0.055 * 0.945 * 2 / 1000), z = 0.01 / se
    se = math.sqrt(0.055 * 0.945 * 2 / 1000)
    r = stats.ratio_test(60, 1000, 50, 1000, 1.0, "greater", 0.99)
    assert r.method == "score"
    assert r.statistic == pytest.approx(0.01 / se)
    assert r.p_value == pytest.approx(scipy_stats.norm.sf(0.01 / se))
    less = stats.ratio_test(60, 1000, 50, 1000, 1.0, "less", 0.99)
    assert less.p_value == pytest.approx(scipy_stats.norm.cdf(0.01 / se))


def test_the_exact_test_is_the_binomial_tail_at_the_incumbents_bound_plus_gamma() -> None:
    # 10 of 10 candidate answers alerted against 25 of 500 incumbent ones, margin +10%, confidence 0.99
    gamma = 0.001
    bound = scipy_stats.beta.ppf(1 - gamma, 26, 475)
    r = stats.ratio_test(10, 10, 25, 500, 1.1, "greater", 0.99)
    assert r.method == "exact"
    assert r.bound == pytest.approx(bound)
    assert r.p_value == pytest.approx((1.1 * bound) ** 10 + gamma)
    assert r.rejects(0.99)
    # the other direction: 4 of 10 right against 400 of 500, margin -5%
    low = scipy_stats.beta.ppf(gamma, 400, 101)
    acc = stats.ratio_test(4, 10, 400, 500, 0.95, "less", 0.99)
    assert acc.p_value == pytest.approx(scipy_stats.binom.cdf(4, 10, 0.95 * low) + gamma)


def test_a_side_without_trials_gives_no_evidence() -> None:
    assert stats.ratio_test(0, 0, 5, 100, 1.1, "greater", 0.99).p_value == 1.0
    assert stats.ratio_test(5, 10, 0, 0, 1.1, "greater", 0.99).method == "none"


def test_bad_counts_and_levels_are_refused() -> None:
    with pytest.raises(stats.StatsError):
        stats.ratio_test(11, 10, 1, 10, 1.1, "greater", 0.99)
    with pytest.raises(stats.StatsError):
        stats.ratio_test(1, 10, 1, 10, 1.1, "greater", 1.0)
    with pytest.raises(stats.StatsError):
        stats.ratio_test(1, 10, 1, 10, 0.0, "greater", 0.99)
    with pytest.raises(stats.StatsError):
        stats.exceedance_test(3, 2)


def test_exceedance_is_the_binomial_tail_at_five_percent() -> None:
    r = stats.exceedance_test(4, 20)
    assert r.p_value == pytest.approx(scipy_stats.binom.sf(3, 20, 0.05))
    assert stats.exceedance_test(0, 20).p_value == 1.0
    assert stats.exceedance_test(0, 0).method == "none"


@pytest.mark.parametrize(
    ("nc", "ni", "rate", "ratio", "alternative"),
    [
        (10, 500, 0.05, 1.1, "greater"),
        (40, 200, 0.2, 1.1, "greater"),
        (30, 300, 0.8, 0.95, "less"),
        (600, 3000, 0.05, 1.1, "greater"),
        (300, 300, 0.3, 1.1, "greater"),
    ],
)
def test_false_rejections_on_the_null_boundary_stay_near_the_level(
    nc: int, ni: int, rate: float, ratio: float, alternative: stats.Alternative
) -> None:
    """The worst case for a healthy candidate: its true rate exactly at the margin (ratio times the incumbent's). The
    exact test never rejects more often than 1 - confidence; the score test (large counts) about that often."""
    rng = np.random.default_rng(7)
    windows = 2000
    xc = rng.binomial(nc, ratio * rate, windows)
    xi = rng.binomial(ni, rate, windows)
    rejected = sum(
        stats.ratio_test(int(a), nc, int(b), ni, ratio, alternative, 0.99).rejects(0.99)
        for a, b in zip(xc, xi, strict=True)
    )
    # 0.01 plus three standard errors of a 2000-window estimate of it
    assert rejected / windows <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / windows)
