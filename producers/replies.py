"""Replies routed to whoever waits for them: one long-lived reader of evo.completions per client.

``ReplyBook`` is the pure part (no Kafka): futures waiting by reply key, and replies that came for a key this client
published before anyone asked for it. ``ReplyReader`` is the I/O part: a thread that reads every completion written
from its start on and hands each to the book. A client that used to build a consumer per request, look offsets up
by time and scan every completion since then (O(requests^2)) now reads each completion once.

A routed request may get an ESCALATED partial answer before its answer, and a request mirrored to a rollout's
candidate gets the candidate's SHADOW answer beside production's (before it, as like as not: it has a trace, hence a
partition, of its own): readers skip both (``is_reply``) and wait for the request's answer.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

from evostream.core.bus.consumer import EventConsumer
from evostream.core.errors import EvoError
from evostream.schemas.catalog import COMPLETIONS
from evostream.schemas.codec import RecordCodec

log = logging.getLogger("evostream.client")

Record = dict[str, Any]


class ReplyBook:
    """Futures by reply key, thread-safe.

    A reply for a key nobody waits for is kept only if the key is one of ``expect_later``'s (this client published it
    and may ask later); others are other clients' and dropped. Both kinds of memory are bounded: the oldest keys go
    first, so a client that publishes forever and never asks does not grow without end."""

    def __init__(self, keep: int = 100_000) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._waiting: dict[str, Future[Record]] = {}
        self._later: OrderedDict[str, Record | None] = OrderedDict()  # key -> its reply once it came
        self._failed: BaseException | None = None
        self.delivered = 0
        self.dropped = 0

    def expect(self, key: str, exclusive: bool = False) -> Future[Record]:
        """The future of ``key``'s reply: already done when the reply came before this call. ``exclusive``: a key
        already awaited is an error (KeyError) instead of the same future."""
        with self._lock:
            fut = self._waiting.get(key)
            if fut is not None:
                if exclusive:
                    raise KeyError(key)
                return fut
            fut = Future()
            reply = self._later.pop(key, None)
            if reply is not None:
                fut.set_result(reply)
            elif self._failed is not None:
                fut.set_exception(self._failed)
            else:
                self._waiting[key] = fut
            return fut

    def expect_later(self, key: str) -> None:
        """Keep ``key``'s reply when it comes, for an ``expect`` that may follow."""
        with self._lock:
            self._later[key] = None
            while len(self._later) > self.keep:
                self._later.popitem(last=False)

    def knows(self, key: str) -> bool:
        """Whether a reply to ``key`` is awaited or kept here (else it must be looked for on the topic)."""
        with self._lock:
            return key in self._waiting or key in self._later

    def awaited(self, key: str) -> bool:
        """Whether someone waits for ``key``'s reply now."""
        with self._lock:
            return key in self._waiting

    def has_reply(self, key: str) -> bool:
        """Whether ``key``'s reply came and is kept for a later ``expect``."""
        with self._lock:
            return self._later.get(key) is not None

    def deliver(self, key: str, record: Record) -> bool:
        """Hand ``record`` to ``key``'s waiter, or keep it for one; False when the key is not this client's (or its
        waiter has its reply already: a request served twice after a crash answers twice)."""
        with self._lock:
            fut = self._waiting.pop(key, None)
            if fut is None:
                if key in self._later and self._later[key] is None:
                    self._later[key] = record
                    return True
                self.dropped += 1
                return False
            self._later.pop(key, None)
            self.delivered += 1
        _settle(fut, record)  # outside the lock: callbacks run here
        return True

    def forget(self, key: str) -> None:
        """Stop waiting for ``key`` (its caller gave up); a reply that comes later is dropped."""
        with self._lock:
            fut = self._waiting.pop(key, None)
            self._later.pop(key, None)
        if fut is not None:
            fut.cancel()

    def fail(self, key: str, error: BaseException) -> None:
        """``key``'s request never reached the broker: its waiter gets ``error``."""
        with self._lock:
            fut = self._waiting.pop(key, None)
            self._later.pop(key, None)
        if fut is not None:
            _settle(fut, error=error)

    def fail_all(self, error: BaseException) -> None:
        """The reader is gone: every waiter, and every later ``expect``, gets ``error``."""
        with self._lock:
            self._failed = error
            waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            _settle(fut, error=error)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)


def _settle(fut: Future[Record], record: Record | None = None, error: BaseException | None = None) -> None:
    """Set a future's outcome unless a caller cancelled it (giving up) meanwhile, from any thread."""
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(record)  # type: ignore[arg-type]
    except InvalidStateError:  # cancelled between the lookup and here
        pass


def partial(completion: Record) -> bool:
    """Whether a Completion is not its request's answer: the self model's partial answer, left when the router moved
    the request to its reference mid-answer (finish ESCALATED); the answer is a later Completion of the request."""
    return completion.get("finish_reason") == "ESCALATED"


def shadow(completion: Record) -> bool:
    """Whether a Completion is a candidate's answer to a mirrored copy of the request (role SHADOW): generated for
    comparison only, never the reply, even when it comes before production's answer."""
    return completion.get("role") == "SHADOW"


def is_reply(completion: Record) -> bool:
    """Whether a Completion is its request's answer, the one a client waiting on its reply key gets: not an
    escalated partial, not a shadow answer."""
    return not partial(completion) and not shadow(completion)


class ReplyReader:
    """A thread reading evo.completions from ``since_us`` on into a ``ReplyBook``, by each record's ``reply_to``.

    It assigns itself every partition (no consumer group, nothing committed). ``between`` runs after each poll on the
    reader's thread (the client serves its producer's delivery reports there). A consume error ends the thread and
    fails every waiter with it."""

    def __init__(
        self,
        bootstrap: str,
        book: ReplyBook,
        since_us: int,
        between: Callable[[], None] = lambda: None,
        poll_s: float = 0.05,
    ) -> None:
        self.book = book
        self.since_us = since_us
        self.between = between
        self.poll_s = poll_s
        self.read = 0
        self.error: BaseException | None = None
        self._codec = RecordCodec("Completion")
        # positioned here, before the caller publishes anything: a reply written after this is never missed
        self._consumer = EventConsumer(
            bootstrap,
            f"evostream-client-{uuid.uuid4().hex[:8]}",
            [COMPLETIONS],
            {"enable.auto.commit": False},
            since_us=since_us,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="evostream-replies", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for m in self._consumer.poll_ready(1000, self.poll_s):  # a reply is routed the moment it comes
                    rec = self._codec.decode_or_skip(m.value())
                    if rec is not None and is_reply(rec):
                        self.read += 1
                        self.book.deliver(str(rec["reply_to"]), rec)
                self.between()
        except BaseException as e:  # whatever ends the reader fails its waiters: none waits out its timeout
            log.error("reply reader stopped: %s", e)
            self.error = e
            self.book.fail_all(e if isinstance(e, EvoError) else EvoError(f"reply reader stopped: {e!r}"))
            if not isinstance(e, Exception):
                raise
        finally:
            self._consumer.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
