"""Reference answers to escalated requests, written back as labels: a follower of evo.routes and evo.completions
that turns each escalation the reference has answered into an Outcome of the self model's partial answer
(``routing.labels.escalation_outcome``) on evo.outcomes.

A pass reads the GENERATION decisions (from ``since_us``) and their requests' Completions, and the REFERENCE labels
already on evo.outcomes, and writes the missing ones; ``follow`` repeats passes. The label's id is a function of the
partial's trace, so a pass run twice, or after the inference service wrote the label itself, writes nothing new (and
a label written twice still counts once)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from evostream.core.clock import now_us
from evostream.routing.labels import escalation_outcome
from evostream.schemas.records import Outcome
from evostream.views.outcomes import read_outcomes
from evostream.views.routes import read_ledger
from evostream.wiring.feedback import publish_outcomes


def label_escalations(server: str, since_us: int | None = None, idle_s: float = 3.0) -> list[Outcome]:
    """One pass: the labels written (none when every escalation on the log from ``since_us`` has its label)."""
    ledger = read_ledger(server, since_us, keep=lambda d: d["stage"] == "GENERATION", idle_s=idle_s)
    found = [e for r in ledger.requests() for e in r.escalations()]
    if not found:
        return []
    have = set(read_outcomes(server, keep=lambda o: o["source"] == "REFERENCE").ids())
    at = now_us()
    labels = [escalation_outcome(partial, final, decision["step"], at) for decision, partial, final in found]
    fresh = [o for o in labels if o["outcome_id"] not in have]
    if fresh:
        publish_outcomes(server, fresh)
    return fresh


def follow_escalations(
    server: str,
    stop: threading.Event,
    since_us: int | None = None,
    every_s: float = 30.0,
    lookback_s: float = 600.0,
    said: Callable[[list[Outcome]], None] = lambda _: None,
) -> None:
    """Passes every ``every_s`` until ``stop``: the first from ``since_us``, each next one from ``lookback_s``
    before the previous pass began (a reference answer comes after its decision: this long is allowed for it)."""
    while not stop.is_set():
        began = now_us()
        said(label_escalations(server, since_us))
        since_us = began - int(lookback_s * 1e6)
        stop.wait(every_s)
