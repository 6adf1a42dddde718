"""Learning and calibrating a routing policy from labelled history, and replaying a policy on it.

A labelled item is one past request as the log holds it: its prompt score (the prompt model's P(wrong)), its token
risks (P(wrong | steps so far) after each generated step, as the risk probe scores the self model's steps), whether
the self model's answer was wrong, and whether the reference's was. ``replay`` applies a ``LevelGate`` to such items
exactly as ``Router`` does in the service (before generation: to the reference when the prompt score is above the
prompt gate; during it: at the first step, from ``min_steps`` on, whose risk is above the token gate) and says who
answered each, with the accuracy, shares and tokens that follow.

``calibrate_level`` sets a level's gates in two steps on two disjoint splits, so the guarantee is not in-sample:

- choose: on one split, every way of sending the reference's share before generation or mid-answer (the share sent
  before generation on a grid of 1% steps; the token gate then set so that the self model keeps the level's share)
  is replayed, and the most accurate is kept (ties: more sent before generation, which wastes no self tokens);
- certify: on the other split, the chosen gates are replayed; the self-answered error rate gets its one-sided
  Clopper-Pearson upper bound at the stated confidence, and the level is certified when that bound is at most the
  level's bound. Clopper-Pearson is exact (conservative) for a binomial count, so over repeated draws of the certify
  split the bound is above the true error rate in at least ``confidence`` of them; ``tests/routing`` checks this.

Pure numpy, no I/O: ``evostream route train`` and ``bench.routing`` call it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from evostream.models.risk_probe import logistic_newton
from evostream.routing.policy import PROMPT_FEATURES, LevelGate, PromptModel, RoutingError, everything_to_reference

F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]
STEP = 0.01
"""The grid of shares sent to the reference before generation that ``calibrate_level`` tries."""
SMOOTH = 2
"""Neighbours on each side whose accuracy a split of the grid is averaged with when choosing (``choose_gates``)."""
ANSWERED_BY = ("self", "before", "mid")
"""Who answered a replayed item: the self model, the reference before generation, the reference mid-answer."""


def fit_prompt_model(x: F64, wrong: npt.ArrayLike, l2: float = 1.0, iterations: int = 100) -> PromptModel:
    """P(the self model answers wrong | prompt features): an L2-penalized logistic regression (no penalty on the
    bias) on the standardized rows of ``x`` (``policy.prompt_features`` rows), by Newton's method from zero."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    y = np.asarray(wrong, dtype=np.float64)
    if x.shape[0] != len(y) or x.shape[1] < len(PROMPT_FEATURES):
        raise RoutingError(f"expected {len(y)} rows of at least {len(PROMPT_FEATURES)} prompt features, got {x.shape}")
    if len(y) == 0 or y.min() == y.max():
        raise RoutingError("a prompt model needs labels of both kinds (some wrong and some right self answers)")
    center = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    z = np.hstack([np.ones((len(y), 1)), (x - center) / scale])
    w = logistic_newton(z, y, np.r_[0.0, np.full(x.shape[1], l2)], iterations)
    dim = x.shape[1] - len(PROMPT_FEATURES)
    return PromptModel(
        features=(*PROMPT_FEATURES, *(f"emb_{i}" for i in range(dim))),
        center=tuple(float(v) for v in center),
        scale=tuple(float(v) for v in scale),
        weights=tuple(float(v) for v in w[1:]),
        bias=float(w[0]),
        l2=l2,
    )


@dataclass(frozen=True)
class Labelled:
    """One past request with its labels: what the policy would have seen, and whose answer was right."""

    prompt_score: float
    """P(self wrong | prompt) from the prompt model (0 when the policy has none)."""
    token_risks: tuple[float, ...]
    """P(self wrong | steps so far) after each step the self model generated, in order."""
    self_wrong: bool
    reference_wrong: bool
    reference_tokens: int = 0
    """Tokens of the reference's answer (for cost; 0 when unknown)."""


def _peaks(items: Sequence[Labelled], min_steps: int) -> F64:
    """Each item's highest token risk from step ``min_steps`` on (-inf when it has fewer steps)."""
    return np.array([max(it.token_risks[min_steps - 1 :], default=-math.inf) for it in items], dtype=np.float64)


