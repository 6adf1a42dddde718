"""Running one sink: its own consumer group (``evostream-sink-<name>``) on the topics it reads, so a slow or failing
sink never holds back another; records decoded by the topic catalog, handed over in batches through ``deliver``
(retries with backoff, poison records to ``evo.dlq`` with the reason), and positions committed only after the sink
flushed and the dead letters were acknowledged. A sink that keeps its positions with its rows (SQLite) is started
where it says, whatever the group committed: a crash between its write and the commit then neither loses nor
duplicates.

Bytes that do not decode as their topic's record are dead-lettered by the runner itself, without bothering the
sink; the partition goes on."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition

from evostream.consumers.sinks.contract import Positions, Record, Result, SinkLike, Status
from evostream.consumers.sinks.delivery import Backoff, deliver
from evostream.core.bus.consumer import EventConsumer
from evostream.core.bus.producer import EventProducer
from evostream.core.clock import now_us
from evostream.core.errors import ConsumeError, DecodeError, SinkError
from evostream.schemas.catalog import DLQ, topic_spec
from evostream.schemas.codec import RecordCodec
from evostream.schemas.deadletter import dead_letter

log = logging.getLogger("evostream.sinks")


def group_of(name: str) -> str:
    """The consumer group of the sink ``name``: one per sink, so none waits on another."""
    return f"evostream-sink-{name}"


@dataclass(frozen=True)
class RunnerOptions:
    max_records: int = 500
    """Records per batch handed to the sink."""
    max_wait_s: float = 0.5
    """How long a poll waits for the first record of a batch."""
    backoff: Backoff = field(default_factory=Backoff)
    flush_interval_s: float | None = None
    """Flush and commit at most this often (seconds; the topics going idle flushes at once); None: the sink's own
    ``flush_interval_s`` (0 for most: after every batch), as Kafka Connect's offset.flush.interval.ms."""
    pause_before_commit_s: float = 0.0
    """Fault-injection only: wait this long between the sink's flush and the commit (the kill test lands there)."""
    commit_timeout_s: float = 10.0
    """How long one commit of offsets (or one wait for dead letters to be acknowledged) waits for the broker; one not
    confirmed leaves its offsets pending for the next commit (librdkafka's own wait has no end when the broker is
    gone)."""
    shutdown_s: float = 10.0
    """From ``stop()`` on, every wait on the way out (the last flush's dead letters acknowledged, the last commit,
    the consumer's close) shares what is left of this budget, whatever the broker does; what could not be committed
    is raised (``run`` ends with it) and is read again by the next owner."""


@dataclass
class RunnerStats:
    records: int = 0
    """Records handed to the sink and applied (or already applied: redeliveries count again)."""
    batches: int = 0
    dead_letters: int = 0
    undecodable: int = 0
    retries: int = 0
    commits: int = 0
    rewinds: int = 0
    """Failed polls after which the partitions were read again from the last delivered or committed offset."""
    started_at: float = field(default_factory=time.monotonic)
    resumed: dict[tuple[str, int], int] = field(default_factory=dict)
    """Partitions started at the sink's own position rather than the group's, with that position."""


