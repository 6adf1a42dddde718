"""The supervision rules of ``evostream up``: back-off, the states a component goes through, and health."""

from __future__ import annotations

from evostream.wiring.supervise import (
    Backoff,
    Component,
    ComponentState,
    Observed,
    due,
    exited,
    judge,
    start_failed,
    started,
    stopped,
)

POLICY = Backoff()
SERVE = Component("serve", ("serve", "--governed", "m"), ("evostream-inference",))
API = Component("api", ("api",), url="http://127.0.0.1:8000/health")


def test_the_back_off_doubles_from_one_second_to_a_minute() -> None:
    assert [POLICY.delay(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert POLICY.delay(10_000) == 60  # no overflow however long it crashes


def test_a_crash_after_a_minute_up_starts_the_back_off_over() -> None:
    s = ComponentState("serve")
    t = 1000.0
    delays = []
    for ran in (0.5, 0.5, 0.5, 0.5, 60.0, 0.5):  # four quick crashes, a long run, a quick crash
        s = started(s, 1, t)
        t += ran
        s = exited(s, 1, t, POLICY)
        delays.append(s.next_start_at - t if s.next_start_at is not None else None)
        t = s.next_start_at or t
    assert delays == [1, 2, 4, 8, 1, 2]


def test_restarts_count_the_starts_after_the_first() -> None:
    s = started(ComponentState("serve"), 10, 0.0)
    assert (s.state, s.pid, s.restarts, s.starts) == ("up", 10, 0, 1)
    s = exited(s, -9, 5.0, POLICY)
    assert (s.state, s.pid, s.last_exit_code, s.last_exit_at) == ("restarting", None, -9, 5.0)
    assert not due(s, 5.5) and due(s, 6.0)
    s = started(s, 11, 6.0)
    assert (s.state, s.pid, s.restarts, s.starts, s.started_at) == ("up", 11, 1, 2, 6.0)
    assert stopped(s, 0, 9.0).state == "stopped"


def test_a_command_that_cannot_start_backs_off_like_a_crash() -> None:
    s = start_failed(ComponentState("serve"), 3.0, POLICY)
    assert (s.state, s.last_exit_code, s.next_start_at) == ("restarting", 127, 4.0)
    s = start_failed(s, 4.0, POLICY)
    assert s.next_start_at == 6.0


def test_the_state_file_round_trips() -> None:
    s = exited(started(ComponentState("serve", log="/x/serve.log"), 10, 1.0), 2, 3.0, POLICY)
    assert ComponentState.from_json({**s.to_json(), "added_later": 1}) == s
    assert Component.from_json(SERVE.to_json()) == SERVE


def test_a_component_is_healthy_when_it_runs_and_its_groups_have_members() -> None:
    up = started(ComponentState("serve"), 10, 0.0)
    assert judge(SERVE, up, Observed(True, {"evostream-inference": 1}), 5.0).healthy
    v = judge(SERVE, up, Observed(True, {"evostream-inference": 0}), 5.0)
    assert (v.state, v.healthy) == ("up", False) and "evostream-inference" in v.reason
    v = judge(SERVE, up, Observed(True, None, broker_reachable=False), 5.0)
    assert (v.healthy, v.reason) == (False, "the broker does not answer")
    v = judge(SERVE, up, Observed(False, {"evostream-inference": 1}), 5.0)
    assert (v.state, v.healthy) == ("down", False)  # the members are someone else's (or a dead one's, until it expires)


def test_a_restarting_component_is_unhealthy_and_says_when_it_comes_back() -> None:
    s = exited(started(ComponentState("serve"), 10, 0.0), -9, 5.0, POLICY)
    v = judge(SERVE, s, Observed(False), 5.2)
    assert (v.state, v.healthy) == ("restarting", False)
    assert v.reason == "exited with code -9 (signal 9); next start in 1 s"
    assert judge(SERVE, stopped(s, 0, 6.0), Observed(False), 7.0).state == "stopped"


def test_without_a_supervisor_the_process_found_decides() -> None:
    assert judge(SERVE, None, Observed(True, {"evostream-inference": 2}), 0.0).healthy
    v = judge(SERVE, None, Observed(False, {"evostream-inference": 2}), 0.0)
    assert (v.state, v.healthy, v.reason) == ("down", False, "no process runs it")


def test_the_api_is_healthy_when_its_health_answers_even_asking_for_a_key() -> None:
    up = started(ComponentState("api"), 10, 0.0)
    assert judge(API, up, Observed(True, http_status=200), 1.0).healthy
    assert judge(API, up, Observed(True, http_status=401), 1.0).healthy
    assert not judge(API, up, Observed(True, http_status=503), 1.0).healthy
    v = judge(API, up, Observed(True, http_status=None), 1.0)
    assert (v.healthy, v.reason) == (False, "does not answer at http://127.0.0.1:8000/health")


def test_the_broker_is_healthy_when_it_answers() -> None:
    broker = Component("broker")
    assert judge(broker, None, Observed(True, broker_reachable=True), 0.0).healthy
    v = judge(broker, started(ComponentState("broker"), 5, 0.0), Observed(True, broker_reachable=False), 1.0)
    assert (v.state, v.healthy) == ("up", False)
