"""The one result type of the three trackers (risk, drift, profiling): what folding input into a key's state gives.

Each tracker is a pure function of the stored state and the input (no Faust); the app writes ``state`` back whole
and publishes ``reports`` and ``alerts``. ``duplicates`` counts inputs the state already held (a replay after a
restart, or a record forwarded twice by a repartition): they are skipped, never counted twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Fold:
    """The new state of one key and the records to publish."""

    state: dict[str, Any]
    reports: list[dict[str, Any]] = field(default_factory=list)
    """Records for the tracker's output topic: RiskReports, DriftReports or ProfileSnapshots."""
    alerts: list[dict[str, Any]] = field(default_factory=list)
    """RiskAlerts (only the risk tracker raises them)."""
    duplicates: int = 0
    """Inputs skipped because the state already held them."""
