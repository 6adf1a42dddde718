"""How the transactional producer names a failure the client library reports badly: when being fenced turns the
producer fatal inside a call, the binding can fail that call with a bare SystemError that carries no KafkaError
(seen once in the full suite: "flush returned NULL without setting an exception"). The fence itself reaches the
error callback, and the writer must still say ConflictError, which callers retry, not DeliveryError."""

from __future__ import annotations

from confluent_kafka import KafkaError

from evostream.core.bus.transactional import TransactionalProducer
from evostream.core.errors import ConflictError, DeliveryError

BARE = SystemError("<method 'flush' of 'cimpl.Producer' objects> returned NULL without setting an exception")


def writer() -> TransactionalProducer:
    return TransactionalProducer("127.0.0.1:9", "test-unit-writer", timeout_s=1.0)  # no broker is contacted


def test_a_bare_system_error_after_the_error_callback_saw_the_fence_is_a_conflict() -> None:
    w = writer()
    w._on_error(KafkaError(KafkaError._FENCED, "Local: This instance has been fenced by a newer instance", fatal=True))
    err = w._kafka_error("deliver its records", BARE)
    assert isinstance(err, ConflictError) and w.fenced
    assert "fenced" in str(err) and "returned NULL" in str(err)


def test_a_bare_system_error_without_a_fence_stays_a_delivery_error() -> None:
    w = writer()
    err = w._kafka_error("deliver its records", BARE)
    assert type(err) is DeliveryError and not w.fenced
    assert "could not deliver its records" in str(err)