class SinkRunner:
    """Feeds one sink from Kafka until ``stop()``; ``step()`` is one poll, deliver, flush and commit."""

    def __init__(
        self,
        bootstrap: str,
        sink: SinkLike,
        options: RunnerOptions = RunnerOptions(),
        group: str | None = None,
        on_batch: Callable[[SinkRunner], None] | None = None,
    ) -> None:
        self.sink = sink
        self.options = options
        self.group = group or group_of(sink.name)
        self.stats = RunnerStats()
        self.stop_event = threading.Event()
        self.assigned = threading.Event()
        """Set once the group has handed this runner its partitions."""
        self._on_batch = on_batch
        self._catch_up: dict[tuple[str, int], int] = {}
        self._pending: dict[tuple[str, int], int] = {}
        """Next offsets of batches delivered but not yet flushed and committed."""
        self._flushed_at = time.monotonic()
        self._stop_at: float | None = None
        interval = options.flush_interval_s
        self.flush_interval_s = float(getattr(sink, "flush_interval_s", 0.0) if interval is None else interval)
        self._codecs = {t: RecordCodec(topic_spec(t).value_schema) for t in sink.topics}
        self._dlq_codec = RecordCodec(topic_spec(DLQ).value_schema)
        self._producer = EventProducer(bootstrap)
        self._consumer = EventConsumer(
            bootstrap, self.group, sink.topics, {"enable.auto.commit": False}, on_assign=self._place
        )

    # -- assignment -----------------------------------------------------------------------------------------------

    def _place(self, parts: list[TopicPartition]) -> list[TopicPartition] | None:
        """Start each assigned partition at the sink's own position where it keeps one."""
        self.assigned.set()
        try:
            own: Positions = self.sink.positions()
        except Exception as e:  # a sink that cannot say where it is starts at the group's offsets, and says so
            log.error("sink %s: positions() failed (%s); starting at the group's committed offsets", self.sink.name, e)
            return None
        if not own:
            return None
        # Records the runner dead-lettered without handing them over are past the sink's positions but committed:
        # the later of the two is where to go on.
        group = self._consumer.committed([(tp.topic, tp.partition) for tp in parts])
        placed = []
        for tp in parts:
            at = own.get((tp.topic, tp.partition))
            if at is not None:
                committed = group.get((tp.topic, tp.partition), 0)
                if at > committed:  # the sink wrote, the commit was lost: the group learns it at the next step
                    self._catch_up[tp.topic, tp.partition] = at
                at = max(at, committed)
                self.stats.resumed[tp.topic, tp.partition] = at
                placed.append(TopicPartition(tp.topic, tp.partition, at))
            else:
                placed.append(tp)
        log.info("sink %s resumes %d partitions at its own positions", self.sink.name, len(self.stats.resumed))
        return placed

    # -- one batch ------------------------------------------------------------------------------------------------

    def _decode(self, msgs: Sequence[Message]) -> tuple[list[Record], dict[str, Message]]:
        records, raw = [], {}
        for m in msgs:
            topic, partition, offset = m.topic() or "", m.partition() or 0, m.offset() or 0
            codec = self._codecs[topic]
            try:
                value = codec.decode(m.value() or b"")
            except DecodeError as e:
                self._send_dead(topic, partition, offset, m.key(), m.value(), e)
                self.stats.undecodable += 1
                continue
            ts = m.timestamp()[1]
            rec = Record(topic, partition, offset, codec.reader.short_name, value, ts * 1000, m.key())
            records.append(rec)
            raw[rec.key] = m
        return records, raw

    def _send_dead(
        self, topic: str, partition: int, offset: int, key: bytes | None, raw: bytes | None, error: BaseException
    ) -> None:
        rec = dead_letter(topic, partition, offset, key, raw, error, self.group, now_us())
        # the value (and key) at most dead_letter's KEEP_BYTES: a record near the size limit wrapped whole would be
        # too large to send, and the runner would meet it again after every restart
        self._producer.send(DLQ, rec["original_key"], self._dlq_codec.encode(rec))
        self.stats.dead_letters += 1

    def step(self) -> int:
        """Poll one batch and deliver it; flush and commit when the sink's flush interval has passed or the topics
        are idle. The number of messages polled. Raises SinkError when the sink could not make its writes durable
        (nothing is committed then), ConsumeError when Kafka failed (the partitions are then rewound, see
        ``_rewind``)."""
        if self._catch_up:  # before anything else is read: a failure leaves it to the next step
            self._consumer.commit_offsets(self._catch_up, timeout_s=self._left(self.options.commit_timeout_s))
            self._catch_up = {}
        try:
            msgs = self._consumer.poll_batch(self.options.max_records, self.options.max_wait_s)
        except ConsumeError:
            self._rewind()
            raise
        if not msgs:
            self._producer.poll()
        else:
            ends: dict[tuple[str, int], int] = {}
            for m in msgs:
                tp = (m.topic() or "", m.partition() or 0)
                ends[tp] = max(ends.get(tp, 0), (m.offset() or 0) + 1)
            dead_before = self.stats.dead_letters
            records, raw = self._decode(msgs)
            if self.stats.dead_letters > dead_before:
                # acknowledged before the sink writes: a sink that keeps its positions (SQLite) moves them past
                # the undecodable records in that write, and a crash must not lose their dead letters
                self._producer.flush(self._left(30.0))

            def dead(rec: Record, reason: str) -> None:
                m = raw[rec.key]
                self._send_dead(rec.topic, rec.partition, rec.offset, m.key(), m.value(), SinkError(reason))

            def retried(attempt: int, reason: str, wait: float) -> None:
                self.stats.retries += 1
                log.warning(
                    "sink %s: attempt %d not durable (%s); again in %.1f s", self.sink.name, attempt, reason, wait
                )

            def wait(seconds: float) -> None:
                self.stop_event.wait(seconds)

            out = deliver(self.sink, records, dead, self.options.backoff, wait, self.stop_event.is_set, retried)
            if out.stopped:
                return len(msgs)  # stopping mid-retry: this batch is not committed, it is read again next time
            if out.dead:
                self._producer.flush(
                    self._left(30.0)
                )  # the sink's poison, acknowledged before anything else is written
            for tp, end in ends.items():
                self._pending[tp] = max(self._pending.get(tp, 0), end)
            self.stats.batches += 1
            self.stats.records += out.applied
        if self._pending and (not msgs or time.monotonic() - self._flushed_at >= self.flush_interval_s):
            self.commit()
        return len(msgs)

    def _rewind(self) -> None:
        """After a failed poll, read every assigned partition again from where this runner has delivered to (its
        pending offsets), or else from where the group committed or the sink keeps its position: the poll may have
        fetched good records with the error and dropped them, and the consumer's position is already past them.
        A runner that cannot rewind stops (SinkError): going on would commit past records never delivered."""
        try:
            parts = self._consumer.assignment()
            undelivered = [tp for tp in parts if tp not in self._pending]
            starts = dict(self._pending)
            if undelivered:
                starts |= self._starts(undelivered)
            self._consumer.seek({tp: starts.get(tp, OFFSET_BEGINNING) for tp in parts})
        except ConsumeError as e:
            raise SinkError(f"sink {self.sink.name!r}: a poll failed and the runner could not rewind: {e}") from e
        self.stats.rewinds += 1

    def _starts(self, parts: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Where to read ``parts`` from: the later of the group's commit and the sink's own position."""
        group = self._consumer.committed(parts)
        own = self.sink.positions()
        out = {}
        for tp in parts:
            at = max(group.get(tp, -1), own.get(tp, -1))
            if at >= 0:
                out[tp] = at
        return out

    def commit(self) -> None:
        """Flush the sink (retrying while it answers retryable), have the dead letters acknowledged, then commit
        every delivered batch's offsets."""
        flushed = self._flush()
        while flushed.status is Status.RETRYABLE and not self.stop_event.is_set():
            self.stats.retries += 1
            log.warning("sink %s: flush not durable (%s); trying again", self.sink.name, flushed.reason)
            self.stop_event.wait(self.options.backoff.base_s)
            flushed = self._flush()
        if flushed.status is not Status.OK:
            raise SinkError(f"sink {self.sink.name!r} could not make its writes durable: {flushed.reason or 'stopped'}")
        self._producer.flush(self._left(30.0))  # the dead letters are acknowledged before their offsets are committed
        if self.options.pause_before_commit_s:
            time.sleep(self.options.pause_before_commit_s)
        self._consumer.commit_offsets(self._pending, timeout_s=self._left(self.options.commit_timeout_s))
        self._pending = {}
        self._flushed_at = time.monotonic()
        self.stats.commits += 1
        if self._on_batch is not None:
            self._on_batch(self)

    def _flush(self) -> Result:
        try:
            return self.sink.flush()
        except Exception as e:  # a sink's bug: nothing may be committed, and the runner says whose bug it was
            raise SinkError(f"sink {self.sink.name!r}: flush raised {type(e).__name__}: {e}") from e

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self, until_idle: bool = False) -> RunnerStats:
        """Run until ``stop()`` (or, with ``until_idle``, until a poll after the assignment brings nothing and every
        assigned partition's position has reached its end: the sink has caught up); the sink is closed at the end,
        also after a failure."""
        try:
            while not self.stop_event.is_set():
                try:
                    got = self.step()
                    if until_idle and not got and self.assigned.is_set() and self._caught_up():
                        break
                except ConsumeError as e:
                    # a failed poll was rewound; a failed commit leaves its offsets pending for the next one (a
                    # partition lost to a rebalance is read again by its new owner from the last commit)
                    log.warning("sink %s: %s", self.sink.name, e)
                    self._keep_assigned()
            if self._pending:  # delivered since the last flush: made durable and committed on the way out
                self.commit()
            return self.stats
        finally:
            self.close()

    def _caught_up(self) -> bool:
        if self._pending:  # an idle poll flushes and commits them first
            return False
        try:
            return all(n <= 0 for n in self._consumer.lag().values())
        except ConsumeError as e:
            log.warning("sink %s: %s", self.sink.name, e)
            return False

    def _keep_assigned(self) -> None:
        try:
            mine = set(self._consumer.assignment())
        except ConsumeError:
            return
        self._pending = {tp: at for tp, at in self._pending.items() if tp in mine}

    def stop(self) -> None:
        self.stop_event.set()
        self._left(0.0)  # the shutdown budget starts now

    def _left(self, wanted: float) -> float:
        """``wanted`` seconds while running; after ``stop()``, no more than what is left of ``shutdown_s`` (at least
        0.1 s, so that what is already done is still seen)."""
        if not self.stop_event.is_set():
            return wanted
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        return max(0.1, min(wanted, self._stop_at + self.options.shutdown_s - time.monotonic()))

    def close(self) -> None:
        try:
            self.sink.close()
        finally:
            try:
                self._consumer.close(self._left(30.0))
            finally:
                self._producer.flush(self._left(10.0))
