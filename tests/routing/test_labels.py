"""The reference labels the self model's answers it can compare with: a full self answer and the reference's answer to
the same request, RIGHT when they agree and WRONG when not; an escalated partial gets no label (the router's own
gate moved it: that is no outcome)."""

from __future__ import annotations

from typing import Any

import pytest

from evostream.routing.labels import audit_outcome, audit_outcome_id, audited, same_answer
from evostream.routing.policy import RoutingError
from evostream.schemas.codec import RecordCodec
from evostream.schemas.records import Outcome
from evostream.views.routes import fold
from tests.views.route_log import REF, SELF, RouteLog, route_log

T0 = 1_795_000_000_000_000


def audited_log(text: str) -> tuple[RouteLog, dict[str, Any]]:
    """The route log, and the reference's answer ``text`` to request 1 (which the self model answered)."""
    log = route_log("r", T0)
    mine = log.completions[0]
    theirs = {**mine, "trace_id": log.tid(1, "r"), "model_version": REF, "output_text": text}
    theirs["completed_at_us"] = int(mine["completed_at_us"]) + 50
    return log, theirs


@pytest.mark.parametrize(("text", "label"), [(f"  answer 1 of\n{SELF} ", "RIGHT"), ("answer 1 of nobody", "WRONG")])
def test_an_audited_self_answer_is_labelled_by_comparison_with_the_reference(text: str, label: str) -> None:
    log, theirs = audited_log(text)
    r = fold(log.decisions, [*log.completions, theirs]).request(log.rid(1))
    assert r is not None
    [(answer, reference)] = audited(r.decisions, r.completions)
    assert (answer["trace_id"], reference["trace_id"]) == (log.tid(1), log.tid(1, "r"))
    o = audit_outcome(answer, reference, 42)
    assert o == {
        "outcome_id": audit_outcome_id(log.tid(1)),
        "trace_id": log.tid(1),
        "model_version": SELF,
        "label": label,
        "score": 1.0 if label == "RIGHT" else 0.0,
        "source": "REFERENCE",
        "actor": f"reference:{REF}",
        "note": f"audited: {'agrees with' if label == 'RIGHT' else 'differs from'} trace {log.tid(1, 'r')}",
        "recorded_at_us": 42,
    }
    assert RecordCodec.of(Outcome).decode(RecordCodec.of(Outcome).encode(o)) == o  # a valid record of the contract


def test_an_escalated_partial_and_a_request_with_one_answer_get_no_label() -> None:
    log, _ = audited_log("")
    ledger = fold(log.decisions, log.completions)
    assert [r.request_id for r in ledger.requests() if audited(r.decisions, r.completions)] == []
    escalated = ledger.request(log.rid(2))
    assert escalated is not None and escalated.escalations()  # the partial and the reference's answer: no pair
    partial, final = log.completions[1], log.completions[2]
    with pytest.raises(RoutingError, match="is no finished answer \\(ESCALATED"):
        audit_outcome(partial, final, 0)
    cached = log.completions[-1]
    with pytest.raises(RoutingError, match="is no finished answer \\(STOP, cached"):
        audit_outcome(log.completions[0], cached, 0)
    with pytest.raises(RoutingError, match="is not another answer of request"):
        audit_outcome(log.completions[0], log.completions[3], 0)  # another request's answer


def test_a_failed_reference_answer_labels_nothing() -> None:
    log, theirs = audited_log("x")
    failed = {**theirs, "finish_reason": "ERROR", "error": "the reference timed out"}
    r = fold(log.decisions, [*log.completions, failed]).request(log.rid(1))
    assert r is not None and audited(r.decisions, r.completions) == []


def test_a_shadow_answer_is_never_compared() -> None:
    """A SHADOW Completion of the reference's version (a rollout's mirror) is no answer of the request."""
    log, theirs = audited_log("x")
    r = fold(log.decisions, log.completions).request(log.rid(1))
    assert r is not None
    assert audited(r.decisions, [*r.completions, {**theirs, "role": "SHADOW"}]) == []
    with pytest.raises(RoutingError, match="is no finished answer"):
        audit_outcome(log.completions[0], {**theirs, "role": "SHADOW"}, 0)


def test_answers_agree_up_to_whitespace_only() -> None:
    assert same_answer(" 02/01/2020\n", "02/01/2020") and same_answer("a  b", "a b")
    assert not same_answer("Abc", "abc") and not same_answer("1", "1.0")