@dataclass(frozen=True)
class Replay:
    """A gate applied to labelled history: who answered each item, and what that would have given."""

    answered: npt.NDArray[np.str_]
    """Per item: "self", "before" (the reference, before generation) or "mid" (the reference, mid-answer)."""
    wrong: BOOL
    """Per item: whether the answer the client got was wrong."""
    self_tokens: int
    """Tokens the self model generated, those of escalated partial answers included."""
    wasted_tokens: int
    """Self tokens in partial answers the reference replaced."""
    reference_tokens: int

    @property
    def n(self) -> int:
        return len(self.answered)

    @property
    def accuracy(self) -> float:
        return float(1.0 - self.wrong.mean()) if self.n else float("nan")

    def share(self, who: str) -> float:
        return float(np.mean(self.answered == who)) if self.n else float("nan")

    @property
    def self_share(self) -> float:
        return self.share("self")

    @property
    def reference_share(self) -> float:
        return 1.0 - self.self_share

    @property
    def self_answered(self) -> int:
        return int(np.sum(self.answered == "self"))

    @property
    def self_errors(self) -> int:
        return int(np.sum(self.wrong[self.answered == "self"]))

    def cost(self, self_per_token: float, reference_per_token: float, reference_per_request: float = 0.0) -> float:
        """What the answers would have cost at these prices."""
        return (
            self.self_tokens * self_per_token
            + self.reference_tokens * reference_per_token
            + (self.n - self.self_answered) * reference_per_request
        )


def replay(items: Sequence[Labelled], gate: LevelGate) -> Replay:
    """Apply ``gate`` to each item as the service's Router and TokenWatch would, and say who answered."""
    answered: list[str] = []
    wrong: list[bool] = []
    self_tokens = wasted = ref_tokens = 0
    everything = gate.self_share <= 0.0 or gate.prompt_gate < 0.0
    for it in items:
        if everything or it.prompt_score > gate.prompt_gate:
            answered.append("before")
        else:
            moved = next(
                (i for i, r in enumerate(it.token_risks) if i + 1 >= gate.min_steps and r > gate.token_gate),
                None,
            )
            if moved is None:
                answered.append("self")
                self_tokens += len(it.token_risks)
                wrong.append(it.self_wrong)
                continue
            answered.append("mid")
            self_tokens += moved + 1
            wasted += moved + 1
        ref_tokens += it.reference_tokens
        wrong.append(it.reference_wrong)
    return Replay(np.array(answered, dtype=np.str_), np.array(wrong, dtype=np.bool_), self_tokens, wasted, ref_tokens)


def clopper_pearson_upper(errors: int, n: int, confidence: float) -> float:
    """One-sided upper bound on a binomial rate from ``errors`` of ``n``: the p at which seeing at most ``errors``
    has probability 1 - confidence (1.0 when n is 0 or every trial erred)."""
    if not 0.0 < confidence < 1.0:
        raise RoutingError(f"a confidence is in (0, 1), got {confidence}")
    if n <= 0 or errors >= n:
        return 1.0
    alpha = 1.0 - confidence
    i = np.arange(errors + 1, dtype=np.float64)
    log_choose = np.array([math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in i])

    def cdf(p: float) -> float:
        return float(np.exp(log_choose + i * math.log(p) + (n - i) * math.log1p(-p)).sum())

    lo, hi = errors / n, 1.0
    for _ in range(100):  # the binomial CDF falls as p rises: bisect for cdf(p) = alpha
        mid = (lo + hi) / 2
        if mid >= 1.0 or cdf(mid) < alpha:
            hi = mid
        else:
            lo = mid
    return hi


def _prompt_gate(scores: F64, send: int) -> float:
    """The gate above which exactly the ``send`` highest scores lie (fewer on ties); -1 sends everything."""
    if send >= len(scores):
        return -1.0
    if send <= 0:
        return 1.0
    return float(np.sort(scores)[len(scores) - send - 1])


