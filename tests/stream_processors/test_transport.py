"""The inline hand-over of fetched messages: a callback that does not wait runs to its end in place, one that waits
goes on as a task would run it, with its result, its exception and its cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream_processors.transport import _resume, start_inline


async def no_wait(out: list[str]) -> str:
    out.append("ran")
    return "done"


async def waits(out: list[str], gate: asyncio.Event, fail: bool = False) -> str:
    out.append("before")
    await asyncio.sleep(0)  # a bare yield
    await gate.wait()  # a future
    out.append("after")
    if fail:
        raise ValueError("the callback failed")
    return "done"


def test_a_callback_that_does_not_wait_finishes_inline() -> None:
    out: list[str] = []
    assert start_inline(no_wait(out)) == (True, "done") and out == ["ran"]


def test_a_callback_that_waits_goes_on_with_its_result() -> None:
    async def main() -> tuple[Any, list[str]]:
        out: list[str] = []
        gate = asyncio.Event()
        coro = waits(out, gate)
        done, waiting = start_inline(coro)
        assert not done and out == ["before"]
        task = asyncio.ensure_future(_resume(coro, waiting))
        await asyncio.sleep(0.01)
        assert out == ["before"]  # still waiting on the gate
        gate.set()
        return await task, out

    assert asyncio.run(main()) == ("done", ["before", "after"])


def test_its_exception_and_its_cancellation_reach_the_caller() -> None:
    async def failing() -> None:
        gate = asyncio.Event()
        coro = waits([], gate, fail=True)
        _, waiting = start_inline(coro)
        task = asyncio.ensure_future(_resume(coro, waiting))
        gate.set()
        await task

    with pytest.raises(ValueError, match="the callback failed"):
        asyncio.run(failing())

    async def cancelled() -> list[str]:
        out: list[str] = []
        gate = asyncio.Event()
        coro = waits(out, gate)
        _, waiting = start_inline(coro)
        task = asyncio.ensure_future(_resume(coro, waiting))
        await asyncio.sleep(0.01)
        task.cancel()  # what wait_first does to the callback when a rebalance suspends the flow
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        await asyncio.sleep(0.01)
        return out

    assert asyncio.run(cancelled()) == ["before"]  # abandoned: it never went on
