"""A mirrored request's replies on the real broker: the candidate's SHADOW answer may come before production's
answer (it has a trace, hence a partition, of its own); both ways a client waits (its reply reader, and
``await_reply`` reading the topic) hand over production's answer, never the shadow's."""

from __future__ import annotations

import uuid

import pytest

from evostream.core.bus.admin import ensure_topics
from evostream.core.bus.producer import EventProducer
from evostream.core.clock import now_us
from evostream.producers.client import InferenceClient, Published
from evostream.producers.replies import ReplyBook, ReplyReader, is_reply
from evostream.schemas.catalog import CATALOG, COMPLETIONS
from evostream.schemas.codec import RecordCodec
from evostream.schemas.samples import completion

pytestmark = pytest.mark.integration


def publish_shadow_then_answer(kafka: str, rid: str) -> None:
    codec = RecordCodec("Completion")
    shadow = dict(completion(0), request_id=rid, reply_to=rid, trace_id=uuid.uuid4().hex, error=None)
    shadow.update(role="SHADOW", rollout_id="r-1", output_text="the candidate's answer", model_version="m@cand")
    shadow.update(finish_reason="STOP")
    answer = dict(completion(1), request_id=rid, reply_to=rid, trace_id=uuid.uuid4().hex, error=None)
    answer.update(role="ANSWER", rollout_id=None, output_text="production's answer", model_version="m@prod")
    answer.update(finish_reason="STOP")
    producer = EventProducer(kafka)
    for rec in (shadow, answer):  # one key, one partition: the shadow is read first, whatever the reader's order
        producer.send(COMPLETIONS, rid, codec.encode(rec))
        producer.flush(30)


def test_the_reply_reader_never_hands_over_a_shadow_answer_even_when_it_comes_first(kafka: str) -> None:
    ensure_topics(kafka, [t for t in CATALOG if t.name == COMPLETIONS])
    book = ReplyBook()
    rid = uuid.uuid4().hex
    reader = ReplyReader(kafka, book, now_us() - 5_000_000)
    try:
        fut = book.expect(rid)
        publish_shadow_then_answer(kafka, rid)
        reply = fut.result(60)
    finally:
        reader.close()
    assert (reply["role"], reply["model_version"]) == ("ANSWER", "m@prod")
    assert reply["output_text"] == "production's answer"


def test_await_reply_reading_the_topic_skips_a_shadow_answer(kafka: str) -> None:
    ensure_topics(kafka, [t for t in CATALOG if t.name == COMPLETIONS])
    rid = uuid.uuid4().hex
    sent = Published(rid, now_us())
    publish_shadow_then_answer(kafka, rid)
    client = InferenceClient(kafka)
    try:
        reply = client.await_reply(sent, timeout_s=60)
    finally:
        client.close()
    assert (reply["role"], reply["model_version"]) == ("ANSWER", "m@prod")


def test_is_reply_refuses_shadows_and_escalated_partials() -> None:
    base = dict(completion(0), error=None, finish_reason="STOP", role="ANSWER")
    assert is_reply(base)
    assert not is_reply(dict(base, role="SHADOW"))
    assert not is_reply(dict(base, finish_reason="ESCALATED"))
    assert is_reply({k: v for k, v in base.items() if k != "role"})  # a Completion older than v4 answers
