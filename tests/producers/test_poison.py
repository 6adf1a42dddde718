"""Semantic poison for the inference service, against the real broker: records that decode (or nearly) but that no
model can answer, or that sit near the size limit. Each one gets an error Completion or a dead letter with its
reason, the request published after them is answered (no partition blocked), and the service is still up."""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from evostream.core.bus.producer import EventProducer
from evostream.core.bus.reader import TopicReader
from evostream.core.clock import now_us
from evostream.producers.client import MAX_ID_CHARS, InferenceClient, Published
from evostream.producers.service import InferenceService, ServeOptions
from evostream.schemas.catalog import DLQ, REQUESTS
from evostream.schemas.codec import MAGIC, RecordCodec
from evostream.schemas.deadletter import KEEP_BYTES
from tests.producers.models import tiny

pytestmark = pytest.mark.integration
LIMIT = 1_000_000
"""The client's message.max.bytes: a poison pill sits just under it with its key (the client counts 36 bytes more),
and is over it wrapped whole."""


@pytest.fixture(scope="module")
def service(kafka: str) -> Iterator[tuple[InferenceService, list[BaseException]]]:
    svc = InferenceService(kafka, tiny("t5"), None, ServeOptions(max_batch=4, max_wait_ms=20, max_prompt_tokens=64))
    ready = threading.Event()
    crashed: list[BaseException] = []

    def run() -> None:
        try:
            svc.run(on_ready=ready.set)
        except BaseException as e:  # the test says which record took it down
            crashed.append(e)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30)
    yield svc, crashed
    svc.stop_event.set()
    thread.join(60)
    assert not thread.is_alive(), "the service did not stop"


def request(rid: str, prompt: str = "reverse: abc", **changes: Any) -> dict[str, Any]:
    params = {"max_new_tokens": 4, "do_sample": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": None}
    record = {
        "request_id": rid,
        "prompt": prompt,
        "params": params | changes.pop("params", {}),
        "tenant": "poison",
        "reply_to": rid,
        "submitted_at_us": now_us(),
    }
    return record | changes


def dead_letters(kafka: str, since_us: int, keys: set[bytes], timeout_s: float = 60.0) -> dict[bytes, dict[str, Any]]:
    """The dead letters of ``keys`` written since ``since_us``, by original key."""
    found: dict[bytes, dict[str, Any]] = {}
    with TopicReader(
        kafka, DLQ, "DeadLetter", since_us=since_us, idle_s=None, timeout_s=timeout_s, until=lambda: keys <= set(found)
    ) as reader:
        for rec in reader:
            if rec["original_key"] in keys:
                found[rec["original_key"]] = rec
    return found


def good_request_is_answered(kafka: str, crashed: list[BaseException]) -> None:
    client = InferenceClient(kafka)
    reply = client.await_reply(client.publish("reverse: ok", max_new_tokens=3), timeout_s=90)
    assert not crashed, f"the service went down: {crashed[0]!r}"
    assert reply["error"] is None and reply["finish_reason"] in ("STOP", "LENGTH")


def test_a_poison_pill_near_the_size_limit_is_dead_lettered_in_part_and_the_next_request_served(
    kafka: str, service: tuple[InferenceService, list[BaseException]]
) -> None:
    _, crashed = service
    since = now_us()
    key = f"pill-{uuid.uuid4().hex}".encode()
    pill = (bytes(range(256)) * 4000)[: LIMIT - len(key) - 100]  # not Avro: its magic bytes are 00 01
    producer = EventProducer(kafka)
    producer.send(REQUESTS, key, pill)
    producer.flush(10)
    good_request_is_answered(kafka, crashed)
    rec = dead_letters(kafka, since, {key})[key]
    assert rec["error_type"] == "BadMagicError" and rec["source_topic"] == REQUESTS
    assert rec["raw_value"] == pill[:KEEP_BYTES] and rec["raw_truncated"] is True
    assert rec["raw_size"] == len(pill) and rec["raw_sha256"] == hashlib.sha256(pill).hexdigest()


def test_requests_no_model_can_answer_get_error_completions_with_their_reason(
    kafka: str, service: tuple[InferenceService, list[BaseException]]
) -> None:
    _, crashed = service
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "absurd max_new_tokens": ({"params": {"max_new_tokens": 2**31 - 1}}, "max_new_tokens must be in 1..1024"),
        "negative max_new_tokens": ({"params": {"max_new_tokens": -5}}, "max_new_tokens must be in 1..1024"),
        "NaN temperature": ({"params": {"do_sample": True, "temperature": float("nan")}}, "temperature must be > 0"),
        "NaN top_p": ({"params": {"top_p": float("nan")}}, r"top_p must be in \(0, 1\]"),
        "negative top_k": ({"params": {"top_k": -1}}, "top_k must be >= 0"),
        "empty prompt": ({"prompt": ""}, "the prompt is empty"),
        "blank prompt": ({"prompt": "\u3000\n\t "}, "the prompt is empty"),
        "huge prompt": ({"prompt": "x" * 900_000}, "exceeds the limit of 64"),
    }
    producer = EventProducer(kafka)
    codec = RecordCodec("InferenceRequest")
    sent = {}
    for name, (changes, _) in cases.items():
        rid = uuid.uuid4().hex
        rec = request(rid, **changes)
        producer.send(REQUESTS, rid, codec.encode(rec))
        sent[name] = Published(rid, rec["submitted_at_us"])
    producer.flush(10)
    client = InferenceClient(kafka)
    for name, (_, reason) in cases.items():
        reply = client.await_reply(sent[name], 90)
        assert reply["finish_reason"] == "ERROR", name
        assert re.search(reason, reply["error"] or ""), (name, reply["error"])
    good_request_is_answered(kafka, crashed)


