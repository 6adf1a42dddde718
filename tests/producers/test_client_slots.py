"""The request client's bound on requests in flight, with no service running: slots free only by giving up."""

from __future__ import annotations

import asyncio
import selectors
import time
from typing import Any

import pytest

from evostream.core.clock import now_us
from evostream.producers.client import BadRequestError, InferenceClient, ReplyTimeoutError

pytestmark = pytest.mark.integration


def test_in_flight_is_bounded_and_a_reply_given_up_frees_its_slot(kafka: str) -> None:
    """No service runs while this module does: a free slot comes only from giving up. (A service of a later module
    may serve these requests; nobody waits for those answers.)"""
    with InferenceClient(kafka, max_in_flight=2) as client:
        first = client.submit("reverse: slot one", max_new_tokens=1, request_id=f"slot-a-{now_us()}")
        second = client.submit("reverse: slot two", max_new_tokens=1, request_id=f"slot-b-{now_us()}")
        assert not first.done() and not second.done(), "a service answered: this module must run with none"
        with pytest.raises(ReplyTimeoutError, match=r"^no free slot among 2 requests in flight within 0.3 s$"):
            client.submit("reverse: slot three", max_new_tokens=1, slot_timeout_s=0.3)
        with pytest.raises(ReplyTimeoutError, match="no completion for request slot-a-"):
            first.result(timeout_s=0.01)
        third = client.submit("reverse: slot three", max_new_tokens=1, slot_timeout_s=0.3)  # the freed slot
        assert third.request_id != first.request_id
        with pytest.raises(BadRequestError, match="already in flight"):
            client.submit("reverse: again", request_id=second.request_id, slot_timeout_s=0.3)


def test_cancelling_an_awaiting_task_cancels_it_and_frees_the_slot(kafka: str) -> None:
    """An outer timeout (or TaskGroup) cancels the task awaiting a reply: the task ends cancelled, as asyncio code
    expects, not with a ReplyTimeoutError, and the request is given up (its slot free)."""
    import asyncio

    async def main(client: InferenceClient) -> None:
        task = asyncio.ensure_future(client.ainfer("reverse: never answered", timeout_s=60, max_new_tokens=1))
        await asyncio.sleep(0.5)
        assert client.in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.in_flight == 0

    with InferenceClient(kafka, max_in_flight=1) as client:
        asyncio.run(main(client))
        client.submit("reverse: the freed slot", max_new_tokens=1, slot_timeout_s=0.3)  # would time out if held


class CountingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The loop's selector, counting its wake-ups (one select per turn of the loop)."""

    selects = 0

    def select(self, timeout: float | None = None) -> Any:
        self.selects += 1
        return super().select(timeout)


def test_200_coroutines_waiting_for_a_slot_do_not_wake_the_loop_until_one_is_freed(kafka: str) -> None:
    selector = CountingSelector()
    loop = asyncio.SelectorEventLoop(selector)

    async def main(client: InferenceClient) -> None:
        held = client.submit("reverse: the only slot", max_new_tokens=1, request_id=f"slot-held-{now_us()}")
        waiting = [asyncio.ensure_future(client.asubmit("reverse: waiting", max_new_tokens=1)) for _ in range(200)]
        await asyncio.sleep(0.2)  # all of them are waiting now
        before, started = selector.selects, time.monotonic()
        await asyncio.sleep(1.0)
        wakes = selector.selects - before
        assert wakes < 20, f"the loop woke {wakes} times in {time.monotonic() - started:.1f} s with 200 waiters"
        assert not any(t.done() for t in waiting)
        with pytest.raises(ReplyTimeoutError):
            held.result(timeout_s=0.01)  # given up: its slot goes to the first waiter, and only to it
        await asyncio.sleep(0.5)
        done = [t for t in waiting if t.done()]
        assert len(done) == 1 and done[0] is waiting[0], len(done)
        for t in waiting[1:]:
            t.cancel()
        await asyncio.gather(*waiting[1:], return_exceptions=True)
        with pytest.raises(ReplyTimeoutError):
            await done[0].result().aresult(timeout_s=0.01)
        await asyncio.wait_for(client.asubmit("reverse: the slot is back", max_new_tokens=1), 5)

    with InferenceClient(kafka, max_in_flight=1) as client:
        loop.run_until_complete(main(client))
    loop.close()
