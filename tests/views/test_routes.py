"""The routing ledger: a request's decisions in order, totals per route, tenant, stage and target, and the cost paid
against always the reference, from the decisions and the Completions they point at."""

from __future__ import annotations

import random
import uuid

import pytest

from evostream.core.clock import now_us
from evostream.schemas.catalog import COMPLETIONS, ROUTES
from evostream.views.routes import RouteLedger, decision_line, fold, read_ledger, route_doc
from tests.views.route_log import REF, SELF, TABLE, publish, route_log

T0 = 1_795_000_000_000_000
ONE = TABLE.cost(REF, 100, 20)
"""What one request's answer (100 prompt, 20 output tokens) costs at the reference's price."""


def test_a_requests_decisions_come_in_the_order_taken_whatever_the_order_read() -> None:
    log = route_log("r", T0)
    ledger = fold(reversed(log.decisions), reversed(log.completions))
    r = ledger.request(log.rid(2))
    assert r is not None
    assert [d["stage"] for d in r.decisions] == ["PROMPT", "GENERATION"]
    assert r.escalated and r.chosen == "reference"
    assert [c["trace_id"] for c in r.partials] == [log.tid(2, "p")]
    assert r.final is not None and r.final["trace_id"] == log.tid(2) and r.final["model_version"] == REF
    doc = route_doc(r)
    assert doc["partial_traces"] == [log.tid(2, "p")] and doc["final_trace"] == log.tid(2)
    assert "GENERATION at step 5: reference (tiny-b), score 0.620 vs gate 0.400, level 3" in decision_line(
        r.decisions[1]
    )


def test_a_completion_read_before_its_decision_waits_for_it_and_a_repeat_counts_once() -> None:
    log = route_log("r", T0)
    ledger = RouteLedger()
    for c in log.completions:
        ledger.add(COMPLETIONS, c)
    for d in [*log.decisions, *log.decisions]:
        ledger.add(ROUTES, d)
    ledger.add(COMPLETIONS, log.completions[0])
    r1 = ledger.request(log.rid(1))
    assert r1 is not None and len(r1.decisions) == 1 and len(r1.completions) == 1


def test_a_shadow_answer_is_no_answer_of_the_route() -> None:
    """A rollout's candidate answering a mirrored copy of a request leaves a SHADOW Completion of the same request:
    it is neither the request's final answer nor paid by it."""
    log = route_log("r", T0)
    final = log.completions[0]
    shadow = {**final, "trace_id": "shadow-1", "model_version": "cand@1", "role": "SHADOW", "cost_usd": 9.0}
    shadow["completed_at_us"] = int(final["completed_at_us"]) + 1  # the latest Completion of the request
    r = fold(log.decisions, [*log.completions, shadow]).request(log.rid(1))
    assert r is not None and r.final is not None and r.final["trace_id"] == final["trace_id"]
    assert [c["trace_id"] for c in r.completions] == [final["trace_id"]] and r.paid_usd < 9.0


def test_savings_price_every_answer_at_the_reference_and_count_each_way_through() -> None:
    log = route_log("r", T0)
    items = [(ROUTES, d) for d in log.decisions] + [(COMPLETIONS, c) for c in log.completions]
    random.Random(7).shuffle(items)
    ledger = RouteLedger()
    for topic, rec in items:
        ledger.add(topic, rec)
    s = ledger.savings(TABLE)
    t = s.total
    assert (t.requests, t.self_answered, t.reference_answered, t.escalated, t.cache_hits, t.refusals) == (
        5,
        1,
        2,
        1,
        1,
        1,
    )
    assert t.self_share == pytest.approx(1 / 3)
    paid = TABLE.cost(SELF, 100, 20) + TABLE.cost(SELF, 100, 5) + 2 * ONE  # self, partial + reference, reference
    assert t.paid_usd == pytest.approx(paid)
    assert t.reference_usd == pytest.approx(4 * ONE)  # the refusal costs nothing either way
    assert t.saved_usd == pytest.approx(4 * ONE - paid)
    acme, globex = s.by_tenant["acme"], s.by_tenant["globex"]  # odd requests are acme's
    assert (acme.self_answered, acme.reference_answered, acme.refusals, acme.cache_hits) == (1, 1, 1, 0)
    assert (globex.reference_answered, globex.escalated, globex.cache_hits) == (1, 1, 1)
    assert s.by_route["r"].doc() == t.doc() and not s.unpriced
    counts = ledger.decision_counts()
    assert counts[("r", "globex", "GENERATION", "reference")] == 1
    assert counts[("r", "acme", "PROMPT", "self")] == 1 and sum(counts.values()) == 6


def test_a_range_keeps_the_requests_first_decided_in_it_and_a_pending_one_costs_nothing_yet() -> None:
    log = route_log("r", T0)
    ledger = fold(log.decisions, log.completions[:-1])  # the cache hit's Completion not read yet
    s = ledger.savings(TABLE, since_us=T0 + 2000, until_us=T0 + 5000)  # requests 2, 3 and 4
    assert (s.total.requests, s.total.pending, s.total.refusals, s.total.self_answered) == (3, 1, 0, 0)
    assert s.total.reference_usd == pytest.approx(2 * ONE)
    assert [r.request_id for r in ledger.requests(T0 + 4500)] == [log.rid(5)]
    assert ledger.decision_counts(T0 + 2400, T0 + 2600) == {("r", "globex", "GENERATION", "reference"): 1}


def test_an_unpriced_reference_is_said() -> None:
    from evostream.routing.prices import PriceTable

    s = fold(route_log("r", T0).decisions, route_log("r", T0).completions).savings(PriceTable())
    assert s.unpriced == {REF} and s.total.reference_usd == 0.0


def test_the_ledger_reads_back_what_the_producer_wrote(kafka: str) -> None:
    route = f"ledger-{uuid.uuid4().hex[:8]}"
    log = route_log(route, now_us())
    publish(kafka, log)
    ledger = read_ledger(kafka, keep=lambda d: d["route"] == route)
    assert [r.request_id for r in ledger.requests()] == [log.rid(n) for n in range(1, 6)]
    r2 = ledger.request(log.rid(2))
    assert r2 is not None and len(r2.completions) == 2 and r2.final is not None
    s = ledger.savings(TABLE)
    assert s.total.self_share == pytest.approx(1 / 3) and s.total.reference_usd == pytest.approx(4 * ONE)


def test_a_bounded_ledger_drops_its_oldest_requests_and_can_take_them_again() -> None:
    log = route_log("r", T0)
    ledger = fold(log.decisions, log.completions, max_requests=2)
    assert [r.request_id for r in ledger.requests()] == [log.rid(4), log.rid(5)]
    ledger.add(ROUTES, log.decisions[0])
    r1 = ledger.request(log.rid(1))
    assert r1 is not None and len(r1.decisions) == 1