def test_requests_whose_answer_could_not_be_sent_are_dead_lettered_and_odd_clocks_answered(
    kafka: str, service: tuple[InferenceService, list[BaseException]]
) -> None:
    _, crashed = service
    since = now_us()
    codec = RecordCodec("InferenceRequest")
    producer = EventProducer(kafka)
    long_id = "r" * 400_000
    dead = {  # a Completion copies these ids: near the limit, it could not be sent
        b"long-request-id": request(long_id),
        b"long-reply-to": request(uuid.uuid4().hex, reply_to="q" * 600_000),
        b"long-tenant": request(uuid.uuid4().hex, tenant="t" * (MAX_ID_CHARS + 1)),
    }
    for key, rec in dead.items():
        producer.send(REQUESTS, key, codec.encode(rec))
    # not a string where the schema says one: the prompt's bytes are not UTF-8
    body = codec.encode(request("bad-utf8", prompt="\u00e9\u00e9"))
    bad_utf8 = body.replace("\u00e9\u00e9".encode(), b"\xff\xfe")
    assert bad_utf8.startswith(MAGIC) and bad_utf8 != body
    producer.send(REQUESTS, b"bad-utf8", bad_utf8)
    clocks = {  # a client's clock can say anything: the answer comes, its queue time is 0
        "ancient": request(uuid.uuid4().hex, submitted_at_us=-(2**63)),
        "future": request(uuid.uuid4().hex, submitted_at_us=2**63 - 1),
    }
    for rec in clocks.values():
        producer.send(REQUESTS, rec["request_id"], codec.encode(rec))
    producer.flush(10)

    client = InferenceClient(kafka)
    for name, rec in clocks.items():
        reply = client.await_reply(Published(rec["request_id"], since), 90)
        assert reply["error"] is None and reply["timings"]["queue_us"] == 0, name
    found = dead_letters(kafka, since, {*dead, b"bad-utf8"})
    assert {k: (d["error_type"], d["error"]) for k, d in found.items()} == {
        b"long-request-id": (
            "BadRequestError",
            f"request_id of 400,000 characters exceeds the limit of {MAX_ID_CHARS}",
        ),
        b"long-reply-to": ("BadRequestError", f"reply_to of 600,000 characters exceeds the limit of {MAX_ID_CHARS}"),
        b"long-tenant": ("BadRequestError", f"tenant of {MAX_ID_CHARS + 1} characters exceeds the limit of 256"),
        b"bad-utf8": ("DecodeError", found[b"bad-utf8"]["error"]),
    }
    assert "corrupt body" in found[b"bad-utf8"]["error"]
    assert found[b"long-reply-to"]["raw_truncated"] and found[b"long-reply-to"]["raw_size"] > 600_000
    good_request_is_answered(kafka, crashed)
