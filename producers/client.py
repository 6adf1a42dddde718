"""The request client: publish an InferenceRequest, await its Completion."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from evostream.bus.consumer import EventConsumer
from evostream.bus.producer import EventProducer
from evostream.clock import now_us
from evostream.errors import EvoError
from schemas.catalog import COMPLETIONS, REQUESTS, STEPS
from schemas.codec import RecordCodec


class ReplyTimeoutError(EvoError):
    """No Completion arrived for a request before the deadline."""


class BadRequestError(EvoError):
    """A request that no service would serve: the client refuses it before publishing."""


def prompt_problem(prompt: str) -> str | None:
    """Why ``prompt`` cannot be served, or None. The service applies the same rule, since other clients exist.

    A prompt of whitespace only counts as empty: it carries no instruction for any model evostream serves (the
    default model answers it with the same invented text as the empty prompt), and typing one is the same mistake.
    """
    if not prompt.strip():
        return "the prompt is empty: there is nothing to answer"
    return None


@dataclass(frozen=True)
class Published:
    request_id: str
    submitted_at_us: int


class InferenceClient:
    """Publishes requests to evo.requests and reads their Completions from evo.completions."""

    def __init__(self, bootstrap: str, tenant: str = "default") -> None:
        self.bootstrap = bootstrap
        self.tenant = tenant
        self._producer = EventProducer(bootstrap)
        self._requests = RecordCodec("InferenceRequest")
        self._completions = RecordCodec("Completion")

    def publish(self, prompt: str, max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
                top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                request_id: str | None = None) -> Published:  # fmt: skip
        """Send one request and wait for the broker's acknowledgement; an empty prompt is refused unsent."""
        problem = prompt_problem(prompt)
        if problem is not None:
            raise BadRequestError(problem)
        rid = request_id or uuid.uuid4().hex
        submitted = now_us()
        record = {
            "request_id": rid,
            "prompt": prompt,
            "params": {
                "max_new_tokens": max_new_tokens,
                "do_sample": do_sample,
                "temperature": temperature,
                "top_k": top_k,
                "top_p": top_p,
                "seed": seed,
            },
            "tenant": self.tenant,
            "reply_to": rid,
            "submitted_at_us": submitted,
        }
        self._producer.send(REQUESTS, rid, self._requests.encode(record))
        self._producer.flush(30)
        return Published(rid, submitted)

    def await_reply(self, published: Published, timeout_s: float = 60.0) -> dict[str, Any]:
        """The Completion answering ``published``, read from the completions published since it was sent."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"evostream-client-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "log_level": 3})  # fmt: skip
        try:
            md = consumer.list_topics(COMPLETIONS, timeout=10)
            since_ms = published.submitted_at_us // 1000 - 5000  # clock slack between client and broker
            parts = [TopicPartition(COMPLETIONS, p, since_ms) for p in md.topics[COMPLETIONS].partitions]
            consumer.assign(consumer.offsets_for_times(parts, timeout=10))
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                for msg in consumer.consume(500, timeout=0.5):
                    if msg.error() or msg.value() is None:
                        continue
                    rec = self._completions.decode_or_skip(msg.value())
                    if rec is not None and rec["reply_to"] == published.request_id:
                        return rec
        finally:
            consumer.close()
        raise ReplyTimeoutError(f"no completion for request {published.request_id} within {timeout_s:.0f} s; "
                                "is `evostream serve` running?")  # fmt: skip

    def trace_steps(self, trace_ids: set[str], expected: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """The GenerationStep events of ``trace_ids`` on evo.steps: reads until ``expected`` are found or time is up."""
        codec = RecordCodec("GenerationStep")
        found: list[dict[str, Any]] = []
        with EventConsumer(self.bootstrap, f"evostream-client-{uuid.uuid4().hex}", [STEPS]) as consumer:
            deadline = time.monotonic() + timeout_s
            while len(found) < expected and time.monotonic() < deadline:
                for msg in consumer.poll_batch(5000, 0.5):
                    rec = codec.decode_or_skip(msg.value())
                    if rec is not None and rec["trace_id"] in trace_ids:
                        found.append(rec)
        return found
