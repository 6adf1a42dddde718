"""Escalations on the log become labels on evo.outcomes (real broker): one per partial the reference answered,
none written twice."""

from __future__ import annotations

import uuid

from evostream.core.clock import now_us
from evostream.routing.labels import escalation_outcome_id
from evostream.views.outcomes import read_outcomes
from evostream.wiring.reference_labels import label_escalations
from tests.views.route_log import REF, SELF, publish, route_log


def test_a_pass_labels_each_answered_escalation_once(kafka: str) -> None:
    t0 = now_us()
    log = route_log(f"labels-{uuid.uuid4().hex[:8]}", t0)
    publish(kafka, log)
    written = label_escalations(kafka, since_us=t0 - 1_000_000)
    mine = [o for o in written if o["trace_id"].startswith(log.route)]
    assert [(o["trace_id"], o["label"], o["source"], o["note"]) for o in mine] == [
        (log.tid(2, "p"), "WRONG", "REFERENCE", "escalated at step 5")
    ]
    assert mine[0]["model_version"] == SELF and mine[0]["actor"] == f"reference:{REF}"
    again = label_escalations(kafka, since_us=t0 - 1_000_000)
    assert not [o for o in again if o["trace_id"].startswith(log.route)]
    book = read_outcomes(kafka, keep=lambda o: o["trace_id"].startswith(log.route))
    assert book.ids() == [escalation_outcome_id(log.tid(2, "p"))] and book.score(log.tid(2, "p")) == 0.0
