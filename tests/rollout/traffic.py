"""Records a rollout's traffic leaves on the log, made by hand with the contract's shapes: a version's Completions
(its role, generation time, error), the RiskAlerts of some of them, the Outcomes that label them, the shadow
comparisons. For the fold's unit tests and for the controller's tests on the real broker, until the service writes
them itself."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, cast

from evostream.schemas import samples
from evostream.schemas.catalog import ALERTS, COMPLETIONS, OUTCOMES, SHADOW
from evostream.schemas.records import Completion, Outcome, RiskAlert, ShadowComparison


def completion(
    trace: str,
    version: str,
    at_us: int,
    *,
    role: str = "ANSWER",
    latency_ms: float = 80.0,
    error: bool = False,
    rollout_id: str | None = None,
    **over: Any,
) -> Completion:
    us = int(latency_ms * 1000)
    mine = {
        "trace_id": trace,
        "request_id": f"req-{trace}",
        "model_version": version,
        "finish_reason": "ERROR" if error else "STOP",
        "error": "model error: injected" if error else None,
        "timings": {"queue_us": 100, "prefill_us": us // 4, "decode_us": us - us // 4, "total_us": us + 100},
        "completed_at_us": at_us,
        "cached": False,
        "cached_from": None,
        "role": role,
        "rollout_id": rollout_id,
    }
    return cast(Completion, {**samples.completion(0, at_us), **mine, **over})


def alert(trace: str, version: str, at_us: int) -> RiskAlert:
    mine = {"trace_id": trace, "request_id": f"req-{trace}", "model_version": version, "produced_at_us": at_us}
    return cast(RiskAlert, {**samples.alert(0, at_us), **mine})


def outcome(trace: str, version: str, right: bool, at_us: int, actor: str = "suite") -> Outcome:
    return {
        "outcome_id": uuid.uuid4().hex,
        "trace_id": trace,
        "model_version": version,
        "label": "RIGHT" if right else "WRONG",
        "score": 1.0 if right else 0.0,
        "source": "SUITE",
        "actor": actor,
        "note": "",
        "recorded_at_us": at_us,
    }


def comparison(
    production_trace: str, candidate_trace: str, production: str, candidate: str, at_us: int, agree: bool
) -> ShadowComparison:
    mine = {
        "request_id": f"req-{production_trace}",
        "production_version": production,
        "candidate_version": candidate,
        "production_trace_id": production_trace,
        "candidate_trace_id": candidate_trace,
        "agree": agree,
        "candidate_error": None,
        "compared_at_us": at_us,
    }
    return cast(ShadowComparison, {**samples.shadow_comparison(0, at_us), **mine})


@dataclass
class Traffic:
    """A version's answers and what the log says of them, as (topic, record) pairs in the order written."""

    records: list[tuple[str, Any]] = field(default_factory=list)
    n: int = 0

    def answers(
        self,
        version: str,
        count: int,
        at_us: int,
        *,
        role: str = "ANSWER",
        alerted: int = 0,
        errors: int = 0,
        labelled: int = 0,
        right: int = 0,
        latency_ms: float = 80.0,
        spacing_us: int = 1000,
        rollout_id: str | None = None,
    ) -> list[str]:
        """``count`` answers of ``version`` from ``at_us``: the first ``alerted`` alerted, the first ``errors``
        failed, the first ``labelled`` labelled (the first ``right`` of those right). Returns their traces."""
        traces = []
        for k in range(count):
            self.n += 1
            trace = f"t{self.n}-{uuid.uuid4().hex[:6]}"
            t = at_us + k * spacing_us
            traces.append(trace)
            rec = completion(
                trace, version, t, role=role, latency_ms=latency_ms, error=k < errors, rollout_id=rollout_id
            )
            self.records.append((COMPLETIONS, rec))
            if k < alerted:
                self.records.append((ALERTS, alert(trace, version, t + 100)))
            if k < labelled:
                self.records.append((OUTCOMES, outcome(trace, version, k < right, t + 200)))
        return traces

    def compare(self, production: str, candidate: str, pairs: list[tuple[str, str]], at_us: int, agree: int) -> None:
        for k, (p, c) in enumerate(pairs):
            self.records.append((SHADOW, comparison(p, c, production, candidate, at_us + k, k < agree)))
