"""Kafka transactions for a single-writer log: a producer with a fixed ``transactional.id`` and a read_committed reader.

Every writer of one log uses the same ``transactional.id``. ``init`` (InitProducerId) bumps the id's epoch at the
transaction coordinator: an older instance's open transaction is aborted and it can never commit again (its next
EndTxn or Produce is refused as fenced), while a transaction that was already committing is completed first. So after
``init`` returns, whatever an older writer committed is visible to a read_committed reader, and nothing it has not
committed ever will be. ``evo.governance`` builds its one-writer-at-a-time rule on this (consumers/governance/log.py).

``PartitionReader`` reads one partition from an offset up to its end as of now (the last stable offset: records of
open or aborted transactions are never handed out), telling "the end" from the partition-EOF event rather than from a
quiet spell, so a reader of a short log returns in milliseconds.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from evostream.core.bus import security
from evostream.core.bus.connection import ConnectionWatch
from evostream.core.errors import AuthorizationError, ConflictError, ConsumeError, DeliveryError, EvoError

_FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})
"""The ways the broker (or librdkafka on its behalf) says a newer instance of this transactional id took over."""

_NOT_YET = frozenset(
    {
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.NOT_LEADER_FOR_PARTITION,
    }
)
"""What the metadata of a topic created a moment ago says until every part of the broker knows it."""

TRANSACTION_TIMEOUT_MS = 10_000
"""How long the coordinator keeps a transaction of a writer that died mid-way open (and read_committed readers wait
for it) before aborting it; a newer writer with the same id aborts it at once."""


_RAISED = (KafkaException, SystemError)
_REFUSED = frozenset({KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED})
"""The broker's ACLs refuse this principal the topic, or the transactional id."""
"""What the client's calls raise: a KafkaException, or, when a fatal error (being fenced) is raised inside a callback
the same call serves, a SystemError whose cause is the KafkaException."""


def kafka_error_of(e: BaseException) -> KafkaError | None:
    """The KafkaError that ``e`` carries, itself or through its cause or context."""
    seen: BaseException | None = e
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, KafkaException) and seen.args and isinstance(seen.args[0], KafkaError):
            return seen.args[0]
        seen = seen.__cause__ or seen.__context__
    return None


def is_fenced(err: KafkaError) -> bool:
    """Whether ``err`` says this producer was fenced by a newer instance of its transactional id."""
    if err.code() in _FENCED:
        return True
    # librdkafka reports later calls on a fenced producer as a generic fatal error that names the original one
    text = err.str().lower()
    return err.fatal() and ("fenced" in text or "epoch" in text)


