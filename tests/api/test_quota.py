"""Per-client quotas, on a clock the test moves: a burst, then the rate; a cap in flight; the seconds to wait."""

from __future__ import annotations

import pytest

from evostream.api.errors import TooManyRequestsError
from evostream.api.quota import ClientQuota


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_client_gets_its_burst_then_its_rate_and_is_told_when_to_retry() -> None:
    clock = Clock()
    q = ClientQuota("reads", rate_per_s=0.5, burst=3, clock=clock)
    for _ in range(3):
        q.take("a")
    with pytest.raises(TooManyRequestsError) as refused:
        q.take("a")
    assert refused.value.retry_after_s == 2  # one token at 0.5 a second
    q.take("b")  # another client is not held by the first one's use
    clock.now += 2.0
    q.take("a")
    with pytest.raises(TooManyRequestsError):
        q.take("a")


def test_requests_in_flight_are_capped_and_a_finished_one_frees_its_place() -> None:
    q = ClientQuota("requests", rate_per_s=1000, burst=1000, in_flight=2, clock=Clock())
    with q.holding("a"), q.holding("a"):
        assert q.waiting("a") == 2
        with pytest.raises(TooManyRequestsError, match="in flight"), q.holding("a"):
            pass
        assert q.waiting("a") == 2
    assert q.waiting("a") == 0
    with q.holding("a"):
        pass


def test_the_clients_remembered_are_bounded_but_one_in_flight_is_never_forgotten() -> None:
    q = ClientQuota("requests", rate_per_s=1, burst=1, in_flight=1, max_clients=10, clock=Clock())
    with q.holding("busy"):
        for n in range(100):
            q.take(f"c{n}")
            q.done(f"c{n}")
        assert q.waiting("busy") == 1
        assert len(q._clients) <= 11
