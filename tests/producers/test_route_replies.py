"""A routed request's replies on the real broker: the self model's ESCALATED partial answer comes first, then the
reference's final Completion; both ways a client waits (its reply reader, and ``await_reply`` reading the topic)
hand over the final one."""

from __future__ import annotations

import uuid

import pytest

from evostream.core.bus.admin import ensure_topics
from evostream.core.bus.producer import EventProducer
from evostream.core.clock import now_us
from evostream.producers.client import InferenceClient, Published
from evostream.producers.replies import ReplyBook, ReplyReader
from evostream.schemas.catalog import CATALOG, COMPLETIONS
from evostream.schemas.codec import RecordCodec
from evostream.schemas.samples import completion

pytestmark = pytest.mark.integration


def publish_partial_then_final(kafka: str, rid: str) -> None:
    codec = RecordCodec("Completion")
    partial = dict(completion(0), request_id=rid, reply_to=rid, trace_id=uuid.uuid4().hex)
    partial.update(finish_reason="ESCALATED", output_text="the self model's start", model_version="self@1")
    final = dict(completion(1), request_id=rid, reply_to=rid, trace_id=uuid.uuid4().hex)
    final.update(finish_reason="STOP", output_text="the reference's answer", model_version="reference@2")
    producer = EventProducer(kafka)
    for rec in (partial, final):
        producer.send(COMPLETIONS, rec["trace_id"], codec.encode(rec))
        producer.flush(30)  # in this order on the topic's partitions' timeline


def test_the_reply_reader_skips_an_escalated_partial_and_hands_over_the_final_answer(kafka: str) -> None:
    ensure_topics(kafka, [t for t in CATALOG if t.name == COMPLETIONS])
    book = ReplyBook()
    rid = uuid.uuid4().hex
    reader = ReplyReader(kafka, book, now_us() - 5_000_000)
    try:
        fut = book.expect(rid)
        publish_partial_then_final(kafka, rid)
        reply = fut.result(60)
    finally:
        reader.close()
    assert reply["finish_reason"] == "STOP"
    assert reply["output_text"] == "the reference's answer"
    assert reply["model_version"] == "reference@2"


def test_await_reply_reading_the_topic_skips_an_escalated_partial(kafka: str) -> None:
    ensure_topics(kafka, [t for t in CATALOG if t.name == COMPLETIONS])
    rid = uuid.uuid4().hex
    sent = Published(rid, now_us())
    publish_partial_then_final(kafka, rid)
    client = InferenceClient(kafka)
    try:
        reply = client.await_reply(sent, timeout_s=60)
    finally:
        client.close()
    assert reply["finish_reason"] == "STOP"
    assert reply["model_version"] == "reference@2"
