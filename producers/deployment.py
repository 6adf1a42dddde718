"""What the inference service serves during progressive delivery: production, and a candidate beside it.

A ``Deployment`` names the production version, the candidate (a running rollout's, or the staging version shadowed by
policy), the percent of requests the candidate answers (``weight``), the share of the others mirrored to it in the
shadow (``shadow_share``) and the rollout's id. The service reads its ``DeploymentSource`` once per static batch,
after polling and before generating, and splits the whole batch with what it read (``evostream.rollout.split``): a
new weight applies from the next batch, and a batch in flight finishes as it started.

Which versions to serve, and loading them, is the source's business (``wiring.deployment`` follows the governance
log, loading off the serving thread); a source hands over loaded models, never generators, and ``deployment`` must be
quick. Without a rollout, a source is production alone (``ProductionOnly`` wraps a ``ModelSource``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from evostream.producers.swap import ModelSource, ServingModel
from evostream.rollout.split import Arm, assign, check, staging_salt


@dataclass(frozen=True)
class Deployment:
    """Production and, during a rollout or a staging shadow, the candidate with its share of the traffic."""

    production: ServingModel
    candidate: ServingModel | None = None
    weight: int = 0
    """Percent of requests the candidate answers (its canary answers)."""
    shadow_share: float = 0.0
    """Share of the requests the candidate does not answer that are mirrored to it (its shadow answers)."""
    rollout_id: str | None = None
    """The running rollout, or None for a staging shadow outside a rollout (and for production alone)."""

    def __post_init__(self) -> None:
        check(self.weight, self.shadow_share)
        if self.candidate is None and (self.weight or self.shadow_share):
            raise ValueError("a weight or a shadow share needs a candidate")
        if self.candidate is not None and self.candidate.version == self.production.version:
            raise ValueError(f"the candidate {self.candidate.version} is the production version")

    @property
    def active(self) -> bool:
        """Whether any request goes to the candidate (as an answer or as a mirror)."""
        return self.candidate is not None and (self.weight > 0 or self.shadow_share > 0)

    @property
    def salt(self) -> str:
        """The split's salt: the rollout's id, else the staged version's."""
        if self.rollout_id is not None:
            return self.rollout_id
        return staging_salt(self.candidate.version if self.candidate is not None else self.production.version)

    def assign(self, request_id: str) -> Arm:
        """Which arm answers ``request_id`` (``rollout.split.assign``)."""
        if not self.active:
            return "INCUMBENT"
        return assign(request_id, self.salt, self.weight, self.shadow_share)

    def describe(self) -> str:
        """One line for the log."""
        if self.candidate is None:
            return f"{self.production.version} alone"
        rollout = f"rollout {self.rollout_id}" if self.rollout_id else "staging shadow"
        return (
            f"{self.production.version} with candidate {self.candidate.version} ({rollout}: weight {self.weight}%, "
            f"shadow share {self.shadow_share:g})"
        )


class DeploymentSource(Protocol):
    """What the inference service serves: read once per static batch, from the serving thread; quick, never loading."""

    def deployment(self) -> Deployment: ...


class ProductionOnly:
    """A deployment source of production alone: whatever a ``ModelSource`` names."""

    def __init__(self, models: ModelSource) -> None:
        self.models = models
        self._last: Deployment | None = None

    def deployment(self) -> Deployment:
        current = self.models.current()
        if self._last is None or self._last.production is not current:
            self._last = Deployment(current)
        return self._last


class DeploymentSlot:
    """A deployment source a caller sets (a test, a benchmark, a follower): thread-safe, one reference read."""

    def __init__(self, initial: Deployment) -> None:
        self._current = initial
        self._lock = threading.Lock()

    def deployment(self) -> Deployment:
        return self._current

    def set(self, deployment: Deployment) -> None:
        with self._lock:
            self._current = deployment
