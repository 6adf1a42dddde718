from __future__ import annotations

import pytest

from evostream.routing.budget import DAY_S, Budgets, Estimate, LimitsError, LimitsTable

NOON = 20_000 * DAY_S + DAY_S / 2  # a UTC noon


def table(raw: str) -> LimitsTable:
    return LimitsTable.from_bytes(raw.encode())


def test_the_rate_limit_lets_a_burst_in_then_says_when_to_retry() -> None:
    budgets = Budgets(table('{"acme": {"requests_per_s": 2, "burst": 3}}'))
    assert [budgets.admit("acme", NOON) for _ in range(3)] == [None, None, None]
    refusal = budgets.admit("acme", NOON)
    assert refusal is not None and refusal.limit == "requests_per_s"
    assert refusal.retry_after_s == pytest.approx(0.5) and refusal.retry_after_header == 1
    assert budgets.admit("acme", NOON + 0.5) is None  # one token refilled
    assert budgets.admit("other", NOON) is None  # not named, no '*': no limits


def test_star_gives_every_unnamed_tenant_its_own_limits() -> None:
    budgets = Budgets(table('{"*": {"requests_per_s": 1, "burst": 1}, "vip": {}}'))
    assert budgets.admit("a", NOON) is None and budgets.admit("b", NOON) is None
    assert budgets.admit("a", NOON) is not None
    assert all(budgets.admit("vip", NOON) is None for _ in range(50))


def test_a_spent_token_budget_refuses_until_utc_midnight() -> None:
    budgets = Budgets(table('{"acme": {"tokens_per_day": 100}}'))
    assert budgets.admit("acme", NOON) is None
    budgets.charge("acme", 60, 0.0, NOON)
    assert budgets.admit("acme", NOON) is None
    budgets.charge("acme", 40, 0.0, NOON + 1)
    refusal = budgets.admit("acme", NOON + 2)
    assert refusal is not None and refusal.limit == "tokens_per_day" and "100 of its 100" in refusal.reason
    assert refusal.retry_after_s == pytest.approx(DAY_S / 2 - 2)
    assert budgets.admit("acme", NOON + DAY_S / 2) is None  # a new UTC day
    assert budgets.used("acme", NOON + DAY_S / 2) == (0, 0.0)


def test_a_spent_cost_budget_refuses_without_taking_from_the_bucket() -> None:
    budgets = Budgets(table('{"acme": {"cost_per_day_usd": 0.01, "requests_per_s": 1, "burst": 1}}'))
    budgets.charge("acme", 10, 0.01, NOON)
    refusal = budgets.admit("acme", NOON)
    assert refusal is not None and refusal.limit == "cost_per_day_usd"
    tokens, cost = budgets.used("acme", NOON)
    assert tokens == 10 and cost == pytest.approx(0.01)


def test_requests_in_flight_hold_their_estimates_so_together_they_cannot_pass_the_budget() -> None:
    """Before, a budget was charged only as answers came: every request admitted before the first answer was let in
    (ten at once against a budget for two)."""
    budgets = Budgets(table('{"acme": {"tokens_per_day": 100}}'))
    let_in = [budgets.admit("acme", NOON, f"r{i}", Estimate(40)) for i in range(10)]
    assert let_in[:2] == [None, None] and all(r is not None for r in let_in[2:])
    refusal = let_in[2]
    assert refusal is not None and refusal.limit == "tokens_per_day" and refusal.retry_after_s == 1.0
    assert "80 more are held" in refusal.reason and budgets.held("acme") == (80, 0.0)
    assert budgets.settle("r0", "t0", 10, 0.0, final=True, now=NOON + 1)  # a short answer gives the rest back
    assert budgets.used("acme", NOON + 1) == (10, 0.0) and budgets.held("acme") == (40, 0.0)
    assert budgets.admit("acme", NOON + 1, "r10", Estimate(40)) is None
    assert budgets.admit("acme", NOON + 1, "r11", Estimate(40)) is not None


