"""TopicReader from a time, on the real broker: a record written the moment after the reader is built is read."""

from __future__ import annotations

import uuid

import pytest

from evostream.core.bus.admin import ensure_topics
from evostream.core.bus.producer import EventProducer
from evostream.core.bus.reader import TopicReader
from evostream.core.clock import now_us
from evostream.schemas.catalog import TopicSpec
from evostream.schemas.codec import RecordCodec
from evostream.schemas.deadletter import dead_letter

pytestmark = pytest.mark.integration


def test_a_record_written_just_after_the_reader_starts_is_not_skipped(kafka: str) -> None:
    # A quiet topic, so that no partition has a record at or after `since`: every partition starts at its end. The
    # records are written after the reader has looked the time up and before it fetches, where an end resolved only
    # when fetching starts lay past them.
    topic = f"test-reader-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka, [TopicSpec(topic, "DeadLetter", "source_topic", 6, "delete", -1, "test topic")])
    codec = RecordCodec("DeadLetter")
    producer = EventProducer(kafka)
    old = [sample(codec, f"old-{i}") for i in range(12)]
    for i, value in enumerate(old):
        producer.send(topic, str(i), value)
    producer.flush()
    for attempt in range(3):
        since = now_us()
        with TopicReader(kafka, topic, "DeadLetter", since_us=since, idle_s=2.0, timeout_s=60) as reader:
            sent = [f"new-{attempt}-{i}" for i in range(12)]
            for i, key in enumerate(sent):
                producer.send(topic, str(i), sample(codec, key))
            producer.flush()
            got = [rec["error"] for rec in reader]
        assert sorted(got) == sorted(sent), f"attempt {attempt}: read {got}"


def sample(codec: RecordCodec, message: str) -> bytes:
    return codec.encode(dead_letter("t", 0, 0, None, b"x", ValueError(message), "test", now_us()))
