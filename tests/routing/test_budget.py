from __future__ import annotations

import pytest

from evostream.routing.budget import DAY_S, Budgets, LimitsError, LimitsTable

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
