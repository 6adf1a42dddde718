from __future__ import annotations

import numpy as np
import pytest

from evostream.routing.peer import SWRanking, random_scores, threshold_for_share
from evostream.routing.policy import RoutingError


def test_sw_ranking_sends_prompts_like_those_the_reference_won() -> None:
    rng = np.random.default_rng(0)
    hard, easy = np.array([1.0, 0.1, 0.0]), np.array([0.0, 0.1, 1.0])
    emb = np.vstack(
        [hard + rng.normal(0, 0.05, 3) for _ in range(50)] + [easy + rng.normal(0, 0.05, 3) for _ in range(50)]
    )
    # near "hard" the reference wins (self wrong, reference right); near "easy" both are right (ties)
    self_wrong = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    router = SWRanking.fit(emb, self_wrong, np.zeros(100, bool))
    rate = router.win_rate(np.vstack([hard, easy]))
    assert rate[0] > 0.7 and rate[1] == pytest.approx(0.5, abs=0.05)
    # all ties: no preference; every battle lost by the reference: below one half
    assert SWRanking.fit(emb, np.zeros(100, bool), np.zeros(100, bool)).win_rate(hard)[0] == pytest.approx(0.5)
    assert SWRanking.fit(emb, np.zeros(100, bool), np.ones(100, bool)).win_rate(hard)[0] == pytest.approx(0.0)
    with pytest.raises(RoutingError):
        SWRanking.fit(emb, self_wrong[:10], np.zeros(100, bool))


def test_sw_ranking_weights_follow_routellm() -> None:
    # two battles: one won by the reference at cosine 1, one lost at cosine 0: weights 10 * 10**1 and 10 * 10**0
    router = SWRanking.fit(np.array([[1.0, 0.0], [0.0, 1.0]]), [True, False], [False, True])
    assert router.win_rate(np.array([1.0, 0.0]))[0] == pytest.approx(100 / 110)


def test_threshold_keeps_the_share_and_random_scores_are_seeded() -> None:
    s = random_scores(1000, seed=3)
    assert np.array_equal(s, random_scores(1000, seed=3))
    t = threshold_for_share(s, 0.85)
    assert np.mean(s <= t) == pytest.approx(0.85)
    assert threshold_for_share(s, 0.0) == -np.inf
