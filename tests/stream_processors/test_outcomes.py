"""Outcomes fold into what stands: a retry counts once, an actor's latest label stands, bad labels are refused."""

from __future__ import annotations

import pytest

from evostream.schemas.records import Outcome
from evostream.stream_processors.risk.outcomes import OutcomeBook, OutcomeError, outcome


def label(
    trace: str, kind: str, actor: str = "alice", at: int = 1, oid: str | None = None, score: float | None = None
) -> Outcome:
    return outcome(trace, "m@1", kind, source="HUMAN", actor=actor, recorded_at_us=at, score=score, outcome_id=oid)


def test_a_retry_is_counted_once() -> None:
    book = OutcomeBook()
    first = label("t1", "WRONG", oid="click-1")
    assert book.add(first, 0) is True
    assert book.add(Outcome(**first), 1) is False
    assert book.retries == 1
    assert [s.outcome_id for s in book.labels("t1")] == ["click-1"]
    book.add(label("t2", "RIGHT", oid="a-first"), 2)
    assert book.ids() == ["a-first", "click-1"]  # each label once, sorted: what a digest of the labels is made of


def test_the_latest_label_of_an_actor_stands_and_actors_are_averaged() -> None:
    book = OutcomeBook().extend(
        [
            (label("t1", "WRONG", at=10), 0),
            (label("t1", "RIGHT", at=20), 1),  # alice changed her mind
            (label("t1", "WRONG", at=15), 2),  # a late-arriving older label of hers does not override
            (label("t1", "GRADED", actor="bob", at=5, score=0.5), 3),
        ]
    )
    assert [(s.actor, s.label) for s in book.labels("t1")] == [("alice", "RIGHT"), ("bob", "GRADED")]
    assert book.score("t1") == pytest.approx(0.75)
    assert book.score("unknown") is None
    assert book.traces() == ["t1"] and len(book) == 1


def test_equal_times_are_ordered_by_offset() -> None:
    book = OutcomeBook().extend([(label("t", "RIGHT", at=7), 4), (label("t", "WRONG", at=7), 5)])
    assert book.score("t") == 0.0


@pytest.mark.parametrize(
    ("kind", "score", "message"),
    [
        ("MAYBE", None, "not one of RIGHT, WRONG, GRADED"),
        ("GRADED", None, "needs a score in [0, 1]"),
        ("GRADED", 1.5, "needs a score in [0, 1]"),
        ("GRADED", float("nan"), "needs a score in [0, 1]"),
        ("RIGHT", 0.0, "a RIGHT label has score 1"),
    ],
)
def test_a_label_outside_the_set_is_refused(kind: str, score: float | None, message: str) -> None:
    with pytest.raises(OutcomeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        label("t", kind, score=score)


def test_right_and_wrong_are_one_and_zero() -> None:
    assert label("t", "RIGHT")["score"] == 1.0
    assert label("t", "WRONG")["score"] == 0.0
    with pytest.raises(OutcomeError, match="source"):
        outcome("t", "m", "RIGHT", source="GOSSIP", actor="a", recorded_at_us=0)
