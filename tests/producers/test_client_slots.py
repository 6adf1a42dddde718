"""The request client's bound on requests in flight, with no service running: slots free only by giving up."""

from __future__ import annotations

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
