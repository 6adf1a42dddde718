"""The request client: publish an InferenceRequest, await its Completion."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from evostream.bus.producer import EventProducer
from evostream.bus.reader import TopicReader
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
        since_us = published.submitted_at_us - 5_000_000  # clock slack between client and broker
        with TopicReader(self.bootstrap, COMPLETIONS, "Completion", since_us=since_us, idle_s=None,
                         timeout_s=timeout_s, batch=500, name="client") as reader:  # fmt: skip
            for rec in reader:
                if rec["reply_to"] == published.request_id:
                    return rec
        raise ReplyTimeoutError(f"no completion for request {published.request_id} within {timeout_s:.0f} s; "
                                "is `evostream serve` running?")  # fmt: skip

    def trace_steps(self, trace_ids: set[str], expected: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """The GenerationStep events of ``trace_ids`` on evo.steps: reads until ``expected`` are found or time is up."""
        found: list[dict[str, Any]] = []
        with TopicReader(self.bootstrap, STEPS, "GenerationStep", idle_s=None, timeout_s=timeout_s,
                         until=lambda: len(found) >= expected, batch=5000, name="client") as reader:  # fmt: skip
            for rec in reader:
                if rec["trace_id"] in trace_ids:
                    found.append(rec)
        return found
