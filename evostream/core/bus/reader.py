"""The one way evostream reads a topic for a person or a check: decode each record as the wanted type, skip what is
not one, and stop when the topic goes idle, at a deadline, or when the caller has what it wanted.

Every reader before this one was a hand-written poll loop; readers of the processors' output, the request client,
the demo and the coming governance projection and sinks all read through here."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal

from evostream.core.bus.consumer import EventConsumer
from evostream.schemas.codec import RecordCodec

JOIN_S = 15.0
"""How long a reader waits for its first partition assignment before idleness counts."""


class TopicReader:
    """Reads ``topic`` as ``schema`` records with a private, never-committed group.

    Where it starts: ``start`` (the topic's beginning, or only what arrives from now on), or ``since_us`` (every
    partition from its first record written at or after that time). When it stops: once nothing new came for
    ``idle_s`` (None: never), once ``timeout_s`` has passed (None: never), once ``until()`` holds (checked between
    batches, so a batch is always read whole: a record that came twice is still seen twice), or when the caller
    stops iterating (``break``; the ``with`` block closes the consumer)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        schema: str,
        *,
        start: Literal["earliest", "latest"] = "earliest",
        since_us: int | None = None,
        idle_s: float | None = 2.0,
        timeout_s: float | None = None,
        until: Callable[[], bool] | None = None,
        batch: int = 1000,
        poll_s: float = 0.5,
        name: str = "read",
    ) -> None:
        self.codec = RecordCodec(schema)
        self.idle_s = idle_s
        self.timeout_s = timeout_s
        self.until = until
        self.batch = batch
        self.poll_s = poll_s
        config = {"auto.offset.reset": start, "enable.auto.commit": False}
        group = f"evostream-{name}-{uuid.uuid4().hex[:8]}"
        self._consumer = EventConsumer(bootstrap, group, [topic], config, since_us=since_us)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The decoded records in the order they arrive (per partition, the order they were written)."""
        started = time.monotonic()
        deadline = None if self.timeout_s is None else started + self.timeout_s
        idle = 0.0
        while self.idle_s is None or idle < self.idle_s:
            if deadline is not None and time.monotonic() >= deadline:
                return
            if self.until is not None and self.until():
                return
            msgs = self._consumer.poll_batch(self.batch, self.poll_s)
            # idle counts once partitions are assigned (or after JOIN_S without any: a topic that is not there):
            # joining the group can take longer than idle_s, and a reader that gave up before its first assignment
            # read nothing (a trace lookup missed a trace)
            joining = not self._consumer.assigned and time.monotonic() - started < JOIN_S
            idle = 0.0 if msgs or joining else idle + self.poll_s
            for m in msgs:
                rec = self.codec.decode_or_skip(m.value())
                if rec is not None:
                    yield rec

    @property
    def positions(self) -> dict[tuple[str, int], int]:
        """Per (topic, partition), the offset after the last record read (with ``since_us``: from the assignment on);
        against where the partitions end (``admin.PartitionEnds``), whether the reader has caught up."""
        return self._consumer.next_offsets

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
