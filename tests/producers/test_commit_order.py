"""Continuous batching commits on the real broker: a short request read after a long one finishes first, and the
group's committed offset must stop at the long one until it is answered (else a crash would lose it)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from evostream.core.bus.security import client_config
from evostream.core.clock import now_us
from evostream.producers.batching import Row, RowStepCallback, RunningBatch
from evostream.producers.client import InferenceClient, Published
from evostream.producers.generate import InstrumentedGenerator
from evostream.producers.service import GROUP, InferenceService, ServeOptions
from evostream.schemas.catalog import REQUESTS
from evostream.schemas.codec import RecordCodec
from tests.producers.models import tiny

pytestmark = pytest.mark.integration
LONG = 40


def committed(probe: Consumer) -> int:
    """Partition 0's committed offset for the serving group, as the broker has it (an OffsetFetch, no join); a
    coordinator still loading on a fresh broker is asked again."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return int(probe.committed([TopicPartition(REQUESTS, 0)], timeout=10)[0].offset)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class Observed(RunningBatch):
    """The real running batch, each step slowed by 20 ms (so commit ticks land while the long request decodes), noting
    before each step which requests it holds and the group's committed offset on the broker at that moment."""

    def __init__(self, generator: InstrumentedGenerator, max_rows: int, svc: ObservedService) -> None:
        super().__init__(generator, max_rows)
        self.svc = svc

    def step(self, on_step: RowStepCallback | None = None) -> list[Row]:
        held = {self.svc._rows[row.key][0].meta.request_id for row in self.rows}
        self.svc.seen.append((held, self.svc.committed()))
        time.sleep(0.02)
        return super().step(on_step)


class ObservedService(InferenceService):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[set[str], int]] = []
        self.probe = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": GROUP, "log_level": 3, **client_config(self.bootstrap)}
        )

    def committed(self) -> int:
        return committed(self.probe)

    def _new_batch(self) -> RunningBatch:
        return Observed(self.generator, self.options.max_batch, self)


def request(codec: RecordCodec, prompt: str, max_new_tokens: int) -> tuple[Published, bytes]:
    rid, at = uuid.uuid4().hex, now_us()
    rec = {
        "request_id": rid,
        "prompt": prompt,
        "tenant": "default",
        "reply_to": rid,
        "submitted_at_us": at,
        "params": {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "temperature": 1.0,
            "top_k": 0,
            "top_p": 1.0,
            "seed": None,
        },
    }
    return Published(rid, at), codec.encode(rec)


def publish_to_partition_0(kafka: str, values: list[bytes]) -> list[int]:
    """Send ``values`` to evo.requests partition 0, in this order; their offsets."""
    offsets: list[int] = []
    producer = Producer(
        {"bootstrap.servers": kafka, "linger.ms": 50, **client_config(kafka)}
    )  # in one batch, in this order
    for value in values:
        producer.produce(REQUESTS, value, partition=0, on_delivery=lambda err, msg: offsets.append(msg.offset()))
    assert producer.flush(30) == 0 and len(offsets) == len(values)
    return sorted(offsets)


def test_the_commit_stops_at_a_long_request_in_flight_while_later_short_ones_are_answered(kafka: str) -> None:
    lm = tiny("t5")
    options = ServeOptions(max_batch=4, max_wait_ms=5, max_prompt_tokens=64, batching="continuous", admit_min=1)
    svc = ObservedService(kafka, lm, None, options)
    svc.generator.eos_id = None  # every row runs to its limit: the long one is surely still decoding
    before = svc.committed()
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    try:
        codec = RecordCodec("InferenceRequest")
        first, long, last = (
            request(codec, "reverse: a", 2),
            request(codec, "reverse: long", LONG),
            request(codec, "reverse: b", 2),
        )
        first_at, long_at, last_at = publish_to_partition_0(kafka, [first[1], long[1], last[1]])
        assert before <= first_at

        client = InferenceClient(kafka)
        assert client.await_reply(first[0], 120)["error"] is None
        assert client.await_reply(last[0], 120)["error"] is None
        assert client.await_reply(long[0], 120)["token_count"] == LONG
        client.close()
    finally:
        svc.stop_event.set()
        thread.join(60)
        final = svc.committed()
        svc.probe.close()
    assert not thread.is_alive()

    rid = long[0].request_id
    alone = [committed for held, committed in svc.seen if held == {rid}]
    assert any(rid in held and len(held) > 1 for held, _ in svc.seen), "the long request never decoded beside another"
    assert alone, "the long request never decoded alone after the short ones left (the later one was answered first)"
    # while the long request was in flight, the commit never passed it, though the short one after it was done ...
    assert all(c <= long_at for held, c in svc.seen if rid in held), svc.seen
    # ... and it did move during the test: past the first short one, up to the long one, where it waited
    assert alone[-1] == long_at and before < long_at, (before, alone, long_at)
    # and once all were answered, past all three
    assert final == last_at + 1


class GatedEmbedding(InferenceService):
    """The real service (static batches) whose prompt embedding, on the completion thread, waits for the test."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entered, self.release = threading.Event(), threading.Event()
        self.probe = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": GROUP, "log_level": 3, **client_config(self.bootstrap)}
        )

    def _embed(self, prompts: list[str]) -> list[list[float]]:
        self.entered.set()
        assert self.release.wait(120), "the test never released the embedding"
        return super()._embed(prompts)

    def committed(self) -> int:
        return committed(self.probe)


def test_no_commit_passes_a_request_before_its_completion_is_sent(kafka: str) -> None:
    """The request is generated, but its Completion waits for its embedding: the service goes on (polling, ticking
    its commits), and the group's committed offset must not pass the request until the Completion is acknowledged."""
    svc = GatedEmbedding(kafka, tiny("t5"), None, ServeOptions(max_batch=4, max_wait_ms=5, max_prompt_tokens=64))
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    try:
        published, value = request(RecordCodec("InferenceRequest"), "reverse: held", 4)
        (at,) = publish_to_partition_0(kafka, [value])
        assert svc.entered.wait(120), "the request was never generated"
        held = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # the service loops (polls, commit ticks) all this while
            held.append(svc.committed())
            time.sleep(0.1)
        assert held and max(held) <= at, (held, at)
        svc.release.set()
        client = InferenceClient(kafka)
        assert client.await_reply(published, 60)["error"] is None
        client.close()
        deadline = time.monotonic() + 20
        while svc.committed() != at + 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert svc.committed() == at + 1  # once answered, committed
    finally:
        svc.release.set()
        svc.stop_event.set()
        thread.join(60)
        svc.probe.close()
    assert not thread.is_alive()
