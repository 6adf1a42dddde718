"""A live tail of the topics people watch, feeding a ``Recent`` fold and pushing each record to subscribers.

One consumer (no group: every partition assigned, from ``history_s`` ago) on a thread of its own. Readers take the
fold under ``lock``; a subscriber is called on the tail's thread with each record and must not block (the HTTP API's
server-sent events put it on an asyncio queue)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence

from evostream.core.bus.consumer import EventConsumer
from evostream.core.clock import now_us
from evostream.core.errors import EvoError
from evostream.schemas.catalog import ALERTS, CATALOG, COMPLETIONS, DRIFT, PROFILES, RISK, ROUTES, STEPS
from evostream.schemas.codec import RecordCodec
from evostream.views.recent import Recent, Record

log = logging.getLogger("evostream.views")
WATCHED = (STEPS, COMPLETIONS, RISK, ALERTS, DRIFT, PROFILES, ROUTES)
Subscriber = Callable[[str, Record], None]


class Tail:
    """Reads ``topics`` into ``recent`` until ``close``."""

    def __init__(
        self,
        bootstrap: str,
        recent: Recent,
        topics: Sequence[str] = WATCHED,
        history_s: float = 3600.0,
        poll_s: float = 0.2,
        schemas: Mapping[str, str] | None = None,
    ) -> None:
        """``schemas``: the record type of a topic the catalog does not name (a governance log's own topic)."""
        self.recent = recent
        self.lock = threading.Lock()
        self.error: EvoError | None = None
        self.caught_up = threading.Event()
        """Set once the history up to the start has been read (the first empty poll)."""
        known = {t.name: t.value_schema for t in CATALOG} | dict(schemas or {})
        self._codecs = {t: RecordCodec(known[t]) for t in topics}
        self._subscribers: list[Subscriber] = []
        self._stop = threading.Event()
        self._poll_s = poll_s
        self._consumer = EventConsumer(
            bootstrap, "evostream-views", list(topics), since_us=now_us() - int(history_s * 1e6)
        )
        self._thread = threading.Thread(target=self._run, name="evostream-tail", daemon=True)
        self._thread.start()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn(topic, record)`` for every record from now on; returns the function that unsubscribes."""
        with self.lock:
            self._subscribers.append(fn)

        def unsubscribe() -> None:
            with self.lock:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)

        return unsubscribe

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msgs = self._consumer.poll_batch(1000, self._poll_s)
            except EvoError as e:  # the broker went away: say so on /health, keep trying
                self.error = e
                log.warning("tail of %s: %s", ", ".join(self._codecs), e)
                self._stop.wait(1.0)
                continue
            self.error = None
            if not msgs:
                self.caught_up.set()
                continue
            decoded = []
            for m in msgs:
                codec = self._codecs.get(m.topic() or "")
                rec = None if codec is None else codec.decode_or_skip(m.value())
                if rec is not None:
                    decoded.append((m.topic() or "", rec))
            with self.lock:
                for topic, rec in decoded:
                    try:
                        self.recent.add(topic, rec)
                    except (KeyError, TypeError, ValueError) as e:  # a record the fold cannot take: skipped, said
                        log.warning("tail: %s record not folded: %r", topic, e)
                subscribers = list(self._subscribers)
            for topic, rec in decoded:
                for fn in subscribers:
                    try:
                        fn(topic, rec)
                    except Exception as e:  # a subscriber gone (its event loop closed) or broken: dropped, not us
                        log.warning("tail: dropping a subscriber that failed: %r", e)
                        with self.lock:
                            if fn in self._subscribers:
                                self._subscribers.remove(fn)
                        subscribers = [f for f in subscribers if f is not fn]

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()
