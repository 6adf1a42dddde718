"""Learning from the reference: a reference's answer to an escalated request labels the self model's partial answer
it replaced. The router moved the request because the partial was going wrong (its token risk passed the level's
gate), and the reference answered in its place: the partial is an Outcome WRONG (score 0), source REFERENCE, with
the step it was stopped at. These labels are what the risk probe and the router's prompt model re-learn from.

Pure: the inference service can call it when the reference's answer is in, and ``wiring.reference_labels`` calls it
for the escalations already on the log. The id is a function of the partial's trace, so writing a label twice (the
service and a catch-up pass) is a retry, counted once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from evostream.routing.policy import RoutingError
from evostream.schemas.records import Outcome


def escalation_outcome_id(partial_trace_id: str) -> str:
    """The id of the label of an escalated partial answer (one per partial: a retry of it is the same id)."""
    return f"reference-escalated-{partial_trace_id}"


def escalation_outcome(
    partial: Mapping[str, Any], final: Mapping[str, Any], step: int | None, recorded_at_us: int
) -> Outcome:
    """The Outcome the reference's ``final`` answer gives the self model's ``partial`` (finish ESCALATED) of the same
    request; ``step``: where the router stopped it (the GENERATION decision's; the partial's length without one).
    RoutingError for records that are not a partial and the reference's answer of its request."""
    if partial["finish_reason"] != "ESCALATED":
        raise RoutingError(f"trace {partial['trace_id']} is not an escalated partial ({partial['finish_reason']})")
    if final["request_id"] != partial["request_id"] or final["finish_reason"] in ("ESCALATED", "ERROR"):
        raise RoutingError(
            f"trace {final['trace_id']} is not the answer of request {partial['request_id']} "
            f"({final['request_id']}, {final['finish_reason']})"
        )
    at = int(partial["token_count"]) if step is None else int(step)
    return {
        "outcome_id": escalation_outcome_id(str(partial["trace_id"])),
        "trace_id": str(partial["trace_id"]),
        "model_version": str(partial["model_version"]),
        "label": "WRONG",
        "score": 0.0,
        "source": "REFERENCE",
        "actor": f"reference:{final['model_version']}",
        "note": f"escalated at step {at}",
        "recorded_at_us": recorded_at_us,
    }
