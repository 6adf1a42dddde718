"""A writer fenced for real on the broker, whose failed call the client reported as a bare SystemError (no
KafkaError attached, seen in full-suite runs from `flush`): the writer asks librdkafka what happened and says
ConflictError, which the governance log retries, not DeliveryError."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from confluent_kafka import KafkaException

from evostream.core.bus.transactional import TransactionalProducer
from evostream.core.errors import ConflictError, DeliveryError
from evostream.schemas.catalog import REQUESTS
from tests.core.test_transactional_errors import BARE

pytestmark = pytest.mark.integration


def test_a_bare_system_error_on_a_writer_fenced_on_the_broker_is_a_conflict(kafka: str) -> None:
    wid = f"test-fence-{uuid.uuid4().hex[:8]}"
    a = TransactionalProducer(kafka, wid, timeout_s=20.0)
    a.init()
    a.begin()
    b = TransactionalProducer(kafka, wid, timeout_s=20.0)
    b.init()  # fences a on the broker
    a.produce(REQUESTS, None, b"x")  # a topic that exists, so a adds its partition and meets the fence
    with contextlib.suppress(KafkaException, SystemError):  # a meets the fence here and turns fatal
        a._producer.flush(10)
    a.fenced = False  # as when the error callback did not report it: the writer must find out by asking
    err = a._kafka_error("deliver its records", BARE)
    assert isinstance(err, ConflictError) and a.fenced, err
    assert "returned NULL" in str(err)


def test_a_bare_system_error_on_a_live_writer_is_a_delivery_error_and_aborts(kafka: str) -> None:
    a = TransactionalProducer(kafka, f"test-fence-{uuid.uuid4().hex[:8]}", timeout_s=20.0)
    a.init()
    a.begin()
    err = a._kafka_error("deliver its records", BARE)
    assert type(err) is DeliveryError and not a.fenced and not a.in_transaction
    a.begin()  # the abort left the writer usable
