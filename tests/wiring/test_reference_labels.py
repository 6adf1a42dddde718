"""Audited requests on the log become labels on evo.outcomes (real broker): one per self answer the reference
answered too, by comparison, none written twice; an escalated partial gets none."""

from __future__ import annotations

import uuid

from evostream.core.clock import now_us
from evostream.routing.labels import audit_outcome_id
from evostream.views.outcomes import read_outcomes
from evostream.wiring.reference_labels import label_audited
from tests.views.route_log import REF, SELF, publish, route_log


def test_a_pass_labels_each_audited_answer_once_and_no_partial(kafka: str) -> None:
    t0 = now_us()
    log = route_log(f"labels-{uuid.uuid4().hex[:8]}", t0)
    mine = log.completions[0]  # request 1, answered by the self model; the reference answers it too, differently
    theirs = {**mine, "trace_id": log.tid(1, "r"), "model_version": REF, "output_text": "another answer"}
    publish(kafka, log, also=[theirs])  # type: ignore[list-item]
    written = label_audited(kafka, since_us=t0 - 1_000_000)
    ours = [o for o in written if o["trace_id"].startswith(log.route)]
    assert [(o["trace_id"], o["label"], o["source"]) for o in ours] == [(log.tid(1), "WRONG", "REFERENCE")]
    assert ours[0]["model_version"] == SELF and ours[0]["actor"] == f"reference:{REF}"
    again = label_audited(kafka, since_us=t0 - 1_000_000)
    assert not [o for o in again if o["trace_id"].startswith(log.route)]
    book = read_outcomes(kafka, keep=lambda o: o["trace_id"].startswith(log.route))
    assert book.ids() == [audit_outcome_id(log.tid(1))] and book.score(log.tid(1)) == 0.0
    assert book.score(log.tid(2, "p")) is None  # the escalated partial: no label
