"""Recording that a generation was right or wrong: the trace is looked up in the log (an unknown trace is an error,
not a label on nothing), the label is checked and written to ``evo.outcomes``, acknowledged by the broker before this
returns. Shared by ``evostream feedback`` and ``POST /feedback``; the dashboard's buttons call the latter."""

from __future__ import annotations

from collections.abc import Sequence

from evostream.core.bus.producer import EventProducer
from evostream.core.clock import now_us
from evostream.core.errors import NotFoundError
from evostream.schemas.catalog import COMPLETIONS, OUTCOMES
from evostream.schemas.codec import RecordCodec
from evostream.schemas.records import Outcome
from evostream.stream_processors.risk.outcomes import outcome
from evostream.views.traces import find_completion


def publish_outcomes(server: str, records: Sequence[Outcome], timeout_s: float = 30.0) -> None:
    """Write ``records`` to evo.outcomes (keyed by trace) and wait until the broker has every one."""
    codec = RecordCodec.of(Outcome)
    producer = EventProducer(server)
    for rec in records:
        producer.send(OUTCOMES, rec["trace_id"], codec.encode(rec))
    producer.flush(timeout_s)


def record_feedback(
    server: str,
    trace_id: str,
    label: str,
    *,
    actor: str,
    source: str = "HUMAN",
    score: float | None = None,
    note: str = "",
    outcome_id: str | None = None,
    model_version: str | None = None,
    lookup_timeout_s: float = 30.0,
) -> Outcome:
    """Label ``trace_id`` (its model version read from its Completion unless given); the record as written.
    NotFoundError for a trace no Completion names; OutcomeError for a label outside the set."""
    if model_version is None:
        done = find_completion(server, trace_id, lookup_timeout_s)
        if done is None:
            raise NotFoundError(f"no trace {trace_id} on {COMPLETIONS} (looked for {lookup_timeout_s:g} s)")
        model_version = done["model_version"]
    rec = outcome(
        trace_id,
        model_version,
        label,
        source=source,
        actor=actor,
        recorded_at_us=now_us(),
        score=score,
        note=note,
        outcome_id=outcome_id,
    )
    publish_outcomes(server, [rec])
    return rec
