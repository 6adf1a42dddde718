"""The inline hand-over of fetched messages: a callback that does not wait runs to its end in place, one that waits
goes on as a task would run it, with its result, its exception and its cancellation."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import faust
import pytest

from evostream.schemas.catalog import DLQ, RISK
from evostream.stream_processors.transport import App, _resume, sasl_credentials, start_inline


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


@pytest.mark.integration
@pytest.mark.parametrize("ours", [True, False], ids=["evostream producer", "faust producer"])
def test_a_topic_sent_to_stays_in_the_producers_metadata_when_another_is_tracked(kafka: str, ours: bool) -> None:
    """aiokafka's refresh fetches every topic while it tracks none and only the tracked ones after: a topic the worker
    sent to while its metadata was known from such a refresh was not tracked, fell out when a changelog was tracked,
    and its batches never left (their acknowledgements never came). Our producer tracks each topic it sends to;
    Faust's own does not (the control)."""

    async def main() -> tuple[bool, bool]:
        cls = App if ours else faust.App
        app = cls(
            f"test-producer-{uuid.uuid4().hex[:8]}",
            broker=f"kafka://{kafka}",
            broker_credentials=sasl_credentials(kafka),
            store="memory://",
            web_enabled=False,
        )
        producer = app.producer
        await producer.start()
        try:
            client = producer._ensure_producer().client  # type: ignore[attr-defined]
            await client.force_metadata_update()  # a refresh while none is tracked: every topic's metadata
            ack = await producer.send(DLQ, b"k", b"v", None, None, None)
            await asyncio.wait_for(ack, 30)
            await client.add_topic(RISK)  # as the first write to a changelog does
            await client.force_metadata_update()
            return DLQ in client._topics, client.cluster.partitions_for_topic(DLQ) is not None
        finally:
            await producer.stop()

    tracked, known = asyncio.run(main())
    assert (tracked, known) == ((True, True) if ours else (False, False))
