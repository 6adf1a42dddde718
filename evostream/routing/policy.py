"""A routing policy and the router that applies it.

A route has two targets: ``self`` (the production model, small and cheap) and ``reference`` (a stronger model: another
governed version, or an external model behind an OpenAI-compatible endpoint). The policy scores how likely the self
model is to answer wrong, twice:

- before generation, from the prompt's features (``PromptModel``, a logistic regression learned from the log), and
- during generation, from the token risk of the learned risk probe (``RiskProbe`` on the steps so far).

An independence level fixes the share of requests the self model should answer; its ``LevelGate`` holds the two
thresholds calibrated for that share (``evostream.routing.calibrate``). A request goes to the reference before
generation when its prompt score is above the prompt gate, and moves there mid-answer at the first step whose token
risk is above the token gate. Scores and gates are probabilities; a gate of -1 sends everything on, a gate of 1
nothing (a score is at most 1).

``RoutePolicy.to_bytes`` is canonical JSON (sorted keys, numbers rounded to 12 significant digits): the bytes the
artifact store hashes, so a policy's version is its SHA-256."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from evostream.core.errors import EvoError
from evostream.models.risk_probe import FeatureSums, RiskProbe, canonical_json, standard_logistic

F64 = npt.NDArray[np.float64]
FORMAT = "evostream.route-policy/1"
LADDER: tuple[float, ...] = (0.0, 0.2, 0.5, 0.8, 0.95)
"""The target self-share of each independence level (level 0: the reference answers everything)."""
PROMPT_FEATURES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "digit_share",
    "upper_share",
    "space_share",
    "punct_share",
    "distinct_char_share",
)
"""The prompt's surface features, before its embedding (``prompt_features``)."""
SELF, REFERENCE, CACHE, REFUSED = "self", "reference", "cache", "refused"
GAIN_LABEL = "reference wins"
"""The ``trained_on["label"]`` of a route's own mid-answer probe (a gain probe, ``evostream route train``): fitted on
"the reference would have answered better" (the self answer wrong, the reference's not known to be wrong), not on
"the self answer is wrong"."""


class RoutingError(EvoError):
    """A routing policy that cannot be built, read or applied (another embedding size, a level it has no gate for)."""


def _round(x: float) -> float:
    return float(f"{x:.12g}")


def prompt_feature_names(embedding_dim: int) -> list[str]:
    return [*PROMPT_FEATURES, *(f"emb_{i}" for i in range(embedding_dim))]


def prompt_features(prompt: str, embedding: Sequence[float]) -> F64:
    """One prompt's feature vector: its surface statistics, then its sentence embedding (384-d MiniLM in the
    service; empty when no embedder runs), in ``prompt_feature_names(len(embedding))`` order."""
    n = max(1, len(prompt))
    surface = [
        math.log1p(len(prompt)),
        math.log1p(len(prompt.split())),
        sum(c.isdigit() for c in prompt) / n,
        sum(c.isupper() for c in prompt) / n,
        sum(c.isspace() for c in prompt) / n,
        sum(not c.isalnum() and not c.isspace() for c in prompt) / n,
        len(set(prompt)) / n,
    ]
    return np.concatenate([np.array(surface, dtype=np.float64), np.asarray(embedding, dtype=np.float64)])


