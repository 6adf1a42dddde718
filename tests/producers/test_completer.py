"""The completer thread: groups waiting prompts into one embedding call, hands each group its own vectors in order,
and reports a failure to its owner."""

from __future__ import annotations

import threading

import pytest

from evostream.core.errors import DeliveryError
from evostream.producers.completer import Completer, CompleterError


class GatedEmbed:
    """An embedding of len(text) that holds its first call until released, and records every call's prompts."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, prompts: list[str]) -> list[list[float]]:
        self.calls.append(list(prompts))
        self.entered.set()
        assert self.release.wait(10)
        return [[float(len(p)), float(i)] for i, p in enumerate(prompts)]


def test_groups_waiting_jobs_into_one_call_and_hands_each_its_slice() -> None:
    embed = GatedEmbed()
    got: list[tuple[str, list[list[float]]]] = []
    c = Completer(embed)
    c.submit(["a"], lambda v: got.append(("first", v)))
    assert embed.entered.wait(5)  # the thread is inside the first call; the next three queue up behind it
    c.submit(["bb", "ccc"], lambda v: got.append(("second", v)))
    c.submit(["dddd"], lambda v: got.append(("third", v)))
    c.submit(["eeeee", "f"], lambda v: got.append(("fourth", v)))
    assert c.busy == 4
    embed.release.set()
    c.wait(5)
    assert c.busy == 0
    assert embed.calls == [["a"], ["bb", "ccc", "dddd", "eeeee", "f"]]
    assert got == [
        ("first", [[1.0, 0.0]]),
        ("second", [[2.0, 0.0], [3.0, 1.0]]),
        ("third", [[4.0, 2.0]]),
        ("fourth", [[5.0, 3.0], [1.0, 4.0]]),
    ]
    c.close()


def test_a_group_never_exceeds_max_group_unless_one_job_is_larger() -> None:
    embed = GatedEmbed()
    c = Completer(embed, max_group=3)
    c.submit(["x"], lambda v: None)
    assert embed.entered.wait(5)
    for prompts in (["a", "b"], ["c"], ["d", "e", "f", "g"], ["h"]):
        c.submit(prompts, lambda v: None)
    embed.release.set()
    c.wait(5)
    assert embed.calls == [["x"], ["a", "b", "c"], ["d", "e", "f", "g"], ["h"]]
    c.close()


def test_an_embedding_failure_reaches_the_owner_and_stops_further_work() -> None:
    def broken(prompts: list[str]) -> list[list[float]]:
        raise RuntimeError("out of memory")

    c = Completer(broken)
    handed: list[object] = []
    c.submit(["a"], handed.append)
    with pytest.raises(CompleterError, match="out of memory") as info:
        c.wait(5)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(CompleterError):
        c.submit(["b"], handed.append)
    assert handed == []
    c.close()


def test_the_projects_own_error_from_then_is_raised_as_it_is() -> None:
    def then(vectors: list[list[float]]) -> None:
        raise DeliveryError("broker gone")

    c = Completer(lambda prompts: [[0.0] for _ in prompts])
    c.submit(["a"], then)
    with pytest.raises(DeliveryError, match="broker gone"):
        c.wait(5)
    c.close()


def test_wait_gives_up_after_its_timeout_and_close_finishes_what_was_submitted() -> None:
    embed = GatedEmbed()
    c = Completer(embed)
    got: list[list[list[float]]] = []
    c.submit(["a", "b"], got.append)
    assert embed.entered.wait(5)
    with pytest.raises(CompleterError, match="1 groups of requests not completed"):
        c.wait(0.05)
    embed.release.set()
    c.close(5)
    assert got == [[[1.0, 0.0], [1.0, 1.0]]]
    with pytest.raises(CompleterError, match="closed"):
        c.submit(["c"], got.append)


def test_submit_blocks_once_max_pending_prompts_wait_and_resumes_when_they_are_done() -> None:
    embed = GatedEmbed()
    c = Completer(embed, max_pending=3)
    c.submit(["a", "b"], lambda v: None)
    assert embed.entered.wait(5)
    c.submit(["c"], lambda v: None)  # 3 pending now: the next submit must wait
    third = threading.Event()

    def submit_third() -> None:
        c.submit(["d"], lambda v: None)
        third.set()

    t = threading.Thread(target=submit_third)
    t.start()
    assert not third.wait(0.3), "submit did not block with max_pending prompts waiting"
    embed.release.set()
    assert third.wait(5), "submit stayed blocked after the waiting prompts were done"
    t.join(5)
    c.wait(5)
    assert embed.calls == [["a", "b"], ["c"], ["d"]] or embed.calls == [["a", "b"], ["c", "d"]]
    c.close()
