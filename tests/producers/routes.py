"""The routing policy of the routed-service tests: prompts with digits go to the reference before generation, and
any answer past ``MOVE_AFTER`` tokens moves there mid-answer (on the default model, its long reversals, which it
gets wrong)."""

from __future__ import annotations

import hashlib
import math

from evostream.models.risk_probe import RiskProbe, feature_names
from evostream.routing.policy import LevelGate, PromptModel, RoutePolicy, Router, prompt_feature_names

MOVE_AFTER = 5


def length_probe(num_layers: int) -> RiskProbe:
    """P(wrong) rising steeply with the answer's length: above 0.5 from the 6th step on (log_steps > log 6.5)."""
    names = feature_names(num_layers)
    at = names.index("log_steps")
    center = [0.0] * len(names)
    center[at] = math.log1p(MOVE_AFTER + 0.5)
    weights = [0.0] * len(names)
    weights[at] = 1.0
    scale = [1.0] * len(names)
    scale[at] = 0.05
    return RiskProbe("t5", num_layers, tuple(names), tuple(center), tuple(scale), tuple(weights), 0.0, 1.0, {})


def digit_prompts(embedding_dim: int) -> PromptModel:
    """P(wrong | prompt) = sigmoid(20 * digit_share - 4): 0.98 for "add: 12+34", 0.018 without digits."""
    names = prompt_feature_names(embedding_dim)
    weights = [0.0] * len(names)
    weights[names.index("digit_share")] = 20.0
    return PromptModel(tuple(names), (0.0,) * len(names), (1.0,) * len(names), tuple(weights), -4.0)


def router(num_layers: int) -> Router:
    probe = length_probe(num_layers)
    sha = hashlib.sha256(probe.to_bytes()).hexdigest()
    policy = RoutePolicy(
        "default", digit_prompts(384), sha, (LevelGate(3, 0.8, prompt_gate=0.5, token_gate=0.5, min_steps=1),)
    )
    return Router(policy, 3, probe, policy_version=hashlib.sha256(policy.to_bytes()).hexdigest())