def choose_gates(
    level: int,
    target_share: float,
    items: Sequence[Labelled],
    min_steps: int = 1,
    before: bool = True,
    mid: bool = True,
) -> LevelGate:
    """The gates that keep ``target_share`` of ``items`` on the self model with the best accuracy among every split
    of the rest between before generation and mid-answer (``before`` / ``mid`` False: that decision is not used)."""
    if not 0.0 <= target_share <= 1.0:
        raise RoutingError(f"a target self-share is in [0, 1], got {target_share}")
    if target_share <= 0.0:
        return everything_to_reference(level)
    if not items:
        raise RoutingError("gates are chosen on labelled items; none given")
    if not (before or mid):
        raise RoutingError("a gate needs a decision before generation, mid-answer, or both")
    n = len(items)
    keep = max(1, round(target_share * n))
    scores = np.array([it.prompt_score for it in items])
    peaks = _peaks(items, min_steps)
    if before and mid:
        sends = sorted({round(f * n) for f in np.arange(0.0, 1.0 - target_share + STEP / 2, STEP)})
    else:
        sends = [n - keep] if before else [0]
    tried: list[tuple[float, int, LevelGate]] = []
    for send in sends:
        pg = _prompt_gate(scores, send)
        rest = np.sort(peaks[scores <= pg])
        if len(rest) < keep:
            continue
        tg = 1.0 if len(rest) == keep or not mid else float(max(rest[keep - 1], -1.0))
        gate = LevelGate(level, target_share, prompt_gate=pg, token_gate=min(tg, 1.0), min_steps=min_steps)
        tried.append((replay(items, gate).accuracy, send, gate))
    if not tried:
        raise RoutingError(f"no gates keep {target_share:.0%} of {n} items on the self model")
    # each split is judged by its accuracy averaged with its neighbours': the best single split of one sample is
    # partly luck, and that luck carries a self-share the next sample does not repeat
    acc = np.array([t[0] for t in tried])
    smooth = np.convolve(np.pad(acc, SMOOTH, mode="edge"), np.ones(2 * SMOOTH + 1) / (2 * SMOOTH + 1), "valid")
    best = max(range(len(tried)), key=lambda i: (round(float(smooth[i]), 12), tried[i][1]))
    return tried[best][2]


def certify(
    gate: LevelGate,
    items: Sequence[Labelled],
    bound: float,
    confidence: float,
    corpus: int | None = None,
    source: str = "",
) -> LevelGate:
    """``gate`` with its evidence measured on ``items`` (a split it was not chosen on): the self-answered accuracy,
    its Clopper-Pearson lower bound at ``confidence``, and whether the error rate's upper bound is within ``bound``.

    The evidence's fields are those governance judges a level by (``evostream.routing.evidence``): ``corpus`` (the
    held-out labelled answers the level was chosen and certified on; ``len(items)`` unless given), ``accuracy`` and
    ``accuracy_lower`` (self-answered, on ``items``), ``confidence``, ``self_share``; and ``bound``, ``certified``."""
    r = replay(items, gate)
    upper = clopper_pearson_upper(r.self_errors, r.self_answered, confidence)
    evidence: dict[str, Any] = {
        "corpus": len(items) if corpus is None else corpus,
        "accuracy": round(1.0 - r.self_errors / r.self_answered, 6) if r.self_answered else 0.0,
        "accuracy_lower": round(1.0 - upper, 6),
        "confidence": confidence,
        "self_share": round(r.self_share, 6),
        "bound": bound,
        "certified": bool(r.self_answered > 0 and upper <= bound),
    }
    if source:
        evidence["source"] = source
    return LevelGate(gate.level, gate.self_share, gate.prompt_gate, gate.token_gate, gate.min_steps, evidence)


def calibrate_level(
    level: int,
    target_share: float,
    choose_items: Sequence[Labelled],
    certify_items: Sequence[Labelled],
    bound: float,
    confidence: float,
    min_steps: int = 1,
    before: bool = True,
    mid: bool = True,
) -> LevelGate:
    """A level's gates chosen on ``choose_items`` for ``target_share`` and certified on ``certify_items`` (disjoint:
    the caller splits; the evidence is only a guarantee when they are)."""
    gate = choose_gates(level, target_share, choose_items, min_steps, before, mid)
    return certify(gate, certify_items, bound, confidence, corpus=len(choose_items) + len(certify_items))
