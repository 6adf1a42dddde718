from __future__ import annotations

import math

import numpy as np
import pytest

from evostream.routing.calibrate import (
    Labelled,
    calibrate_level,
    certify,
    choose_gates,
    clopper_pearson_upper,
    fit_prompt_model,
    replay,
)
from evostream.routing.evidence import insufficient, malformed
from evostream.routing.policy import PROMPT_FEATURES, LevelGate, RoutingError, prompt_features

KEYS = {"corpus", "accuracy", "accuracy_lower", "confidence", "bound", "self_share", "certified"}


def synthetic(n: int, rng: np.random.Generator) -> list[Labelled]:
    """Requests whose self-model error the prompt sees in part (a hard prompt) and the tokens see in part (the
    answer goes wrong mid-way: the risk rises from the step it goes wrong)."""
    items = []
    for _ in range(n):
        hard = rng.random() < 0.3
        slip = rng.random() < 0.15  # a slip the prompt cannot see
        wrong = (hard and rng.random() < 0.7) or slip
        prompt = float(np.clip((0.6 if hard else 0.2) + rng.normal(0, 0.1), 0, 1))
        steps = int(rng.integers(4, 12))
        at = int(rng.integers(1, steps)) if wrong else steps
        risks = tuple(float(np.clip((0.8 if i >= at else 0.1) + rng.normal(0, 0.08), 0, 1)) for i in range(steps))
        items.append(Labelled(prompt, risks, bool(wrong), bool(rng.random() < 0.05), reference_tokens=6))
    return items


def test_prompt_model_learns_which_prompts_the_self_model_gets_wrong() -> None:
    rng = np.random.default_rng(0)
    prompts = [("add: " + "9" * int(k)) if k else "add: 1" for k in rng.integers(0, 8, 400)]
    x = np.vstack([prompt_features(p, rng.normal(0, 1, 4)) for p in prompts])
    wrong = np.array([len(p) > 8 for p in prompts]) ^ (rng.random(400) < 0.05)
    model = fit_prompt_model(x, wrong, l2=1.0)
    assert model.features[: len(PROMPT_FEATURES)] == PROMPT_FEATURES and model.embedding_dim == 4
    p = model.probability(x)
    assert p[wrong].mean() > 0.7 > 0.3 > p[~wrong].mean()
    assert model.weights[0] > 0  # longer prompts: more often wrong
    with pytest.raises(RoutingError, match="both kinds"):
        fit_prompt_model(x, np.zeros(400, dtype=bool))


def test_replay_answers_as_the_router_and_token_watch_do() -> None:
    items = [
        Labelled(0.9, (0.1, 0.1), False, False, 3),  # prompt above the gate: before generation
        Labelled(0.2, (0.1, 0.7, 0.9), True, False, 4),  # risk past the gate at step 1: moves mid-answer
        Labelled(0.2, (0.9, 0.1), True, True, 5),  # past the gate at step 0, before min_steps: not read then
        Labelled(0.5, (0.2, 0.3, 0.4), False, True, 2),  # never past: self answers
    ]
    gate = LevelGate(3, 0.8, prompt_gate=0.5, token_gate=0.6, min_steps=2)
    r = replay(items, gate)
    assert list(r.answered) == ["before", "mid", "self", "self"]
    assert list(r.wrong) == [False, False, True, False]
    assert r.self_tokens == 2 + 2 + 3 and r.wasted_tokens == 2 and r.reference_tokens == 3 + 4
    assert r.self_share == 0.5 and r.accuracy == 0.75 and (r.self_answered, r.self_errors) == (2, 1)
    assert r.cost(1.0, 10.0, 0.5) == 7 + 70 + 1.0
    assert set(replay(items, LevelGate(0, 0.0, -1.0, -1.0)).answered) == {"before"}


