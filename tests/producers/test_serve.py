"""The producer service against the real broker: requests in, one step event per token and a completion out."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from evostream.core.bus.consumer import EventConsumer
from evostream.core.bus.producer import EventProducer
from evostream.core.bus.security import client_config
from evostream.core.clock import now_us
from evostream.producers.client import BadRequestError, InferenceClient, Published
from evostream.producers.embedding import PromptEmbedder
from evostream.producers.service import InferenceService, ServeOptions
from evostream.schemas.catalog import DLQ, REQUESTS
from evostream.schemas.codec import RecordCodec
from evostream.schemas.tensors import step_heads, step_layers
from tests.producers.models import tiny

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(kafka: str) -> Iterator[InferenceService]:
    svc = InferenceService(
        kafka, tiny("t5"), PromptEmbedder(), ServeOptions(max_batch=4, max_wait_ms=20, max_prompt_tokens=64)
    )
    ready = threading.Event()
    thread = threading.Thread(target=svc.run, kwargs={"on_ready": ready.set}, daemon=True)
    thread.start()
    assert ready.wait(30)
    yield svc
    svc.stop_event.set()
    thread.join(60)
    assert not thread.is_alive(), "the service did not stop after its in-flight batch"


def check_steps(steps: list[dict[str, object]]) -> Counter[str]:
    for rec in steps:
        assert step_layers(rec, "layer_hidden_l2").shape == (2,)
        assert step_heads(rec).shape == (2, 4)
        assert rec["attention_signal"] == "OUTPUT_NORM"
    return Counter(str(rec["trace_id"]) for rec in steps)


def test_each_request_gets_a_completion_and_one_step_event_per_token(kafka: str, service: InferenceService) -> None:
    client = InferenceClient(kafka)
    sent = [client.publish(p, max_new_tokens=n) for p, n in [("reverse: hello", 5), ("sort: cab", 7), ("add: 1+2", 3)]]
    replies = [client.await_reply(s, timeout_s=60) for s in sent]
    for s, r in zip(sent, replies, strict=True):
        assert r["request_id"] == s.request_id
        assert r["error"] is None
        assert r["finish_reason"] in ("STOP", "LENGTH")
        assert 1 <= r["token_count"] <= 7
        assert len(r["prompt_embedding"]) == 384
        assert r["model_version"] == "tiny-t5"
    steps = client.trace_steps({r["trace_id"] for r in replies}, sum(r["token_count"] for r in replies))
    counts = check_steps(steps)
    assert counts == Counter({r["trace_id"]: r["token_count"] for r in replies})


def test_oversize_prompt_and_bad_params_get_error_completions(kafka: str, service: InferenceService) -> None:
    client = InferenceClient(kafka)
    big = client.publish("x" * 500)
    zero = client.publish("reverse: abc", max_new_tokens=0)
    big_reply = client.await_reply(big, 60)
    assert big_reply["finish_reason"] == "ERROR"
    assert "exceeds the limit of 64" in big_reply["error"]
    zero_reply = client.await_reply(zero, 60)
    assert "max_new_tokens must be in 1..1024" in zero_reply["error"]


def test_empty_and_blank_prompts_get_error_completions_and_no_steps(kafka: str, service: InferenceService) -> None:
    """Published raw, as a client other than ours could: the service itself must refuse them."""
    producer = EventProducer(kafka)
    codec = RecordCodec("InferenceRequest")
    sent = []
    for prompt in ["", " \n\t "]:
        rid, submitted = uuid.uuid4().hex, now_us()
        params = {"max_new_tokens": 4, "do_sample": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": None}
        record = {
            "request_id": rid,
            "prompt": prompt,
            "params": params,
            "tenant": "test",
            "reply_to": rid,
            "submitted_at_us": submitted,
        }
        producer.send(REQUESTS, rid, codec.encode(record))
        sent.append(Published(rid, submitted))
    producer.flush(10)
    client = InferenceClient(kafka)
    replies = [client.await_reply(s, 60) for s in sent]
    for reply in replies:
        assert reply["finish_reason"] == "ERROR"
        assert reply["error"] == "the prompt is empty: there is nothing to answer"
        assert reply["output_text"] == "" and reply["token_count"] == 0
    assert client.trace_steps({r["trace_id"] for r in replies}, 1, timeout_s=3) == []


def _requests_end(kafka: str) -> int:
    """Sum of evo.requests' end offsets: grows by one for every request that reaches the broker."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {"bootstrap.servers": kafka, "group.id": f"test-{uuid.uuid4().hex}", "log_level": 0, **client_config(kafka)}
    )
    try:
        parts = c.list_topics(REQUESTS, timeout=10).topics[REQUESTS].partitions
        return sum(c.get_watermark_offsets(TopicPartition(REQUESTS, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def test_the_client_refuses_an_empty_prompt_before_publishing(kafka: str) -> None:
    client = InferenceClient(kafka)
    before = _requests_end(kafka)
    for prompt in ["", "   "]:
        with pytest.raises(BadRequestError, match=r"^the prompt is empty: there is nothing to answer$"):
            client.publish(prompt)
    assert _requests_end(kafka) == before  # nothing was sent
    client.publish("reverse: abc")
    assert _requests_end(kafka) == before + 1  # and the count would have seen it


def test_undecodable_request_goes_to_the_dead_letter_queue(kafka: str, service: InferenceService) -> None:
    key = f"garbage-{uuid.uuid4().hex}".encode()
    producer = EventProducer(kafka)
    producer.send(REQUESTS, key, b"this is not avro")
    producer.flush(10)
    codec = RecordCodec("DeadLetter")
    with EventConsumer(kafka, f"test-{uuid.uuid4().hex}", [DLQ]) as c:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for m in c.poll_batch(100, 0.5):
                rec = codec.decode(m.value() or b"")
                if rec["original_key"] == key:
                    assert rec["error_type"] == "BadMagicError"
                    assert rec["raw_value"] == b"this is not avro"
                    assert rec["source_topic"] == REQUESTS
                    return
    pytest.fail("no dead letter for the undecodable request")