class TransactionalProducer:
    """One transactional producer: ``init`` once, then ``begin`` / ``produce`` / ``commit`` (or ``abort``) per
    transaction. Errors come out as evostream's: fenced -> ConflictError, anything else -> DeliveryError. After a
    ConflictError (``fenced`` is True) the instance is dead: make a new one (whose ``init`` fences the others)."""

    def __init__(
        self,
        bootstrap: str,
        transactional_id: str,
        *,
        config: Mapping[str, Any] | None = None,
        timeout_s: float = 30.0,
        role: str | None = None,
    ) -> None:
        self.transactional_id = transactional_id
        self.timeout_s = timeout_s
        self.watch = ConnectionWatch(bootstrap, f"transactional producer {transactional_id}")
        watch_config = self.watch.config()
        self._watch_error = watch_config["error_cb"]
        # the governance writer's transactional id makes it the governance principal (security.role_of)
        self.login = security.credentials(bootstrap, role, transactional_id=transactional_id)
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                **({} if self.login is None else self.login.librdkafka()),
                "transactional.id": transactional_id,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 0,  # one small record per transaction: waiting for a batch only adds latency
                "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                # a fenced producer logs its fate in three error lines (ADDPARTS, TXNERR, FATAL) that the
                # ConflictError already says; every error still reaches the caller as an exception
                "log_level": 2,
                **watch_config,
                "error_cb": self._on_error,
                **(config or {}),
            }
        )
        self.fenced = False
        self.in_transaction = False
        self._delivered: list[tuple[str, int, int]] = []
        self._failures: list[KafkaError] = []

    # --- errors ----------------------------------------------------------------------------------------
    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback: being fenced is raised as ConflictError by the call that meets it, not also
        logged as a Kafka error; everything else goes to the connection watch."""
        if is_fenced(err):
            self.fenced = True
            return
        self._watch_error(err)

    def _fenced_error(self, doing: str, detail: str) -> ConflictError:
        self.fenced = True
        return ConflictError(
            f"writer {self.transactional_id!r} was fenced while it tried to {doing}: a newer writer with the same "
            f"transactional id took over, and nothing of this transaction was committed. Re-read the log's head "
            f"and retry with a new writer ({detail})"
        )

    def _error(self, doing: str, err: KafkaError) -> EvoError:
        if is_fenced(err):
            return self._fenced_error(doing, err.str())
        if err.code() in _REFUSED:
            what = f"transactional id {self.transactional_id!r}"
            if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                return AuthorizationError(
                    f"transactional writer {self.transactional_id!r} could not {doing}: "
                    f"{security.refusal(self.login, 'write to', 'this topic')} ({err.str()})"
                )
            return AuthorizationError(
                f"transactional writer {self.transactional_id!r} could not {doing}: "
                f"{security.refusal(self.login, 'use', what)} ({err.str()})"
            )
        return DeliveryError(f"transactional writer {self.transactional_id!r} could not {doing}: {err.str()}")

    def _kafka_error(self, doing: str, e: BaseException) -> EvoError:
        err = kafka_error_of(e)
        if err is not None:
            return self._error(doing, err)
        # The binding can fail a call with a bare SystemError ("returned NULL without setting an exception") when
        # the producer turns fatal inside it. Ask librdkafka what happened: after a fatal error every transactional
        # call returns that error, and an abort is what the caller does next anyway (nothing of this transaction
        # may be committed after a failed call).
        if not self.fenced:
            with contextlib.suppress(*_RAISED):  # serves the callbacks; the answer is in the abort
                self._producer.poll(0)
            try:
                self._producer.abort_transaction(min(self.timeout_s, 5.0))
                self.in_transaction = False
            except _RAISED as probe:
                found = kafka_error_of(probe)
                if found is not None and is_fenced(found):
                    self.fenced = True
        if self.fenced:
            return self._fenced_error(doing, f"the fatal error came through the error callback; the call said: {e}")
        return DeliveryError(f"transactional writer {self.transactional_id!r} could not {doing}: {e}")

    # --- the transaction -------------------------------------------------------------------------------
    def init(self) -> None:
        """Register with the coordinator, fencing every older instance of this transactional id (and aborting its
        open transaction); retried while the coordinator says to (e.g. another instance's commit is completing)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self._producer.init_transactions(max(0.1, deadline - time.monotonic()))
                return
            except _RAISED as e:
                err = kafka_error_of(e)
                if err is not None and err.retriable() and time.monotonic() < deadline:
                    continue
                raise self._kafka_error("register with the transaction coordinator", e) from e

    def begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except _RAISED as e:
            raise self._kafka_error("begin a transaction", e) from e
        self.in_transaction = True
        self._delivered = []
        self._failures = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._delivered.append((msg.topic() or "?", msg.partition() or 0, msg.offset() or 0))
        else:
            self._failures.append(err)

    def produce(self, topic: str, key: bytes | str | None, value: bytes) -> None:
        """Queue one record in the open transaction."""
        try:
            self._producer.produce(topic, value, key, on_delivery=self._on_delivery)
        except _RAISED as e:
            raise self._kafka_error(f"produce to {topic}", e) from e
        except BufferError as e:  # a transaction of a few records never fills the queue unless the broker is gone
            raise DeliveryError(f"transactional writer {self.transactional_id!r}: local queue full: {e}") from e

    def flush(self) -> list[tuple[str, int, int]]:
        """Wait until the broker acknowledged the open transaction's records (still uncommitted: read_committed
        readers see them only after ``commit``); return (topic, partition, offset) of each."""
        try:
            left = self._producer.flush(self.timeout_s)
        except _RAISED as e:
            raise self._kafka_error("deliver its records", e) from e
        if self._failures:
            raise self._error("deliver its records", self._failures[0])
        if left:
            raise DeliveryError(
                f"transactional writer {self.transactional_id!r}: {left} records were not acknowledged within "
                f"{self.timeout_s:.0f} s"
            )
        return sorted(self._delivered, key=lambda d: d[2])

    def commit(self) -> list[tuple[str, int, int]]:
        """Deliver the transaction's records and commit them; return (topic, partition, offset) of each. A failure
        aborts the transaction (nothing of it is visible to read_committed readers) and raises."""
        deadline = time.monotonic() + self.timeout_s
        try:
            self.flush()
            while True:
                try:
                    self._producer.commit_transaction(max(0.1, deadline - time.monotonic()))
                    break
                except _RAISED as e:
                    err = kafka_error_of(e)
                    if err is not None and err.retriable() and time.monotonic() < deadline:
                        continue
                    raise self._kafka_error("commit its transaction", e) from e
        except EvoError:
            self._abort_quietly()
            raise
        self.in_transaction = False
        return sorted(self._delivered, key=lambda d: d[2])

    def abort(self) -> None:
        """Abort the open transaction: its records stay in the partition but read_committed readers never see them."""
        try:
            self._producer.abort_transaction(self.timeout_s)
        except _RAISED as e:
            raise self._kafka_error("abort its transaction", e) from e
        finally:
            self.in_transaction = False

    def _abort_quietly(self) -> None:
        """Abort after a failure that is already being raised; a fenced producer cannot abort, and need not: the
        newer writer's init aborted its transaction."""
        if not self.in_transaction:
            return
        with contextlib.suppress(EvoError):
            self.abort()

    def close(self) -> None:
        """Abort an open transaction (when the producer still can) and drop undelivered records."""
        if self.in_transaction and not self.fenced:
            self._abort_quietly()
        with contextlib.suppress(*_RAISED):  # a fenced producer raises its fatal error on every call: it is known
            self._producer.purge()
            self._producer.flush(0)


class PartitionReader:
    """Reads one partition, read_committed, from an offset up to its end as of the read (or an offset before it)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partition: int = 0,
        *,
        timeout_s: float = 30.0,
        config: Mapping[str, Any] | None = None,
        role: str | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.timeout_s = timeout_s
        self.watch = ConnectionWatch(bootstrap, f"reader of {topic}[{partition}]")
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                **security.client_config(bootstrap, role),
                # no group membership (partitions are assigned) and no commits: the id only satisfies the client
                "group.id": f"evostream-partition-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                # at the end of the partition the broker answers an empty fetch after this long: the EOF signal
                "fetch.wait.max.ms": 10,
                "auto.offset.reset": "earliest",
                "log_level": 3,
                **self.watch.config(),
                **(config or {}),
            }
        )

    def bounds(self) -> tuple[int, int]:
        """(low, high): the first offset still stored, and the end as read_committed sees it (the last stable
        offset: an open transaction's records are past it)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                got = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, self.partition), timeout=max(0.1, deadline - time.monotonic())
                )
                break
            except KafkaException as e:
                err = e.args[0]
                # a topic created a moment ago is unknown to the client's metadata for a while: ask again
                if isinstance(err, KafkaError) and err.code() in _NOT_YET and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise ConsumeError(f"cannot read the offsets of {self.topic}[{self.partition}]: {err}") from e
        if got is None:
            raise ConsumeError(f"the broker did not give the offsets of {self.topic} within {self.timeout_s:.0f} s")
        return int(got[0]), int(got[1])

    def read(
        self, start: int = 0, end: int | None = None, *, bounds: tuple[int, int] | None = None
    ) -> list[tuple[int, bytes | None]]:
        """(offset, value) of every committed record with ``start <= offset < end`` (``end`` None: to the end of the
        partition as of now), in offset order. ``bounds``: what ``bounds()`` just said, to save asking again."""
        low, high = bounds or self.bounds()
        start = max(start, low)
        stop = high if end is None else min(end, high)
        if start >= stop:
            return []
        out: list[tuple[int, bytes | None]] = []
        deadline = time.monotonic() + self.timeout_s
        self._consumer.assign([TopicPartition(self.topic, self.partition, start)])
        try:
            while True:
                if time.monotonic() > deadline:
                    raise ConsumeError(
                        f"reading {self.topic}[{self.partition}] from offset {start} did not reach its end within "
                        f"{self.timeout_s:.0f} s (at offset {out[-1][0] if out else start})"
                    )
                try:
                    # wait for the first record (or the EOF event), then take what else is queued without waiting:
                    # consume() alone would wait out its whole timeout whenever fewer than num_messages are left
                    first = self._consumer.poll(0.2)
                    msgs = [] if first is None else [first, *self._consumer.consume(num_messages=1000, timeout=0)]
                except KafkaException as e:
                    raise ConsumeError(f"reading {self.topic}[{self.partition}] failed: {e.args[0]}") from e
                for m in msgs:
                    if self._at_end(m):
                        return out
                    offset = m.offset()
                    if offset is None or offset < start:
                        continue
                    if offset >= stop:
                        return out
                    out.append((offset, m.value()))
                    if offset >= stop - 1:
                        return out
        finally:
            self._consumer.unassign()

    def _at_end(self, m: Message) -> bool:
        err = m.error()
        if err is None:
            return False
        if err.code() == KafkaError._PARTITION_EOF:
            return True
        raise ConsumeError(f"reading {self.topic}[{self.partition}] failed: {err.str()}")

    def close(self) -> None:
        self._consumer.close()
