"""The one result type of the three trackers (risk, drift, profiling): what folding input into a key's state gives.

Each tracker is a pure function of the stored state and the input (no Faust); the app writes ``state`` back whole
and publishes ``reports`` and ``alerts``. ``duplicates`` counts inputs the state already held (a replay after a
restart, or a record forwarded twice by a repartition): they are skipped, never counted twice. ``rejected`` names
the inputs that do not fit the key's state (``checks.py``): left out, and dead-lettered by the agent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from evostream.core.errors import EvoError


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
    rejected: dict[int, EvoError] = field(default_factory=dict)
    """Inputs left out because they do not fit the state they join, by input offset, with the reason: the agent
    dead-letters them (a fold that takes a batch goes on with the batch's other inputs)."""
