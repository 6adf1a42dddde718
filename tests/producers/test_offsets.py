"""OffsetBook: commits never pass a request still in flight on its partition."""

from __future__ import annotations

from evostream.producers.offsets import OffsetBook

P0, P1 = ("evo.requests", 0), ("evo.requests", 1)


def test_commit_stops_at_the_oldest_request_in_flight() -> None:
    book = OffsetBook()
    for o in (10, 11, 12):
        book.read(P0, o)
    book.done(P0, 11)
    book.done(P0, 12)  # a short request read later finished first
    assert book.committable() == {P0: 10}
    book.committed({P0: 10})
    assert book.committable() == {}  # nothing moved
    book.done(P0, 10)
    assert book.committable() == {P0: 13}
    book.committed({P0: 13})
    assert book.in_flight() == 0


def test_partitions_are_independent_and_filtered_by_assignment() -> None:
    book = OffsetBook()
    book.read(P0, 5)
    book.read(P1, 7)
    book.done(P1, 7)
    assert book.committable() == {P0: 5, P1: 8}
    assert book.committable({P1}) == {P1: 8}
    book.forget({P1})
    assert book.committable() == {P1: 8}
    assert book.in_flight() == 0
