"""What the service and the processors published lately, folded for reading (pure: records in, views out).

The CLI feeds it one pass over a topic; the HTTP API feeds it continuously from a tail of the topics and serves every
read from it. Nothing here recomputes what a processor computed: alerts, risk, drift windows and profiles are shown as
published; traces are their steps, completion and risk reports gathered by trace id. Memory is bounded: the last
``max_traces`` traces, ``max_records`` alerts and drift windows, the latest profile per model version.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from evostream.schemas.catalog import ALERTS, COMPLETIONS, DRIFT, PROFILES, RISK, ROUTES, STEPS
from evostream.views.routes import RouteLedger

SEVERITIES = ("INFO", "WARNING", "CRITICAL")


def at_least(alert: Mapping[str, Any], min_severity: str) -> bool:
    """Whether an alert is at or above ``min_severity`` (INFO < WARNING < CRITICAL)."""
    return SEVERITIES.index(alert["severity"]) >= SEVERITIES.index(min_severity)


Record = dict[str, Any]


@dataclass
class Trace:
    """One request as it streams in: its steps in step order, its completion, its latest risk per stage."""

    trace_id: str
    steps: dict[int, Record] = field(default_factory=dict)
    completion: Record | None = None
    risk: dict[str, Record] = field(default_factory=dict)
    alerts: list[Record] = field(default_factory=list)

    def _first(self) -> Record:
        """A record naming the trace's request and version: its first step, else its completion."""
        return next(iter(self.steps.values()), None) or self.completion or {}

    def _risk(self) -> Record | None:
        """The latest risk report: the FINAL one once it came, else the EARLY one."""
        return self.risk.get("FINAL") or self.risk.get("EARLY")

    def summary(self) -> dict[str, Any]:
        """A line of the trace list: what it is and how it went, without its steps."""
        first, final = self._first(), self._risk()
        done = self.completion
        return {
            "trace_id": self.trace_id,
            "request_id": first.get("request_id"),
            "model_version": first.get("model_version"),
            "steps": len(self.steps),
            "answer": None if done is None else done["output_text"],
            "finish_reason": None if done is None else done["finish_reason"],
            "role": None if done is None else done.get("role", "ANSWER"),
            "risk_score": None if final is None else final["score"],
            "risk_stage": None if final is None else final["stage"],
            "alerts": len(self.alerts),
        }

    def doc(self) -> dict[str, Any]:
        """The trace as the API returns it (bytes fields left out: packed statistics are for machines)."""
        first, final = self._first(), self._risk()
        return {
            "trace_id": self.trace_id,
            "request_id": first.get("request_id"),
            "model_version": first.get("model_version"),
            "steps": [plain(self.steps[k]) for k in sorted(self.steps)],
            "completion": None if self.completion is None else plain(self.completion, drop=("prompt_embedding",)),
            "risk": None if final is None else plain(final),
            "alerts": [plain(a) for a in self.alerts],
        }


def plain(rec: Mapping[str, Any], drop: tuple[str, ...] = ()) -> Record:
    """A record as JSON can carry it: bytes fields (packed statistics, for machines) and ``drop`` left out, and a
    non-finite number (a NaN entropy is what the risk maths flags) as null, at any depth."""
    return {k: _finite(v) for k, v in rec.items() if not isinstance(v, bytes | bytearray) and k not in drop}


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {k: _finite(x) for k, x in v.items() if not isinstance(x, bytes | bytearray)}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


class Recent:
    """The fold. ``add(topic, record)`` for each record read; the readers below answer from what was added."""

    def __init__(self, max_traces: int = 500, max_records: int = 1000) -> None:
        self.max_traces = max_traces
        self._traces: OrderedDict[str, Trace] = OrderedDict()
        self._alerts: deque[Record] = deque(maxlen=max_records)
        self._drift: deque[Record] = deque(maxlen=max_records)
        self._profiles: dict[str, Record] = {}
        self._completed: deque[tuple[int, int, str]] = deque(maxlen=100_000)  # (completed_at_us, tokens, version)
        self.routes = RouteLedger(max_requests=max_traces, max_waiting=max_traces)
        """The routing decisions of the latest ``max_traces`` requests and their Completions."""
        self.seen: dict[str, int] = {}
        """Records added per topic."""

    def add(self, topic: str, rec: Record) -> None:
        self.seen[topic] = self.seen.get(topic, 0) + 1
        if topic == STEPS:
            self._trace(rec["trace_id"]).steps[int(rec["step"])] = rec
        elif topic == COMPLETIONS:
            self._trace(rec["trace_id"]).completion = rec
            if rec.get("role") != "SHADOW":  # a shadow answer answers no request: the overview counts answers
                self._completed.append(
                    (int(rec["completed_at_us"]), int(rec["token_count"]), str(rec["model_version"]))
                )
            self.routes.add_completion(rec)
        elif topic == ROUTES:
            self.routes.add_decision(rec)
        elif topic == RISK:  # a report of a trace no longer (or not yet) kept makes no empty trace that evicts one
            if (t := self._traces.get(rec["trace_id"])) is not None:
                t.risk[str(rec["stage"])] = rec
        elif topic == ALERTS:
            self._alerts.append(rec)
            if (t := self._traces.get(rec["trace_id"])) is not None:
                t.alerts.append(rec)
        elif topic == DRIFT:
            self._drift.append(rec)
        elif topic == PROFILES:
            self._profiles[str(rec["model_version"])] = rec

    def _trace(self, trace_id: str) -> Trace:
        t = self._traces.get(trace_id)
        if t is None:
            t = self._traces[trace_id] = Trace(trace_id)
            while len(self._traces) > self.max_traces:
                self._traces.popitem(last=False)
        return t

    # --- readers -------------------------------------------------------------------------------------------------
    def trace(self, trace_id: str) -> Trace | None:
        return self._traces.get(trace_id)

    def traces(self, last: int = 20) -> list[Trace]:
        """The most recently started traces, newest first."""
        return list(reversed(self._traces.values()))[:last]

    def alerts(self, last: int = 50, min_severity: str = "INFO", model: str | None = None) -> list[Record]:
        """The latest alerts at or above ``min_severity``, oldest first."""
        out = [a for a in self._alerts if at_least(a, min_severity) and (model is None or a["model_version"] == model)]
        return out[-last:] if last else []

    def drift(self, last: int = 10, model: str | None = None) -> list[Record]:
        """The latest drift windows (of ``model``, or of every model), oldest first."""
        out = [r for r in self._drift if model is None or r["model_version"] == model]
        return out[-last:] if last else []

    def profiles(self, model: str | None = None) -> list[Record]:
        """The latest profile of each model version (or of ``model``)."""
        return [p for v, p in self._profiles.items() if model is None or v == model]

    def overview(self, now_us: int, window_s: float = 60.0) -> dict[str, Any]:
        """Throughput and alert rate over the last ``window_s`` seconds, and the versions that answered in it."""
        since = now_us - int(window_s * 1e6)
        done = [(t, n, v) for t, n, v in self._completed if t >= since]
        alerts = [a for a in self._alerts if a["produced_at_us"] >= since]
        versions: dict[str, int] = {}
        for _, _, v in done:
            versions[v] = versions.get(v, 0) + 1
        return {
            "window_s": window_s,
            "requests_per_s": len(done) / window_s,
            "tokens_per_s": sum(n for _, n, _ in done) / window_s,
            "alerts_per_min": len(alerts) * 60.0 / window_s,
            "versions_answering": versions,
            "records_seen": dict(self.seen),
        }
