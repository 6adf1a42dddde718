"""Routing in the inference service: where each request goes, and the record of why.

A ``Route`` names the router in force (a callable, read once per batch: ``wiring.routing.GovernedRoute`` hands over a
new policy or level between batches; tests and ``--route-policy`` give a fixed ``Router``), the reference target and
the price table. Per request the service asks ``router.before`` on the prompt's features; a request kept on the self
model is followed by a ``TokenWatch`` fed the GenerationStep records of its steps (``Watches``), and when the watch
moves, its row stops (``on_step`` returns it) and the request goes to the reference. Each decision is a RouteDecision
record (``decision``), published on evo.routes by the service.

The watch reads the records the step emitter builds (``steps.step_records``): the probe scores the very features
the log holds, so a policy calibrated on the log decides the same way when it serves. Building them here, on the
serving thread, is the watch's cost per token (bench.route_overhead)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evostream.core.clock import now_us
from evostream.producers.steps import AttentionSignal, StepBatch, TraceMeta, step_records
from evostream.producers.targets import ReferenceTarget
from evostream.routing.policy import REFERENCE, SELF, Router, TokenWatch, Verdict
from evostream.routing.prices import PriceTable
from evostream.schemas.records import RouteDecision, RouteStage

RouterSource = Callable[[], Router | None]
"""The router in force now (read once per batch); None: no routing now (a governed route with no level approved),
the served model answers everything and no decision is recorded."""


@dataclass
class Route:
    """What a routed service needs: the route's name, its router, its reference target and its prices."""

    name: str
    router: RouterSource
    reference: ReferenceTarget
    prices: PriceTable


def decision(
    route: str,
    router: Router,
    meta: TraceMeta,
    stage: RouteStage,
    verdict: Verdict,
    versions: tuple[str, str],
    costs: tuple[float, float],
    trace_id: str,
) -> RouteDecision:
    """The RouteDecision of one verdict; ``versions`` and ``costs`` are (self, reference)."""
    chosen_version = versions[0] if verdict.target == SELF else versions[1]
    return {
        "decision_id": uuid.uuid4().hex,
        "request_id": meta.request_id,
        "trace_id": trace_id,
        "tenant": meta.tenant,
        "route": route,
        "stage": stage,
        "candidates": [
            {"target": SELF, "model_version": versions[0], "score": float(verdict.score), "cost_usd": costs[0]},
            {"target": REFERENCE, "model_version": versions[1], "score": 0.0, "cost_usd": costs[1]},
        ],
        "level": router.level,
        "gate": float(verdict.gate),
        "chosen": verdict.target,
        "chosen_version": chosen_version,
        "reason": verdict.reason,
        "policy_version": router.policy_version,
        "step": verdict.step,
        "risk": float(verdict.score),
        "retry_after_s": None,
        "decided_at_us": now_us(),
    }


class Watches:
    """The token watches of one batch's rows (None for a row not watched): ``on_step`` feeds each watched row's
    GenerationStep record to its watch and returns the rows whose watch moved, to stop; ``moved`` keeps their
    verdicts by row."""

    def __init__(
        self, watches: Sequence[TokenWatch | None], metas: Sequence[TraceMeta], version: str, signal: AttentionSignal
    ) -> None:
        self.watches = list(watches)
        self.metas = list(metas)
        self.version = version
        self.signal = signal
        self.moved: dict[int, Verdict] = {}
        self._rows = [r for r, w in enumerate(self.watches) if w is not None]

    def on_step(self, sb: StepBatch, token_texts: Sequence[str]) -> list[int]:
        if not self._rows:
            return []
        rows = [r for r in self._rows if sb.active[r]]
        if not rows:
            return []
        sub = _rows_of(sb, rows)
        stop = []
        recs = step_records(
            sub, [self.metas[r] for r in rows], self.version, self.signal, [token_texts[r] for r in rows]
        )
        for r, rec in zip(rows, recs, strict=True):
            watch = self.watches[r]
            verdict = None if watch is None else watch.update(rec)
            if verdict is not None:
                self.moved[r] = verdict
                stop.append(r)
        if stop:
            self._rows = [r for r in self._rows if r not in self.moved]
        return stop


def _rows_of(sb: StepBatch, rows: list[int]) -> StepBatch:
    """The step of ``rows`` only (every row when they are all)."""
    if len(rows) == len(sb.token_ids):
        return sb
    return StepBatch(
        step=sb.step,
        token_ids=sb.token_ids[rows],
        logits=sb.logits[rows],
        hidden=sb.hidden[rows],
        heads=None if sb.heads is None else sb.heads[rows],
        ffn=None if sb.ffn is None else sb.ffn[rows],
        active=sb.active[rows],
        latency_us=sb.latency_us,
        peak_memory_bytes=sb.peak_memory_bytes,
        row_steps=None if sb.row_steps is None else sb.row_steps[rows],
        sketch=None if sb.sketch is None else sb.sketch[rows],
    )
