"""Voiding bad records of the governance log (OffsetVoided), on real signed chains in memory: a Kafka record cannot
be deleted, so an admin's signed void makes replay skip exactly the offsets it names, and nothing else."""

from __future__ import annotations

from dataclasses import replace

from bench.replay import ADMIN, Chain
from evostream.consumers.governance.events import GovEvent
from evostream.consumers.governance.projection import Finding, plan_void, replay

Item = tuple[int | None, GovEvent | Finding]


def chain() -> Chain:
    c = Chain(seed=21)
    c.genesis()
    c.append("PolicyChanged", ADMIN, {"policy": {"production_approvals": 1}})
    c.enroll("alice", ["approver"])
    return c


def junk(offset: int) -> Finding:
    return Finding(offset, -1, "undecodable", "not a governance event: 4 bytes")


def log_of(c: Chain, extra: dict[int, GovEvent | Finding]) -> list[Item]:
    """The chain's events at offsets 0, 2, 4, ... with ``extra`` records at the (odd) offsets given."""
    items: list[Item] = [(off, ev) for off, ev in c.log()]
    items += list(extra.items())
    return sorted(items, key=lambda item: item[0] or 0)


def void(c: Chain, *offsets: int, by: str = ADMIN, forced: bool = False) -> GovEvent:
    return c.append("OffsetVoided", by, {"offsets": list(offsets), "forced": forced}, reason="junk")


def test_a_junk_record_stops_the_log_until_an_admin_voids_it() -> None:
    c = chain()  # events at 0, 2, 4
    bad = {5: junk(5)}
    reg, found = replay(log_of(c, bad))
    assert [(f.offset, f.kind) for f in found] == [(5, "undecodable")]
    ev = void(c, 5)  # at offset 6, linked on event #2
    reg, found = replay(log_of(c, bad))
    assert found == []
    assert (reg.head_sequence, reg.offset, reg.voided) == (ev.sequence, 6, {5: ev.sequence})
    c.append("PolicyChanged", ADMIN, {"policy": {"production_approvals": 2}})  # the log goes on
    reg, found = replay(log_of(c, bad))
    assert found == [] and reg.policy["production_approvals"] == 2
    # folding the tail onto an earlier state reaches the same registry
    head, _ = replay(log_of(c, bad)[:3])
    assert replay(log_of(c, bad)[3:], start=head)[0] == reg


def test_a_copied_event_is_voided_the_same_way() -> None:
    c = chain()
    copy = {5: c.events[1]}  # a valid, signed event, copied to the end by a client of the broker
    assert [(f.offset, f.kind) for f in replay(log_of(c, copy))[1]] == [(5, "inserted")]
    void(c, 5)
    assert replay(log_of(c, copy))[1] == []


def test_a_void_skips_only_the_offsets_it_names() -> None:
    c = chain()
    ev = void(c, 5)  # at offset 6; then another junk record comes
    reg, found = replay(log_of(c, {5: junk(5), 7: junk(7)}))
    assert [(f.offset, f.kind) for f in found] == [(7, "undecodable")]
    assert (reg.head_sequence, reg.voided) == (ev.sequence, {5: ev.sequence})  # stopped before what it did not name
    # and a void whose own place the projection cannot reach (a record it does not name stands before it) voids
    # nothing: it cannot be verified
    early: list[Item] = [(0, c.events[0]), (2, c.events[1]), (4, c.events[2]), (5, junk(5)), (6, junk(6)), (7, ev)]
    assert [(f.offset, f.kind) for f in replay(early)[1]][:2] == [(5, "undecodable"), (6, "undecodable")]


def test_a_void_that_is_not_an_admins_voids_nothing() -> None:
    c = chain()
    bad = {5: junk(5)}
    void(c, 5, by="alice")  # an approver: the rules refuse its void
    reg, found = replay(log_of(c, bad))
    assert [(f.offset, f.kind) for f in found] == [(5, "undecodable")]
    assert (reg.head_sequence, reg.voided) == (2, {})
    assert "needs role admin" in str(replay(log_of(c, {}))[1][0])  # without the junk, the void itself is refused


def test_a_forged_void_voids_nothing() -> None:
    c = chain()
    bad = {5: junk(5)}
    ev = void(c, 5)
    c.events[-1] = replace(ev, signature=c.events[1].signature)
    assert replay(log_of(c, bad))[1][0].offset == 5


def test_an_unforced_void_of_a_valid_event_does_not_stand_a_forced_one_does() -> None:
    for forced, stands in ((False, False), (True, True)):
        c = chain()
        last = c.events.pop()  # alice's enrolment, at offset 4 ...
        ev = void(c, 4, forced=forced)  # ... voided by an event linked on #1 (at offset 4 in c: move it to 6)
        items: list[Item] = [(0, c.events[0]), (2, c.events[1]), (4, last), (6, ev)]
        reg, found = replay(items)
        if stands:
            assert found == [] and "alice" not in reg.actors and reg.voided == {4: ev.sequence}
        else:
            assert [(f.offset, f.kind) for f in found] == [(6, "inserted")] and "alice" in reg.actors


def test_plan_void_says_what_a_void_would_do() -> None:
    c = chain()
    items = log_of(c, {5: junk(5), 7: junk(7)})
    reg, found, taken = plan_void(items, [5])
    assert (reg.head_sequence, [(f.offset, f.kind) for f in found], taken) == (2, [(7, "undecodable")], [])
    reg, found, taken = plan_void(items, [5, 7])
    assert (reg.head_sequence, found, taken) == (2, [], [])
    assert plan_void(items, [4, 5, 7])[2] == [4]  # alice's enrolment is a decision of the chain
