"""The processors benchmark's completion check: when have the agents accounted for every step."""

from __future__ import annotations

from bench.processors import Progress


def test_two_windows_that_begin_at_the_same_microsecond_are_both_counted() -> None:
    p = Progress()
    # window A (start 100) open with 200, then 380 steps; closed by its snapshot; window B also starts at 100
    p.events += [
        (1, "profile", 200, 100),
        (2, "profile", 380, 100),
        (3, "snapshot", 380, 100),
        (4, "profile", 1000, 100),
        (5, "snapshot", 1620, 100),
    ]
    assert p.done_at("profile", 2000) == 5
    assert p.done_at("profile", 1380) == 4  # A closed (380) + B open (1000)


def test_a_window_is_not_counted_twice_by_its_state_and_its_snapshot() -> None:
    p = Progress()
    p.events += [(1, "profile", 500, 100), (2, "snapshot", 500, 100), (3, "profile", 10, 200)]
    assert p.done_at("profile", 1000) is None
    assert p.done_at("profile", 510) == 3
    assert p.done_at("profile", 500) == 1  # the open window's state already held them


def test_drift_is_done_at_the_first_state_counting_every_completion() -> None:
    p = Progress()
    p.events += [(1, "drift", 100, 0), (2, "drift", 500, 0), (3, "drift", 500, 0)]
    assert p.done_at("drift", 500) == 2
    assert p.done_at("drift", 501) is None
