"""A reference's answer to an escalated request labels the self model's partial answer: WRONG, source REFERENCE,
with the step it was stopped at; anything else is refused."""

from __future__ import annotations

import pytest

from evostream.routing.labels import escalation_outcome, escalation_outcome_id
from evostream.routing.policy import RoutingError
from evostream.schemas.codec import RecordCodec
from evostream.schemas.records import Outcome
from evostream.views.routes import fold
from tests.views.route_log import REF, SELF, route_log

T0 = 1_795_000_000_000_000


def test_the_reference_answer_labels_the_partial_wrong_at_the_step_it_moved() -> None:
    log = route_log("r", T0)
    r = fold(log.decisions, log.completions).request(log.rid(2))
    assert r is not None
    [(decision, partial, final)] = r.escalations()
    o = escalation_outcome(partial, final, decision["step"], 42)
    assert o == {
        "outcome_id": escalation_outcome_id(log.tid(2, "p")),
        "trace_id": log.tid(2, "p"),
        "model_version": SELF,
        "label": "WRONG",
        "score": 0.0,
        "source": "REFERENCE",
        "actor": f"reference:{REF}",
        "note": "escalated at step 5",
        "recorded_at_us": 42,
    }
    assert RecordCodec.of(Outcome).decode(RecordCodec.of(Outcome).encode(o)) == o  # a valid record of the contract
    assert escalation_outcome(partial, final, None, 42)["note"] == "escalated at step 5"  # the partial's length


def test_only_an_escalated_partial_and_its_requests_answer_make_a_label() -> None:
    log = route_log("r", T0)
    ledger = fold(log.decisions, log.completions)
    assert all(not r.escalations() for r in ledger.requests() if r.request_id != log.rid(2))
    partial, final = log.completions[1], log.completions[2]
    with pytest.raises(RoutingError, match="not an escalated partial"):
        escalation_outcome(final, final, 5, 0)
    with pytest.raises(RoutingError, match="is not the answer of request"):
        escalation_outcome(partial, log.completions[3], 5, 0)  # another request's answer
    failed = {**final, "finish_reason": "ERROR", "error": "the reference timed out"}
    r = fold(log.decisions, [partial, failed]).request(log.rid(2))
    assert r is not None and r.escalations() == []  # no answer from the reference: nothing learnt
