"""Server-sent events: each record the live tail reads, pushed to the open streams that want it.

A stream subscribes to the tail; the tail's thread hands each record to the event loop, which queues it for the
stream. A client too slow to read loses the oldest records first, and is told how many (``event: dropped``); a
comment every 15 s keeps proxies from closing an idle stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from evostream.api.errors import BusyError
from evostream.api.state import ApiState
from evostream.schemas.catalog import ALERTS, COMPLETIONS, DRIFT, PROFILES, RISK, ROUTES, STEPS
from evostream.views.recent import Record, plain

EVENTS = {
    STEPS: "step",
    COMPLETIONS: "completion",
    RISK: "risk",
    ALERTS: "alert",
    DRIFT: "drift",
    PROFILES: "profile",
    ROUTES: "route",
}
"""The event name of each topic's records; any other topic's (the governance log's) is ``governance``."""
QUEUED = 2000
KEEP_ALIVE_S = 15.0


def sse(
    state: ApiState, request: Request, topics: Collection[str], keep: Callable[[str, Record], bool]
) -> StreamingResponse:
    """An event per record of ``topics`` that ``keep`` accepts, from now on (BusyError at the cap of open streams,
    or without a live view)."""
    tail = state.tail
    if tail is None:
        raise BusyError("this API runs without a live view: no streams")
    # admitted here, on the event loop with no await between the count's check and its increment: opens that
    # arrive together cannot all see room (counted inside the stream's generator, 60 opens against a cap of 5 left
    # 40 open, since none had started yet)
    if state.streams >= state.cfg.max_streams:
        raise BusyError(f"{state.cfg.max_streams} event streams are open already; try again later")
    state.streams += 1
    released = [False]

    def release() -> None:
        if not released[0]:
            released[0] = True
            state.streams -= 1

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Record]] = asyncio.Queue(maxsize=QUEUED)
    dropped = [0]

    def put(item: tuple[str, Record]) -> None:
        if queue.full():
            queue.get_nowait()
            dropped[0] += 1
        queue.put_nowait(item)

    def push(topic: str, rec: Record) -> None:
        if topic in topics and keep(topic, rec):
            loop.call_soon_threadsafe(put, (topic, rec))

    async def events() -> AsyncIterator[bytes]:
        unsubscribe = tail.subscribe(push)
        try:
            yield b": connected\n\n"
            while not await request.is_disconnected():
                try:
                    topic, rec = await asyncio.wait_for(queue.get(), KEEP_ALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if dropped[0]:
                    yield f"event: dropped\ndata: {dropped[0]}\n\n".encode()
                    dropped[0] = 0
                event = EVENTS.get(topic, "governance")
                doc = plain(rec, drop=("prompt_embedding", "signature", "payload_json"))
                yield f"event: {event}\ndata: {json.dumps(doc, default=str, allow_nan=False)}\n\n".encode()
        finally:
            unsubscribe()
            release()

    return Admitted(release, events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class Admitted(StreamingResponse):
    """A stream that holds one of the open streams' places until its answer ends, however it ends (a client gone
    before the first byte included: its generator then never runs, so its ``finally`` cannot give the place back)."""

    def __init__(self, release: Callable[[], None], content: AsyncIterator[bytes], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
