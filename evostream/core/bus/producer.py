"""A delivery-checked Kafka producer: idempotent, acks=all, bounded queue with back-pressure, no silent drops."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from evostream.core.bus import security
from evostream.core.bus.connection import ConnectionWatch
from evostream.core.errors import AuthorizationError, DeliveryError

DEFAULT_CONFIG: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 200_000,
    "queue.buffering.max.kbytes": 256 * 1024,
    # A record not acknowledged in 2 minutes fails loudly instead of waiting librdkafka's default 5.
    "message.timeout.ms": 120_000,
    "log_level": 3,
    # The Java client's partitioner: Faust (aiokafka) and Kafka Streams place a key on the same partition, so a
    # repartitioned stream keyed by trace_id is co-partitioned with evo.steps.
    "partitioner": "murmur2_random",
}


_NOT_YET = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.LEADER_NOT_AVAILABLE)
"""What a just-created topic's metadata says until every part of the broker knows it."""


class EventProducer:
    """Produces bytes to Kafka and accounts for every record: acknowledged, failed, or still in flight."""

    def __init__(
        self,
        bootstrap: str,
        config: Mapping[str, Any] | None = None,
        send_timeout_s: float = 30.0,
        *,
        role: str | None = None,
    ):
        self.watch = ConnectionWatch(bootstrap, "producer")
        self.login = security.credentials(bootstrap, role)
        auth = {} if self.login is None else self.login.librdkafka()
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, **DEFAULT_CONFIG, **auth, **self.watch.config(), **(config or {})}
        )
        self._send_timeout_s = send_timeout_s
        self.delivered = 0
        self.failures: list[tuple[str, KafkaError]] = []

    def connect(self, topic: str, timeout_s: float = 10.0) -> None:
        """Fetch ``topic``'s metadata now, so the first send does not pay for the connection."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                md = self._producer.list_topics(topic, timeout=max(0.1, deadline - time.monotonic()))
            except KafkaException as e:
                raise DeliveryError(f"cannot reach the broker to produce to {topic}: {e}") from e
            t = md.topics.get(topic)
            if t is not None and t.error is None:
                return
            # a topic created a moment ago can be missing from the broker's metadata for a while: ask again
            retry = t is not None and t.error.code() in (
                KafkaError.UNKNOWN_TOPIC_OR_PART,
                KafkaError.LEADER_NOT_AVAILABLE,
            )
            if not retry or time.monotonic() >= deadline:
                raise DeliveryError(f"topic {topic} is not available: {t.error if t else 'missing'}")
            time.sleep(0.1)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failures.append((msg.topic() or "?", err))

    def send(
        self,
        topic: str,
        key: bytes | str | None,
        value: bytes,
        on_delivery: Callable[[DeliveryError | None], None] | None = None,
    ) -> None:
        """Queue one record; when the local queue is full, wait for deliveries (back-pressure) rather than drop.

        With ``on_delivery``, the record's outcome goes to it (None once acknowledged, else the DeliveryError) and
        not to the next ``send`` / ``flush``: the caller reports it where it belongs (the request client fails that
        request's future). It runs on whichever thread serves the producer's callbacks."""
        callback = self._on_delivery
        if on_delivery is not None:
            report = on_delivery

            def callback(err: KafkaError | None, msg: Message) -> None:
                if err is None:
                    self.delivered += 1
                    report(None)
                else:
                    report(self._error(msg.topic() or topic, err, f"record to {msg.topic() or topic} failed delivery"))

        deadline = 0.0
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=callback)
                break
            except KafkaException as e:  # refused by the client itself: too large, unknown topic, fatal state
                size = len(value) + (len(key) if key is not None else 0)
                raise DeliveryError(f"record to {topic} ({size:,} bytes with its key) was refused: {e}") from e
            except BufferError:
                now = time.monotonic()
                if not deadline:
                    deadline = now + self._send_timeout_s
                elif now > deadline:
                    raise DeliveryError(
                        f"producer queue stayed full for {self._send_timeout_s:.0f} s: the broker is not taking records"
                    ) from None
                self._producer.poll(0.05)
        self._producer.poll(0)
        self._raise_failures()

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued record is acknowledged; raise DeliveryError naming what was not."""
        try:
            left = self._producer.flush(timeout_s)
        except KafkaException as e:
            raise DeliveryError(f"flush failed: {e}") from e
        self._raise_failures()
        if left:
            raise DeliveryError(f"{left} records were not acknowledged within {timeout_s:.0f} s")

    def _raise_failures(self) -> None:
        if self.failures:
            topic, err = self.failures[0]
            n = len(self.failures)
            self.failures = []
            raise self._error(topic, err, f"{n} records failed delivery; first to {topic}")

    def _error(self, topic: str, err: KafkaError, what: str) -> DeliveryError:
        """``err`` as the project's error: AuthorizationError when the broker's ACLs refused this principal."""
        if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            return AuthorizationError(f"{what}: {security.refusal(self.login, 'write to', topic)} ({err.str()})")
        return DeliveryError(f"{what}: {err.str()}")

    def discard(self) -> int:
        """Drop every record not yet acknowledged (after a reported failure); return how many were dropped."""
        left = len(self._producer)
        self._producer.purge()
        self._producer.flush(0)
        self.failures = []
        return left

    def poll(self) -> None:
        """Serve delivery reports and the connection watch without sending (an idle producer's callbacks wait for
        this, for send or for flush)."""
        self._producer.poll(0)
        self._raise_failures()

    def in_flight(self) -> int:
        return len(self._producer)