@dataclass(frozen=True)
class PromptModel:
    """P(the self model answers wrong | prompt) = sigmoid(bias + weights . (x - center) / scale)."""

    features: tuple[str, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    l2: float = 1.0

    @property
    def embedding_dim(self) -> int:
        return len(self.features) - len(PROMPT_FEATURES)

    def probability(self, x: F64) -> F64:
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x.shape[1] != len(self.features):
            raise RoutingError(
                f"the prompt model takes {len(self.features)} features ({self.embedding_dim}-d embeddings), "
                f"got {x.shape[1]}"
            )
        return standard_logistic(x, self.center, self.scale, self.weights, self.bias)

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "center": [_round(v) for v in self.center],
            "scale": [_round(v) for v in self.scale],
            "weights": [_round(v) for v in self.weights],
            "bias": _round(self.bias),
            "l2": self.l2,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PromptModel:
        m = cls(
            features=tuple(str(f) for f in d["features"]),
            center=tuple(float(v) for v in d["center"]),
            scale=tuple(float(v) for v in d["scale"]),
            weights=tuple(float(v) for v in d["weights"]),
            bias=float(d["bias"]),
            l2=float(d.get("l2", 1.0)),
        )
        if not (len(m.center) == len(m.scale) == len(m.weights) == len(m.features)):
            raise RoutingError(f"a prompt model of {len(m.features)} features needs as many centers, scales, weights")
        return m


@dataclass(frozen=True)
class LevelGate:
    """One independence level's gates, calibrated so that the self model answers about ``self_share`` of requests."""

    level: int
    self_share: float
    """The level's target share of requests the self model answers."""
    prompt_gate: float
    """Before generation: to the reference when P(wrong | prompt) > prompt_gate."""
    token_gate: float
    """During generation: to the reference at the first step (from ``min_steps`` on) whose P(wrong | steps so far)
    > token_gate."""
    min_steps: int = 1
    evidence: Mapping[str, Any] = field(default_factory=dict)
    """What the calibration measured (``calibrate.certify``): held-out corpus size, self-answered accuracy and its
    bound, the realised self-share."""

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "self_share": self.self_share,
            "prompt_gate": _round(self.prompt_gate),
            "token_gate": _round(self.token_gate),
            "min_steps": self.min_steps,
            "evidence": dict(self.evidence),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LevelGate:
        return cls(
            level=int(d["level"]),
            self_share=float(d["self_share"]),
            prompt_gate=float(d["prompt_gate"]),
            token_gate=float(d["token_gate"]),
            min_steps=int(d.get("min_steps", 1)),
            evidence=dict(d.get("evidence", {})),
        )


def everything_to_reference(level: int = 0) -> LevelGate:
    """The gate of level 0: the self model answers nothing."""
    return LevelGate(level, 0.0, prompt_gate=-1.0, token_gate=-1.0)


@dataclass(frozen=True)
class RoutePolicy:
    """What a route decides with: the prompt model, the risk probe's artifact, and one gate per level."""

    route: str
    prompt: PromptModel | None
    """None: no decision before generation (every request starts on the self model unless the level is 0)."""
    probe_sha256: str
    """The artifact of the risk probe scored mid-answer ("": no mid-answer decision)."""
    gates: tuple[LevelGate, ...]
    trained_on: Mapping[str, Any] = field(default_factory=dict)
    """Where its labels came from (log ranges, counts, splits): the lineage that rebuilds it."""

    def gate(self, level: int) -> LevelGate:
        if level == 0:
            return everything_to_reference()
        for g in self.gates:
            if g.level == level:
                return g
        raise RoutingError(
            f"route {self.route!r}: the policy has no gate for level {level} "
            f"(it has {', '.join(str(g.level) for g in self.gates) or 'none'})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "route": self.route,
            "prompt": None if self.prompt is None else self.prompt.to_json(),
            "probe_sha256": self.probe_sha256,
            "gates": [g.to_json() for g in sorted(self.gates, key=lambda g: g.level)],
            "trained_on": dict(self.trained_on),
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> RoutePolicy:
        try:
            d = json.loads(data)
            if d.get("format") != FORMAT:
                raise RoutingError(f"not a routing policy of format {FORMAT} (got {d.get('format')!r})")
            return cls(
                route=str(d["route"]),
                prompt=None if d["prompt"] is None else PromptModel.from_json(d["prompt"]),
                probe_sha256=str(d["probe_sha256"]),
                gates=tuple(LevelGate.from_json(g) for g in d["gates"]),
                trained_on=dict(d.get("trained_on", {})),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise RoutingError(f"not a readable routing policy: {e}") from e


@dataclass(frozen=True)
class Verdict:
    """One decision: where the request goes, the score that decided it and the gate it was held against."""

    target: str
    score: float
    gate: float
    reason: str
    step: int | None = None


class TokenWatch:
    """One generation's running token risk: ``update`` with each step record (as the service emits it) and get a
    Verdict to move to the reference at the first step past the gate, else None."""

    def __init__(self, probe: RiskProbe, gate: LevelGate) -> None:
        self.probe = probe
        self.gate = gate
        self.sums = FeatureSums(probe.num_layers, sketch_dim=probe.sketch_dim)
        self.peak = 0.0
        self.moved = False

    def update(self, step: Mapping[str, Any]) -> Verdict | None:
        self.sums.update(step)
        if self.moved or self.sums.n < self.gate.min_steps:
            return None
        risk = float(self.probe.probability(self.sums.features())[0])
        self.peak = max(self.peak, risk)
        if risk > self.gate.token_gate:
            self.moved = True
            return Verdict(
                REFERENCE,
                risk,
                self.gate.token_gate,
                f"token risk {risk:.3f} > gate {self.gate.token_gate:.3f} at step {self.sums.n - 1}",
                step=self.sums.n - 1,
            )
        return None


class Router:
    """A route's policy applied at one level: ``before`` decides from the prompt, ``watch`` follows a generation."""

    def __init__(
        self, policy: RoutePolicy, level: int, probe: RiskProbe | None = None, policy_version: str = ""
    ) -> None:
        if policy.probe_sha256 and probe is None:
            raise RoutingError(f"route {policy.route!r}: the policy reads probe {policy.probe_sha256[:12]}; none given")
        self.policy = policy
        self.level = level
        self.gate = policy.gate(level)
        self.probe = probe
        self.policy_version = policy_version

    def before(self, features: F64 | None) -> Verdict:
        """Before generation: the reference when the level says everything goes there, or when the prompt's
        P(wrong) is above the prompt gate; else self (to be watched)."""
        g = self.gate
        if g.self_share <= 0.0 or g.prompt_gate < 0.0:
            return Verdict(REFERENCE, 1.0, g.prompt_gate, f"level {self.level}: the reference answers everything")
        if self.policy.prompt is None or features is None:
            return Verdict(SELF, 0.0, g.prompt_gate, "no prompt model: the self model starts")
        p = float(self.policy.prompt.probability(features)[0])
        if p > g.prompt_gate:
            return Verdict(REFERENCE, p, g.prompt_gate, f"prompt risk {p:.3f} > gate {g.prompt_gate:.3f}")
        return Verdict(SELF, p, g.prompt_gate, f"prompt risk {p:.3f} <= gate {g.prompt_gate:.3f}")

    def watch(self) -> TokenWatch | None:
        """A watch of one generation's token risk, or None when the policy decides nothing mid-answer."""
        if self.probe is None or self.gate.token_gate >= 1.0:
            return None
        return TokenWatch(self.probe, self.gate)
