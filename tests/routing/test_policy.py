from __future__ import annotations

import numpy as np
import pytest

from evostream.models.risk_probe import feature_names, fit_probe, trace_features
from evostream.routing.policy import (
    LevelGate,
    PromptModel,
    RoutePolicy,
    Router,
    RoutingError,
    prompt_feature_names,
    prompt_features,
)
from evostream.schemas.samples import generation_step


def _prompt_model(dim: int) -> PromptModel:
    names = prompt_feature_names(dim)
    # wrong answers come with long prompts: the weight on log_chars is positive
    weights = [2.0] + [0.0] * (len(names) - 1)
    return PromptModel(tuple(names), (3.0,) + (0.0,) * (len(names) - 1), (1.0,) * len(names), tuple(weights), 0.0)


def _policy(probe_sha: str = "") -> RoutePolicy:
    gates = (LevelGate(3, 0.8, prompt_gate=0.9, token_gate=0.5, evidence={"corpus": 4000}),)
    return RoutePolicy("default", _prompt_model(2), probe_sha, gates, {"outcomes": [0, 10]})


def test_policy_round_trips_through_canonical_bytes() -> None:
    p = _policy()
    again = RoutePolicy.from_bytes(p.to_bytes())
    assert again == p
    assert again.to_bytes() == p.to_bytes()
    with pytest.raises(RoutingError, match="format"):
        RoutePolicy.from_bytes(b'{"format": "other"}')
    with pytest.raises(RoutingError, match="no gate for level 2"):
        p.gate(2)


def test_router_sends_long_prompts_on_and_level_zero_everything() -> None:
    router = Router(_policy(), level=3)
    short = router.before(prompt_features("ab", [0.0, 0.0]))
    long = router.before(prompt_features("x" * 400, [0.0, 0.0]))
    assert short.target == "self" and long.target == "reference"
    assert long.score > 0.9 >= short.score
    assert Router(_policy(), level=0).before(prompt_features("ab", [0.0, 0.0])).target == "reference"
    with pytest.raises(RoutingError, match="features"):
        router.before(prompt_features("ab", [0.0] * 5))


def test_token_watch_moves_at_the_first_risky_step() -> None:
    layers = 4
    calm = [generation_step(i, "calm", layers=layers) for i in range(6)]
    noisy = [dict(s, entropy_bits=9.0 + i) for i, s in enumerate(calm)]
    x = np.array(
        [trace_features(calm[: k + 1], layers) for k in range(6)]
        + [trace_features(noisy[: k + 1], layers) for k in range(6)]
    )
    wrong = np.array([False] * 6 + [True] * 6)
    probe = fit_probe(x, wrong, "fam", layers)
    assert len(probe.features) == len(feature_names(layers))
    router = Router(_policy("ab" * 32), level=3, probe=probe)
    watch = router.watch()
    assert watch is not None
    assert all(watch.update(s) is None for s in calm)
    watch = router.watch()
    assert watch is not None
    verdict = watch.update(noisy[0])
    assert verdict is not None and verdict.target == "reference" and verdict.step == 0
    assert watch.update(noisy[1]) is None  # moved once
    with pytest.raises(RoutingError, match="probe"):
        Router(_policy("ab" * 32), level=3)
