"""Which request offsets may be committed while requests finish out of order (pure; no Kafka).

A partition's committed offset is the next one to read after a restart, so it may only pass a request once that
request's Completion and steps are acknowledged. With continuous batching a short request read after a long one
finishes first: the commit stops at the oldest request still in flight on its partition."""

from __future__ import annotations

Partition = tuple[str, int]


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
