"""Drift statistics against values worked out by hand or by brute force."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from evostream.core.errors import FoldError, PolicyError
from evostream.stream_processors.drift.policy import DriftPolicy
from evostream.stream_processors.drift.statistics import (
    DriftDetector,
    IntentClusters,
    Window,
    js_divergence_bits,
    mmd2_null,
    mmd2_unbiased,
    mmd_test,
    new_token_rate,
    psi,
)


def test_js_divergence_of_known_distributions() -> None:
    assert js_divergence_bits({1: 5, 2: 5}, {1: 10, 2: 10}) == pytest.approx(0.0)
    assert js_divergence_bits({1: 3}, {2: 7}) == pytest.approx(1.0)
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4); JS = (log2(4/3) + (1/2 log2(2/3) + 1/2 log2 2)) / 2
    expected = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5)
    assert js_divergence_bits({1: 4}, {1: 2, 2: 2}) == pytest.approx(expected)


def test_new_token_rate_counts_occurrences_not_types() -> None:
    assert new_token_rate({1, 2}, Counter({1: 6, 3: 2, 4: 2})) == pytest.approx(0.4)
    assert new_token_rate({1}, Counter()) == 0.0


def test_psi_matches_its_definition() -> None:
    expected = 0.4 * math.log(1.8) + (-0.4) * math.log(0.2)
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(expected)
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == pytest.approx(0.0)


def test_unbiased_mmd2_equals_the_brute_force_sum() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 3)), rng.normal(1.0, size=(5, 3))
    z = np.concatenate([x, y])
    k = np.exp(-((z[:, None, :] - z[None, :, :]) ** 2).sum(-1) / 2.0)
    n, m = len(x), len(y)
    sxx = sum(k[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k[n + i, n + j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k[i, n + j] for i in range(n) for j in range(m)) / (n * m)
    assert mmd2_unbiased(k, n) == pytest.approx(sxx + syy - 2 * sxy)


def test_the_permutation_null_equals_the_statistic_of_each_permuted_kernel() -> None:
    """The vectorised null against its reference: mmd2_unbiased of the kernel gathered by each permutation (a kernel
    with a diagonal that is not all ones, and more permutations than one block, so every term is exercised)."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(30, 4))
    k = np.exp(-((z[:, None, :] - z[None, :, :]) ** 2).sum(-1) / 3.0) + np.diag(rng.uniform(0.0, 0.5, 30))
    perms = np.stack([rng.permutation(30) for _ in range(300)])
    reference = [mmd2_unbiased(k[np.ix_(p, p)], 18) for p in perms]
    np.testing.assert_allclose(mmd2_null(k, 18, perms, chunk=128), reference, rtol=1e-10, atol=1e-13)


def test_mmd_test_separates_a_mean_shift_from_a_resample() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(60, 8))
    same = rng.normal(size=(40, 8))
    moved = rng.normal(0.8, size=(40, 8))
    _, p_same, _ = mmd_test(ref, same, 200, np.random.default_rng(0))
    stat, p_moved, cut = mmd_test(ref, moved, 200, np.random.default_rng(0))
    assert p_same > 0.05
    assert p_moved < 0.01 and stat > cut


def test_intent_clusters_recover_separated_groups() -> None:
    rng = np.random.default_rng(3)
    centers = np.eye(3, 16) * 5
    x = np.concatenate([c + rng.normal(0, 0.3, size=(30, 16)) for c in centers])
    model = IntentClusters.fit(x, 3, np.random.default_rng(0))
    labels = model.assign(x)
    assert {len(set(labels[i * 30 : (i + 1) * 30])) for i in range(3)} == {1}
    assert len(set(labels)) == 3
    assert model.shares(x) == pytest.approx([1 / 3] * 3)


def _window(rng: np.random.Generator, centers: np.ndarray, n: int, vocab: range, groups: list[int]) -> Window:
    w = Window()
    for i in range(n):
        g = groups[i % len(groups)]
        w.add(list(centers[g] + rng.normal(0, 0.5, size=centers.shape[1])), rng.choice(vocab, size=8).tolist(), i)
    return w


def test_detector_is_quiet_in_distribution_and_fires_each_statistic_on_a_shift() -> None:
    rng = np.random.default_rng(4)
    centers = rng.normal(0, 2, size=(5, 24))
    policy = DriftPolicy(intent_clusters=4)
    det = DriftDetector(_window(rng, centers, 120, range(40), [0, 1, 2, 3]), policy)
    quiet = [det.compare(_window(rng, centers, 40, range(40), [0, 1, 2, 3])) for _ in range(20)]
    assert all(r is not None and not r.fired for r in quiet), [r.by_name() for r in quiet if r and r.fired]
    shifted = det.compare(_window(rng, centers, 40, range(30, 80), [4]))
    assert shifted is not None and shifted.fired
    stats = shifted.by_name()
    for name in ("embedding_mmd2", "vocabulary_js_bits", "new_token_rate", "intent_psi"):
        assert stats[name].fired, stats[name]
        assert stats[name].value > 0


def test_small_windows_are_not_judged_and_small_references_refused() -> None:
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(2, 8))
    det = DriftDetector(_window(rng, centers, 40, range(10), [0, 1]), DriftPolicy())
    assert det.compare(_window(rng, centers, 5, range(10), [0])) is None
    with pytest.raises(FoldError, match="reference window"):
        DriftDetector(_window(rng, centers, 5, range(10), [0]), DriftPolicy())


def test_a_policy_whose_permutations_cannot_reach_its_alpha_is_refused() -> None:
    with pytest.raises(PolicyError, match="cannot reach"):
        DriftPolicy(mmd_alpha=0.001, mmd_permutations=300)


def test_small_windows_of_real_size_do_not_fire_the_vocabulary_statistics_by_chance() -> None:
    # the same completions, resampled: nothing changed, however few tokens a window has
    rng = np.random.default_rng(11)
    centers = rng.normal(0, 2, size=(4, 16))
    # 24 completions of 8 tokens over 200 types: fixed floors alone fire on every such window (measured: 10 of 10)
    det = DriftDetector(_window(rng, centers, 24, range(200), [0, 1, 2, 3]), DriftPolicy(min_samples=20))
    for _ in range(10):
        r = det.compare(_window(rng, centers, 24, range(200), [0, 1, 2, 3]))
        assert r is not None
        stats = r.by_name()
        assert not stats["vocabulary_js_bits"].fired and not stats["new_token_rate"].fired, stats
