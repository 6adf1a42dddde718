"""A consumer that hands out raw records in batches, with librdkafka errors translated."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from evostream.core.bus import security
from evostream.core.bus.connection import ConnectionWatch
from evostream.core.errors import ConsumeError

_SETTLING = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART)
"""What a just-created topic's partitions answer until the broker has settled their leaders."""
_SETTLE_S = 15.0
COMMIT_TIMEOUT_S = 30.0
"""How long a commit waits for the broker's answer by default."""
CLOSE_TIMEOUT_S = 30.0
"""How long ``close`` waits by default."""
log = logging.getLogger("evostream.bus")


class EventConsumer:
    """A consumer-group member on some topics; ``poll_batch`` returns raw messages.

    With ``since_us`` it joins no group: it is assigned every partition of ``topics`` from the first record written
    at or after that time (for readers that look for an answer to something they just sent).

    ``on_assign`` is called with the partitions the group hands this member; when it returns partitions (with
    offsets set), consumption starts there instead of at the group's committed offsets: for a reader that keeps its
    positions itself, in the same transaction as what it wrote."""

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: Iterable[str],
        config: Mapping[str, Any] | None = None,
        since_us: int | None = None,
        on_assign: Callable[[list[TopicPartition]], list[TopicPartition] | None] | None = None,
        *,
        role: str | None = None,
    ) -> None:
        self.watch = ConnectionWatch(bootstrap, f"consumer {group_id}")
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                **security.client_config(bootstrap, role),
                "group.id": group_id,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
                "fetch.min.bytes": 1,
                "log_level": 3,
                **self.watch.config(),
                **(config or {}),
            }
        )
        self._committing: threading.Thread | None = None
        self.assigned: frozenset[tuple[str, int]] = frozenset()
        """The partitions the group has handed this member, as of its last poll: readable from any thread (asking
        librdkafka from another thread while this one polls can wait a long time)."""
        self.next_offsets: dict[tuple[str, int], int] = {}
        """Per (topic, partition), the offset after the last record handed out; with ``since_us``, every partition's
        from its assignment on: against where the partitions end (``admin.PartitionEnds``), whether it has caught
        up."""
        if since_us is not None:
            self._assign_since(list(topics), since_us)
            return
        hook = on_assign

        def assigned(consumer: Consumer, parts: list[TopicPartition]) -> None:
            self.assigned = frozenset((tp.topic, tp.partition) for tp in parts)
            placed = hook(parts) if hook is not None else None
            if placed is not None:
                consumer.assign(placed)

        def revoked(_consumer: Consumer, _parts: list[TopicPartition]) -> None:
            self.assigned = frozenset()

        self._consumer.subscribe(list(topics), on_assign=assigned, on_revoke=revoked, on_lost=revoked)

    def _assign_since(self, topics: list[str], since_us: int) -> None:
        """Each partition from its first record at or after ``since_us``; a partition with none yet starts at its
        end as it was *before* the time lookup. Left to the broker's "end" (offset -1), the end would be resolved
        only when fetching starts, and a record written in between (the answer to a request just sent) was skipped.
        A topic created a moment ago may have no leader yet: that is asked again for up to ``_SETTLE_S``."""
        deadline = time.monotonic() + _SETTLE_S
        while True:
            try:
                self._try_assign_since(topics, since_us)
                return
            except KafkaException as e:
                code = e.args[0].code() if e.args and isinstance(e.args[0], KafkaError) else None
                if code in _SETTLING and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                self._consumer.close()
                raise ConsumeError(f"could not seek {', '.join(topics)} to {since_us} us: {e}") from e

    def _try_assign_since(self, topics: list[str], since_us: int) -> None:
        """One try of ``_assign_since``: a KafkaException for a topic or partition that is not settled yet."""
        parts = []
        for topic in topics:
            md = self._consumer.list_topics(topic, timeout=10)
            meta = md.topics.get(topic)
            if meta is not None and meta.error is not None and meta.error.code() in _SETTLING:
                raise KafkaException(meta.error)
            if meta is None or meta.error is not None:
                self._consumer.close()
                raise ConsumeError(f"topic {topic} is not on the broker: {meta.error if meta else 'unknown'}")
            parts += [TopicPartition(topic, p, since_us // 1000) for p in meta.partitions]
        ends = {}
        for tp in parts:
            marks = self._consumer.get_watermark_offsets(tp, timeout=10)
            if marks is None:
                self._consumer.close()
                raise ConsumeError(f"the broker did not say where {tp.topic}[{tp.partition}] ends within 10 s")
            ends[tp.topic, tp.partition] = marks[1]
        found = self._consumer.offsets_for_times(parts, timeout=10)
        placed = [
            tp if tp.offset >= 0 else TopicPartition(tp.topic, tp.partition, ends[tp.topic, tp.partition])
            for tp in found
        ]
        self._consumer.assign(placed)
        self.assigned = frozenset((tp.topic, tp.partition) for tp in parts)
        self.next_offsets = {(tp.topic, tp.partition): tp.offset for tp in placed}

    def poll_batch(self, max_records: int = 1000, timeout_s: float = 1.0) -> list[Message]:
        """Up to ``max_records`` records; waits until there are that many or ``timeout_s`` has passed (librdkafka's
        batch consume), so a caller that must act on the first record should use ``poll_ready``."""
        try:
            msgs: list[Message] = self._consumer.consume(num_messages=max_records, timeout=timeout_s)
        except KafkaException as e:
            raise ConsumeError(f"consume failed: {e}") from e
        return self._good(msgs)

    def poll_ready(self, max_records: int = 1000, timeout_s: float = 1.0) -> list[Message]:
        """Waits up to ``timeout_s`` for the first record only, then returns it with whatever else has already been
        fetched (up to ``max_records``) without waiting for more: one request alone is not held back for the full
        timeout, as ``poll_batch`` would hold it."""
        try:
            first = self._consumer.poll(timeout_s)
            if first is None:
                return []
            rest: list[Message] = (
                self._consumer.consume(num_messages=max_records - 1, timeout=0) if max_records > 1 else []
            )
        except KafkaException as e:
            raise ConsumeError(f"consume failed: {e}") from e
        return self._good([first, *rest])

    def _good(self, msgs: list[Message]) -> list[Message]:
        good = []
        for m in msgs:
            err = m.error()
            if err is None:
                good.append(m)
                self.next_offsets[m.topic() or "", m.partition() or 0] = (m.offset() or 0) + 1
            elif err.code() != KafkaError._PARTITION_EOF:
                raise ConsumeError(f"consume error on {m.topic()}[{m.partition()}]: {err.str()}")
        return good

    def commit(self, timeout_s: float = COMMIT_TIMEOUT_S) -> None:
        """Commit the offsets of everything handed out so far (for enable.auto.commit=false), waiting at most
        ``timeout_s`` for the broker's answer (``_bounded``)."""
        self._bounded(lambda: self._consumer.commit(asynchronous=False), "the offsets read so far", timeout_s)

    def commit_offsets(self, offsets: Mapping[tuple[str, int], int], timeout_s: float = COMMIT_TIMEOUT_S) -> None:
        """Commit exactly these next-offsets per (topic, partition), waiting at most ``timeout_s`` for the broker's
        answer (``_bounded``)."""
        if not offsets:
            return
        parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        what = ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(offsets.items()))
        self._bounded(lambda: self._consumer.commit(offsets=parts, asynchronous=False), what, timeout_s)

    def _bounded(self, commit: Callable[[], object], what: str, timeout_s: float) -> None:
        """Run a synchronous commit on a thread of its own and wait for it at most ``timeout_s``: librdkafka's
        synchronous commit has no deadline, and with the broker gone it waits for the group coordinator (45 s and
        more were seen), so a service asked to stop could not. A commit left waiting keeps its thread; until it
        returns, another commit is refused at once (ConsumeError) rather than queued behind it."""
        if self._committing is not None and self._committing.is_alive():
            raise ConsumeError(f"commit of {what} not tried: an earlier commit is still waiting for the broker")
        failed: list[KafkaException] = []

        def run() -> None:
            try:
                commit()
            except KafkaException as e:
                failed.append(e)

        thread = threading.Thread(target=run, name="evostream-commit", daemon=True)
        self._committing = thread
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            raise ConsumeError(f"commit of {what} not confirmed by the broker within {timeout_s:.1f} s")
        if failed:
            raise ConsumeError(f"commit of {what} failed: {failed[0]}") from failed[0]

    def committed(self, parts: Iterable[tuple[str, int]], timeout_s: float = 10.0) -> dict[tuple[str, int], int]:
        """The group's committed next-offset per (topic, partition); partitions with none are left out."""
        try:
            got = self._consumer.committed([TopicPartition(t, p) for t, p in parts], timeout=timeout_s)
        except KafkaException as e:
            raise ConsumeError(f"could not read committed offsets: {e}") from e
        return {(tp.topic, tp.partition): tp.offset for tp in got if tp.offset >= 0}

    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition)s the group has handed this member now."""
        try:
            return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]
        except KafkaException as e:
            raise ConsumeError(f"could not read the assignment: {e}") from e

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Read each (topic, partition) from this offset next (an assigned partition; a negative offset is Kafka's
        logical one, -2 the beginning)."""
        try:
            for (t, p), o in offsets.items():
                self._consumer.seek(TopicPartition(t, p, o))
        except KafkaException as e:
            raise ConsumeError(f"could not seek: {e}") from e

    def lag(self, timeout_s: float = 10.0) -> dict[tuple[str, int], int]:
        """Records each assigned partition holds beyond this member's position (its next offset to read, or, before
        the first fetch, the group's commit; with neither, the partition's start)."""
        try:
            parts = self._consumer.assignment()
            at = {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(parts)}
            unknown = [tp for tp in parts if at[tp.topic, tp.partition] < 0]
            if unknown:
                for tp in self._consumer.committed(unknown, timeout=timeout_s):
                    at[tp.topic, tp.partition] = tp.offset
            out = {}
            for tp in parts:
                marks = self._consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
                if marks is None:
                    raise ConsumeError(f"the broker did not say where {tp.topic}[{tp.partition}] ends")
                low, high = marks
                pos = at[tp.topic, tp.partition]
                out[tp.topic, tp.partition] = high - (pos if pos >= 0 else low)
            return out
        except KafkaException as e:
            raise ConsumeError(f"could not measure the lag: {e}") from e

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Leave the group and release the client, waiting at most ``timeout_s`` (with the broker gone, librdkafka's
        close waits for it a while); False, and said in the log, when it did not finish in time (its thread is
        left to finish on its own). While a commit left waiting (``_bounded``) is still inside the client, the client
        is not closed at all: librdkafka forbids destroying a handle another thread is using; it is left to the
        process's exit, and the log says so."""
        if self._committing is not None and self._committing.is_alive():
            log.warning(
                "%s not closed: a commit is still waiting for the broker inside it; left behind", self.watch.client
            )
            return False
        thread = threading.Thread(target=self._consumer.close, name="evostream-consumer-close", daemon=True)
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("%s did not close within %.1f s: left behind", self.watch.client, timeout_s)
            return False
        return True

    def __enter__(self) -> EventConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
