"""The reference's answers written back as labels: a follower of evo.routes and evo.completions that labels each
self answer whose request the reference answered too (an audited request) by comparing the two
(``routing.labels.audit_outcome``), on evo.outcomes. Escalated partials get no label (``routing.labels`` says why).

A pass reads the decisions (from ``since_us``) and their requests' Completions, and the REFERENCE labels already on
evo.outcomes, and writes the missing ones; ``follow_audited`` repeats passes. The label's id is a function of the
self answer's trace, so a pass run twice writes nothing new (and a label written twice still counts once).

Which requests have both answers is the service's choice: the inference service has no audit path yet (a request it
keeps on the self model is not sent to the reference as well), so until it has one a pass labels only what the log
already holds with both (a request answered by the self model and asked again of the reference, as a replay or an
evaluation does)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from evostream.core.clock import now_us
from evostream.routing.labels import audit_outcome, audited
from evostream.schemas.records import Outcome
from evostream.views.outcomes import read_outcomes
from evostream.views.routes import read_ledger
from evostream.wiring.feedback import publish_outcomes


def label_audited(server: str, since_us: int | None = None, idle_s: float = 3.0) -> list[Outcome]:
    """One pass: the labels written (none when every audited request on the log from ``since_us`` has its label)."""
    ledger = read_ledger(server, since_us, idle_s=idle_s)
    found = [pair for r in ledger.requests() for pair in audited(r.decisions, r.completions)]
    if not found:
        return []
    have = set(read_outcomes(server, keep=lambda o: o["source"] == "REFERENCE").ids())
    at = now_us()
    labels = [audit_outcome(answer, reference, at) for answer, reference in found]
    fresh = [o for o in labels if o["outcome_id"] not in have]
    if fresh:
        publish_outcomes(server, fresh)
    return fresh


def follow_audited(
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
        said(label_audited(server, since_us))
        since_us = began - int(lookback_s * 1e6)
        stop.wait(every_s)
