"""The producer's boundary: whatever the client refuses when a record is queued surfaces as a DeliveryError, so a
service's handling of delivery failures covers it (a bare KafkaException crashed the inference service and the sinks
runner on a dead letter over the size limit)."""

from __future__ import annotations

import pytest

from evostream.core.bus.producer import EventProducer
from evostream.core.errors import DeliveryError
from evostream.core.stack.ports import free_port

NOBODY = f"127.0.0.1:{free_port()}"  # refused at once: what is tested here happens before any broker is asked


def test_a_record_over_the_client_limit_is_a_delivery_error_naming_topic_and_size() -> None:
    producer = EventProducer(NOBODY)
    with pytest.raises(DeliveryError, match=r"record to evo\.dlq \(1,000,101 bytes with its key\) was refused: .*"):
        producer.send("evo.dlq", b"k", b"x" * 1_000_100)


def test_a_queue_that_stays_full_is_a_delivery_error() -> None:
    producer = EventProducer(NOBODY, {"queue.buffering.max.messages": 1}, send_timeout_s=0.3)
    producer.send("evo.dlq", b"k", b"first")
    with pytest.raises(DeliveryError, match=r"producer queue stayed full for 0 s"):
        producer.send("evo.dlq", b"k", b"second")
    assert producer.discard() >= 1  # the first record, still waiting for a broker
