"""Continuous batching commits on the real broker: a short request read after a long one finishes first, and the
group's committed offset must stop at the long one until it is answered (else a crash would lose it)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from evostream.clock import now_us
from producers.batching import Row, RowStepCallback, RunningBatch
from producers.client import InferenceClient, Published
from producers.generate import InstrumentedGenerator
from producers.service import GROUP, InferenceService, ServeOptions
from schemas.catalog import REQUESTS
from schemas.codec import RecordCodec
from tests.producers.models import tiny

pytestmark = pytest.mark.integration
LONG = 40


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
        self.probe = Consumer({"bootstrap.servers": self.bootstrap, "group.id": GROUP, "log_level": 3})

    def committed(self) -> int:
        """Partition 0's committed offset for the serving group, as the broker has it (an OffsetFetch, no join)."""
        return int(self.probe.committed([TopicPartition(REQUESTS, 0)], timeout=10)[0].offset)

    def _new_batch(self) -> RunningBatch:
        return Observed(self.generator, self.options.max_batch, self)


def request(codec: RecordCodec, prompt: str, max_new_tokens: int) -> tuple[Published, bytes]:
    rid, at = uuid.uuid4().hex, now_us()
    rec = {"request_id": rid, "prompt": prompt, "tenant": "default", "reply_to": rid, "submitted_at_us": at,
           "params": {"max_new_tokens": max_new_tokens, "do_sample": False, "temperature": 1.0, "top_k": 0,
                      "top_p": 1.0, "seed": None}}  # fmt: skip
    return Published(rid, at), codec.encode(rec)


def test_the_commit_stops_at_a_long_request_in_flight_while_a_later_short_one_is_answered(kafka: str) -> None:
    lm = tiny("t5")
    options = ServeOptions(max_batch=4, max_wait_ms=5, max_prompt_tokens=64, batching="continuous", admit_min=1)
    svc = ObservedService(kafka, lm, None, options)
    svc.generator.eos_id = None  # every row runs to its limit: the long one is surely still decoding
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    try:
        codec = RecordCodec("InferenceRequest")
        (long_p, long_v), (short_p, short_v) = request(codec, "reverse: long", LONG), request(codec, "reverse: x", 2)
        offsets: list[int] = []
        producer = Producer({"bootstrap.servers": kafka, "linger.ms": 50})  # both in one batch, in this order
        for value in (long_v, short_v):
            producer.produce(REQUESTS, value, partition=0, on_delivery=lambda err, msg: offsets.append(msg.offset()))
        assert producer.flush(30) == 0 and len(offsets) == 2
        long_at, short_at = sorted(offsets)

        client = InferenceClient(kafka)
        assert client.await_reply(short_p, 120)["error"] is None
        assert client.await_reply(long_p, 120)["token_count"] == LONG
        client.close()
    finally:
        svc.stop_event.set()
        thread.join(60)
        final = svc.committed()
        svc.probe.close()
    assert not thread.is_alive()

    alone = [committed for held, committed in svc.seen if held == {long_p.request_id}]
    together = [held for held, _ in svc.seen if held == {long_p.request_id, short_p.request_id}]
    assert together, "the two requests never decoded side by side"
    assert alone, "the long request never decoded alone after the short one left"
    # while the long request was in flight, the commit never passed it ...
    assert all(c <= long_at for held, c in svc.seen if long_p.request_id in held), svc.seen
    # ... though the short one after it was done: the commit went up to the long one and waited there
    assert alone[-1] == long_at, (alone, long_at, short_at)
    # and once both were answered, past both
    assert final == short_at + 1