def test_clopper_pearson_matches_the_beta_quantile() -> None:
    stats = pytest.importorskip("scipy.stats")
    for k, n, c in [(0, 10, 0.95), (3, 50, 0.95), (12, 1000, 0.9), (40, 200, 0.99)]:
        assert clopper_pearson_upper(k, n, c) == pytest.approx(stats.beta.ppf(c, k + 1, n - k), abs=1e-9)
    assert clopper_pearson_upper(5, 5, 0.95) == 1.0 and clopper_pearson_upper(0, 0, 0.95) == 1.0
    with pytest.raises(RoutingError):
        clopper_pearson_upper(1, 10, 1.0)


@pytest.mark.parametrize(("p", "n"), [(0.02, 100), (0.1, 300), (0.3, 60)])
def test_clopper_pearson_covers_the_true_rate_in_at_least_confidence_of_draws_exactly(p: float, n: int) -> None:
    # the exact coverage: the probability, over the binomial draw, that the bound is at or above the true rate
    coverage = sum(
        math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1) if clopper_pearson_upper(k, n, 0.95) >= p
    )
    assert coverage >= 0.95


def test_certified_bound_holds_in_at_least_confidence_of_repeated_certify_draws() -> None:
    rng = np.random.default_rng(7)
    gate = choose_gates(3, 0.8, synthetic(2000, rng))
    population = replay(synthetic(200_000, np.random.default_rng(99)), gate)
    true_error = population.self_errors / population.self_answered
    held, draws = 0, 400
    for _ in range(draws):
        ev = certify(gate, synthetic(300, rng), bound=0.1, confidence=0.9).evidence
        held += (1.0 - ev["accuracy_lower"]) >= true_error
    assert held / draws >= 0.9, (held, draws, true_error)


def test_a_level_keeps_its_share_on_held_out_items_and_states_its_evidence() -> None:
    rng = np.random.default_rng(1)
    choose, held, test = synthetic(2000, rng), synthetic(2000, rng), synthetic(2000, rng)
    for level, share in [(1, 0.2), (2, 0.5), (3, 0.8), (4, 0.95)]:
        gate = calibrate_level(level, share, choose, held, bound=0.15, confidence=0.95)
        assert set(gate.evidence) == KEYS and gate.evidence["corpus"] == 4000
        assert abs(gate.evidence["self_share"] - share) < 0.04
        assert abs(replay(test, gate).self_share - share) < 0.04
        upper = 1.0 - gate.evidence["accuracy_lower"]
        assert gate.evidence["certified"] == (upper <= 0.15)
        assert gate.evidence["accuracy"] >= gate.evidence["accuracy_lower"]
        assert malformed(gate.evidence) is None  # governance reads it as a level's evidence
    # governance judges it: level 1 on 4000 held-out answers at the certify split's accuracy is enough
    ev = calibrate_level(1, 0.2, choose, held, bound=0.15, confidence=0.95).evidence
    assert insufficient(ev, 1) is None and insufficient(ev, 4) is not None  # level 4 needs 5000
    assert calibrate_level(0, 0.0, choose, held, 0.15, 0.95).evidence["self_share"] == 0.0
    # a strict bound at a high share is refused
    assert not calibrate_level(4, 0.95, choose, held, bound=0.01, confidence=0.95).evidence["certified"]


def test_mid_answer_gates_beat_prompt_only_gates_when_errors_show_in_the_tokens() -> None:
    rng = np.random.default_rng(2)
    choose, test = synthetic(3000, rng), synthetic(3000, rng)
    both = choose_gates(3, 0.8, choose)
    prompt_only = choose_gates(3, 0.8, choose, mid=False)
    tokens_only = choose_gates(3, 0.8, choose, before=False)
    assert prompt_only.token_gate == 1.0 and tokens_only.prompt_gate == 1.0
    r_both, r_prompt, r_tokens = (replay(test, g) for g in (both, prompt_only, tokens_only))
    for r in (r_both, r_prompt, r_tokens):
        assert abs(r.self_share - 0.8) < 0.03
    assert r_both.accuracy > r_prompt.accuracy + 0.03
    assert r_both.accuracy >= r_tokens.accuracy - 0.01
    with pytest.raises(RoutingError, match="target self-share"):
        choose_gates(3, 1.5, choose)