def test_an_answer_is_charged_once_whether_or_not_anyone_waits_and_an_escalated_partial_too() -> None:
    budgets = Budgets(table('{"acme": {"tokens_per_day": 1000, "cost_per_day_usd": 1.0}}'))
    assert budgets.admit("acme", NOON, "r", Estimate(100, 0.1)) is None
    assert budgets.settle("r", "partial", 30, 0.001, final=False, now=NOON)  # the self model's ESCALATED partial
    assert budgets.holds("r")
    assert budgets.settle("r", "final", 50, 0.05, final=True, now=NOON)
    assert budgets.settle("r", "final", 50, 0.05, final=True, now=NOON)  # seen twice (the caller, the tail): once
    tokens, cost = budgets.used("acme", NOON)
    assert tokens == 80 and cost == pytest.approx(0.051)
    assert not budgets.holds("r") and budgets.held("acme") == (0, 0.0)
    assert not budgets.settle("unknown", "t", 5, 0.0, final=True, now=NOON)


def test_a_spent_budget_refuses_an_estimate_that_does_not_fit_until_utc_midnight() -> None:
    budgets = Budgets(table('{"acme": {"tokens_per_day": 100}}'))
    budgets.charge("acme", 70, 0.0, NOON)
    assert budgets.admit("acme", NOON, "a", Estimate(30)) is None
    budgets.settle("a", "t", 30, 0.0, final=True, now=NOON)
    refusal = budgets.admit("acme", NOON, "b", Estimate(1))
    assert refusal is not None and refusal.retry_after_s == pytest.approx(DAY_S / 2)


def test_a_budget_smaller_than_one_request_lets_one_in_a_day() -> None:
    budgets = Budgets(table('{"acme": {"tokens_per_day": 1}}'))
    assert budgets.admit("acme", NOON, "a", Estimate(50)) is None
    assert budgets.admit("acme", NOON, "b", Estimate(50)) is not None  # held: the first is in flight
    budgets.settle("a", "t", 12, 0.0, final=True, now=NOON + 1)
    refusal = budgets.admit("acme", NOON + 1, "c", Estimate(50))
    assert refusal is not None and refusal.retry_after_s == pytest.approx(DAY_S / 2 - 1)


def test_a_hold_no_answer_settles_is_given_back_and_a_late_answer_still_charged() -> None:
    budgets = Budgets(table('{"acme": {"tokens_per_day": 100}}'), hold_s=60)
    assert budgets.admit("acme", NOON, "lost", Estimate(90)) is None
    assert budgets.admit("acme", NOON + 59, "x", Estimate(20)) is not None
    assert budgets.admit("acme", NOON + 60, "y", Estimate(10)) is None  # the lost one's hold is given back
    assert budgets.held("acme") == (10, 0.0)
    assert budgets.settle("lost", "t", 40, 0.0, final=True, now=NOON + 70)  # its answer came after all
    assert budgets.used("acme", NOON + 70) == (40, 0.0) and budgets.held("acme") == (10, 0.0)


def test_a_cache_hit_gives_its_estimate_back_uncharged() -> None:
    budgets = Budgets(table('{"acme": {"tokens_per_day": 100}}'))
    assert budgets.admit("acme", NOON, "hit", Estimate(90)) is None
    budgets.release("hit")
    assert budgets.held("acme") == (0, 0.0) and budgets.used("acme", NOON) == (0, 0.0)
    assert budgets.admit("acme", NOON, "next", Estimate(90)) is None


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("{", "not JSON"),
        ("[]", "JSON object"),
        ('{"a": 3}', "expected an object"),
        ('{"a": {"tokens_per_day": -1}}', "tokens_per_day is a finite number"),
        ('{"a": {"tokens_per_day": 1.5}}', "whole number"),
        ('{"a": {"requests_per_s": 0}}', "requests_per_s is positive"),
        ('{"a": {"burst": 2}}', "burst needs requests_per_s"),
        ('{"a": {"requests_per_s": 1, "burst": 0}}', "burst is at least 1"),
        ('{"a": {"tokens_per_dya": 5}}', "unknown field"),
        ('{"a": {"cost_per_day_usd": "5"}}', "cost_per_day_usd"),
    ],
)
def test_a_bad_limits_file_is_refused_with_the_reason(raw: str, says: str) -> None:
    with pytest.raises(LimitsError, match=says):
        LimitsTable.from_bytes(raw.encode(), "limits.json")
