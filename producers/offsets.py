"""Which request offsets may be committed while requests finish out of order (pure; no Kafka).

A partition's committed offset is the next one to read after a restart, so it may only pass a request once that
request's Completion and steps are acknowledged. With continuous batching a short request read after a long one
finishes first: the commit stops at the oldest request still in flight on its partition."""

from __future__ import annotations

import threading
from collections.abc import Callable

Partition = tuple[str, int]
RequestKey = tuple[Partition, int]
"""A request by its position: (partition, offset)."""


class OffsetBook:
    """Offsets read and not yet done, per partition, and what may be committed."""

    def __init__(self) -> None:
        self._open: dict[Partition, set[int]] = {}
        self._next: dict[Partition, int] = {}  # one past the highest offset read
        self._committed: dict[Partition, int] = {}

    def read(self, part: Partition, offset: int) -> None:
        self._open.setdefault(part, set()).add(offset)
        self._next[part] = max(self._next.get(part, 0), offset + 1)

    def done(self, part: Partition, offset: int) -> None:
        self._open.get(part, set()).discard(offset)

    def in_flight(self) -> int:
        return sum(len(s) for s in self._open.values())

    def committable(self, assigned: set[Partition] | None = None) -> dict[Partition, int]:
        """Per partition (of ``assigned``, when given), the offset to commit now, where it moved since the last
        ``committed``: the oldest offset still open, or one past the highest read when none is."""
        out = {}
        for part, nxt in self._next.items():
            if assigned is not None and part not in assigned:
                continue
            open_ = self._open.get(part)
            at = min(open_) if open_ else nxt
            if at > self._committed.get(part, -1):
                out[part] = at
        return out

    def committed(self, offsets: dict[Partition, int]) -> None:
        self._committed.update(offsets)

    def forget(self, keep: set[Partition]) -> None:
        """Partitions this member no longer holds: their open offsets are the new owner's to serve."""
        for part in list(self._next):
            if part not in keep:
                self._next.pop(part, None)
                self._open.pop(part, None)
                self._committed.pop(part, None)


class RequestAcks:
    """The records of routed requests awaiting the broker's acknowledgement (thread-safe: delivery reports come on
    the producer's threads). A routed request writes several records (its RouteDecisions, a partial answer, its final
    Completion) to several partitions, whose acknowledgements come in any order: the request is done only once its
    final record and every record sent for it before are acknowledged; ``done`` is then called with its key once."""

    def __init__(self, done: Callable[[RequestKey], None]) -> None:
        self._done = done
        self._lock = threading.Lock()
        self._open: dict[RequestKey, int] = {}
        self._final: set[RequestKey] = set()

    def sent(self, key: RequestKey) -> None:
        with self._lock:
            self._open[key] = self._open.get(key, 0) + 1

    def acked(self, key: RequestKey, final: bool) -> None:
        with self._lock:
            left = self._open.get(key, 0) - 1
            if final:
                self._final.add(key)
            ready = left <= 0 and key in self._final
            if ready:
                self._open.pop(key, None)
                self._final.discard(key)
            else:
                self._open[key] = left
        if ready:
            self._done(key)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._open)
