"""Learning from the reference: where the same request has a full answer of the self model and an answer of the
reference (an audited request), the reference's answer labels the self model's: RIGHT when the two agree, WRONG
when they differ, source REFERENCE. These labels are what the risk probe and the router's prompt model re-learn from.

What is not labelled: an escalated partial (finish ESCALATED). The router moved it because its token risk passed the
level's gate, which is the router's own opinion, not an outcome: labelling every partial WRONG would teach the probe
to agree with its own gate. A partial is unfinished, so there is nothing to compare with the reference's answer
either; the reference's answer to an escalated request is a distillation target of the self model instead
(``consumers.evolution.inputs``).

Agreement is exact on the answers' text with the whitespace at the ends and runs of whitespace inside made one space
(the task suite's grading compares stripped answers the same way): the reference is taken as right, which is why it
is the reference.

Pure: ``wiring.reference_labels`` calls it for the audited requests on the log. The id is a function of the self
answer's trace, so writing a label twice is a retry, counted once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from evostream.routing.policy import REFERENCE, SELF, RoutingError
from evostream.schemas.records import Outcome

Record = Mapping[str, Any]


def audit_outcome_id(self_trace_id: str) -> str:
    """The id of the label the reference gives one self answer (a retry of it is the same id)."""
    return f"reference-audit-{self_trace_id}"


def same_answer(a: str, b: str) -> bool:
    """Whether two answers say the same (exact, up to whitespace)."""
    return " ".join(a.split()) == " ".join(b.split())


def _finished(c: Record) -> bool:
    """A whole generated answer of its request: not an error, a partial, a cache hit, nor a shadow answer."""
    return (
        c["finish_reason"] in ("STOP", "LENGTH")
        and not c.get("error")
        and not c.get("cached", False)
        and c.get("role", "ANSWER") != "SHADOW"
    )


def audit_outcome(answer: Record, reference: Record, recorded_at_us: int) -> Outcome:
    """The Outcome the reference's answer gives the self model's ``answer`` to the same request. RoutingError for
    records that are not two finished, generated answers (not cached, not a partial) of one request."""
    for c in (answer, reference):
        if not _finished(c):
            raise RoutingError(
                f"trace {c['trace_id']} is no finished answer ({c['finish_reason']}"
                f"{', cached' if c.get('cached', False) else ''}): only full answers are compared"
            )
    if answer["request_id"] != reference["request_id"] or answer["trace_id"] == reference["trace_id"]:
        raise RoutingError(
            f"trace {reference['trace_id']} is not another answer of request {answer['request_id']} "
            f"({reference['request_id']})"
        )
    agree = same_answer(str(answer["output_text"]), str(reference["output_text"]))
    return {
        "outcome_id": audit_outcome_id(str(answer["trace_id"])),
        "trace_id": str(answer["trace_id"]),
        "model_version": str(answer["model_version"]),
        "label": "RIGHT" if agree else "WRONG",
        "score": 1.0 if agree else 0.0,
        "source": "REFERENCE",
        "actor": f"reference:{reference['model_version']}",
        "note": f"audited: {'agrees with' if agree else 'differs from'} trace {reference['trace_id']}",
        "recorded_at_us": recorded_at_us,
    }


def targets_of(decisions: Iterable[Record]) -> tuple[set[str], set[str]]:
    """The versions a request's decisions name as its self model and as its reference."""
    found: dict[str, set[str]] = {SELF: set(), REFERENCE: set()}
    for d in decisions:
        for c in d["candidates"]:
            if c["target"] in found and c["model_version"]:
                found[c["target"]].add(str(c["model_version"]))
    return found[SELF], found[REFERENCE]


def audited(decisions: Sequence[Record], completions: Sequence[Record]) -> list[tuple[Record, Record]]:
    """(the self model's full answer, the reference's answer) of one request, for each finished self answer when the
    reference answered it too (its last finished answer); none when either is missing. Which version is which is what
    the request's decisions weighed."""
    selves, references = targets_of(decisions)
    mine = [c for c in completions if c["model_version"] in selves and _finished(c)]
    theirs = [c for c in completions if c["model_version"] in references and _finished(c)]
    if not theirs:
        return []
    return [(c, theirs[-1]) for c in mine]
