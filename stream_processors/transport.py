"""Faust's Kafka transport with a cheaper hand-over of each fetched message to the agents' queues.

Faust's fetcher loop (``Consumer._drain_messages``) hands every message to the conductor through
``Service.wait_first(callback(message), suspend_flow.wait())``: four tasks (the callback, the suspend event, the
service's stopped and crashed events) and an ``asyncio.wait`` per message, so that a rebalance, which suspends the
flow, can abandon a callback that waits (for flow control, for room in a full queue, for the producer's buffer).
That machinery, not Kafka, set the framework's ceiling: a no-op agent stayed far below the aiokafka consumer under it
(``python -m bench.faust_floor``; see docs/benchmarks.md#fausts-ceiling).

Almost every callback completes without waiting: its message goes straight into the agents' queues. So the loop
here starts the callback inline and runs it to its first suspension point; only a callback that must wait goes to
``wait_first`` with the suspend event, exactly as Faust does it, and is abandoned the same way when the flow is
suspended. The rest of the loop (read offsets, gaps for acked topics, commits every ``broker_commit_every``) is
Faust's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as driver

from evostream.core.bus import security

YIELD_EVERY = 1000
"""Messages handed over between two yields to the event loop (Faust: 100)."""


async def _resume(coro: Coroutine[Any, Any, Any], waiting: Any) -> Any:
    """Go on with ``coro``, which was started inline and now waits on ``waiting`` (what it yielded): as a task would
    run it, with its own cancellation passed in."""
    try:
        while True:
            if isinstance(waiting, asyncio.Future):
                try:
                    await asyncio.wait([waiting])
                except asyncio.CancelledError:
                    waiting.cancel()
                    raise
            else:  # a bare yield (asyncio.sleep(0))
                await asyncio.sleep(0)
            try:
                waiting = coro.send(None)
            except StopIteration as done:
                return done.value
    except asyncio.CancelledError:
        with contextlib.suppress(asyncio.CancelledError, StopIteration):
            coro.throw(asyncio.CancelledError())
        raise
    finally:
        coro.close()


def start_inline(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run ``coro`` until it first waits: (True, its result) when it finished, else (False, what it waits on)."""
    try:
        return False, coro.send(None)
    except StopIteration as done:
        return True, done.value


class Consumer(driver.Consumer):
    """The aiokafka consumer with the inline hand-over (see the module docstring)."""

    async def _deliver(self, message: Any) -> None:
        coro = self.callback(message)
        if not asyncio.iscoroutine(coro):  # not Faust's conductor: its way
            await self.wait_first(coro, self.suspend_flow.wait())
            return
        done, waiting = start_inline(coro)
        if not done:  # it waits: as Faust does, abandoned when a rebalance suspends the flow
            await self.wait_first(_resume(coro, waiting), self.suspend_flow.wait())

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - the fetcher's thread
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
        since_yield = 0
        try:
            while not (stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                batch = self.getmany(timeout=1.0)
                await self.sleep(0)  # getmany can return at once, again and again: let the loop breathe
                if self.should_stop:
                    continue
                async for tp, message in batch:
                    since_yield += 1
                    if since_yield >= YIELD_EVERY:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset, last = message.offset, read_offset[tp]
                    if last is not None and offset < last:
                        continue  # read again after a seek: Faust drops it too
                    if last and offset - last > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, last + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    await self._deliver(message)
                    read_offset[tp] = offset
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


class Producer(driver.Producer):
    """The aiokafka producer, tracking the metadata of every topic it sends to.

    aiokafka's client fetches metadata for every topic while it tracks none, and only for the tracked ones once it
    tracks any (``add_topic``), replacing what it knew. A send to a topic its metadata held already does not track
    it: once any other topic was tracked (a changelog's, a topic first sent to later), that topic fell out of the
    metadata, its partitions had no leader, and its batches waited forever, and with them every acknowledgement,
    flush and commit after them (seen: a worker's sends to its internal deltas topic). Each send tracks its topic
    first (a finished future when it is tracked already)."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        await self._ensure_producer().client.add_topic(topic)
        return await super().send(topic, key, value, partition, timestamp, headers, transactional_id=transactional_id)


class Transport(driver.Transport):
    Consumer = Consumer
    Producer = Producer


class FaustHandoverTransport(driver.Transport):
    """Faust's own consumer loop (``EVOSTREAM_PROCESSORS_HANDOVER=faust``), with the producer above."""

    Producer = Producer


class App(faust.App):
    """A Faust app on this transport: the inline hand-over unless ``handover="faust"``, and the producer above."""

    def __init__(self, *args: Any, handover: str = "inline", **kwargs: Any) -> None:
        self._handover = handover
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Any:
        kind = Transport if self._handover == "inline" else FaustHandoverTransport
        return kind(self.conf.broker_consumer, self)


def sasl_credentials(bootstrap: str, role: str | None = None) -> faust.SASLCredentials | None:
    """Faust's login to ``bootstrap`` as ``role``'s principal (``core/bus/security.py``); None for a plain broker."""
    login = security.credentials(bootstrap, role)
    if login is None:
        return None
    return faust.SASLCredentials(username=login.username, password=login.password, mechanism=login.mechanism)
