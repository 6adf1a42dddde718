"""bench.cluster's accounting of numbered records: lost, redelivered and written-twice told apart."""

from __future__ import annotations

from bench.cluster import account


def test_every_number_read_once_is_clean() -> None:
    acc = account(3, [(0, 0, 0), (1, 1, 0), (2, 0, 1)])
    assert (acc.lost, acc.duplicates, acc.redelivered, acc.written_twice, acc.unknown) == ((), 0, 0, 0, ())


def test_a_missing_number_is_lost_and_a_stranger_is_unknown() -> None:
    acc = account(3, [(0, 0, 0), (2, 0, 1), (7, 2, 0)])
    assert acc.lost == (1,) and acc.unknown == (7,)


def test_a_duplicate_at_the_same_offset_is_a_redelivery_and_at_another_a_second_write() -> None:
    acc = account(2, [(0, 0, 0), (1, 0, 1), (0, 0, 0), (1, 0, 5), (1, 0, 1)])
    assert acc.duplicates == 3
    assert acc.redelivered == 2  # 0 at 0:0 again, 1 at 0:1 again
    assert acc.written_twice == 1  # 1 also at 0:5
    assert acc.lost == ()
