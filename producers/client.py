"""The request client: publish InferenceRequests, await their Completions.

One client keeps one producer and, from its first request on, one reader of evo.completions that routes each
completion to the request waiting for it (``producers.replies``). Requests can be pipelined: ``submit`` returns at
once with a ``Reply`` to wait on, at most ``max_in_flight`` are outstanding (``submit`` blocks for a free slot), and
``infer_many`` / ``ainfer`` wrap the common cases for threads and asyncio."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from evostream.core.bus.admin import ensure_topics
from evostream.core.bus.producer import EventProducer
from evostream.core.bus.reader import TopicReader
from evostream.core.clock import now_us
from evostream.core.errors import DeliveryError, EvoError
from evostream.producers.replies import Record, ReplyBook, ReplyReader, is_reply
from evostream.producers.slots import Slots
from evostream.prompts.template import TemplateError, parse_ref
from evostream.schemas.catalog import CATALOG, COMPLETIONS, REQUESTS, STEPS
from evostream.schemas.codec import RecordCodec

log = logging.getLogger("evostream.client")


class ReplyTimeoutError(EvoError):
    """No Completion arrived for a request before the deadline."""


class BadRequestError(EvoError):
    """A request that no service would serve: the client refuses it before publishing."""


MAX_ID_CHARS = 256
"""The longest request id, reply key or tenant a request may carry: each is copied into its Completion (and the
tenant into every step event), and an id near the size limit would make the answer itself too large to send."""


def ids_problem(request_id: str, reply_to: str, tenant: str) -> str | None:
    """Why a request's ids make it unanswerable, or None. The service applies the same rule, since other clients
    exist: it dead-letters such a request (no Completion could carry its ids back)."""
    for name, value in (("request_id", request_id), ("reply_to", reply_to), ("tenant", tenant)):
        if len(value) > MAX_ID_CHARS:
            return f"{name} of {len(value):,} characters exceeds the limit of {MAX_ID_CHARS}"
    return None


def prompt_problem(prompt: str) -> str | None:
    """Why ``prompt`` cannot be served, or None. The service applies the same rule, since other clients exist.

    A prompt of whitespace only counts as empty: it carries no instruction for any model evostream serves (the
    default model answers it with the same invented text as the empty prompt), and typing one is the same mistake.
    """
    if not prompt.strip():
        return "the prompt is empty: there is nothing to answer"
    return None


def template_problem(template: str | None) -> str | None:
    """Why ``template`` names no template version (the service resolves what it names), or None."""
    if template is None:
        return None
    try:
        parse_ref(template)
    except TemplateError as e:
        return str(e)
    return None


@dataclass(frozen=True)
class Published:
    request_id: str
    submitted_at_us: int


CLOCK_SLACK_US = 5_000_000
"""How far before its start the reply reader looks (clock slack between the client and the broker)."""


class Reply:
    """A request in flight: ``result`` waits for its Completion; ``await reply`` does the same in asyncio."""

    def __init__(self, client: InferenceClient, published: Published, future: Future[Record]) -> None:
        self.published = published
        self.future = future
        self._client = client

    @property
    def request_id(self) -> str:
        return self.published.request_id

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout_s: float | None = 60.0) -> Record:
        """The Completion; ReplyTimeoutError (the request is then given up) if none came within ``timeout_s``."""
        try:
            return self.future.result(timeout_s)
        except FutureTimeout:
            self._client._give_up(self.published.request_id)
            raise self._client._timeout(self.published, timeout_s) from None
        except CancelledError:
            raise self._client._timeout(self.published, timeout_s) from None

    async def aresult(self, timeout_s: float | None = 60.0) -> Record:
        """``result`` for asyncio. Cancelling the awaiting task gives the request up and cancels the task as usual."""
        waiting = asyncio.shield(asyncio.wrap_future(self.future))  # a cancel of this task must not look like ours
        try:
            return await asyncio.wait_for(waiting, timeout_s)
        except TimeoutError:
            self._client._give_up(self.published.request_id)
            raise self._client._timeout(self.published, timeout_s) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.future.cancelled() and not (task is not None and task.cancelling()):
                raise self._client._timeout(self.published, timeout_s) from None  # given up elsewhere
            self._client._give_up(self.published.request_id)
            raise


class InferenceClient:
    """Publishes requests to evo.requests and reads their Completions from evo.completions.

    Thread-safe: many threads (or one asyncio loop) may submit through one client. ``close`` (or ``with``) stops
    its reader and fails what still waits."""

    def __init__(self, bootstrap: str, tenant: str = "default", max_in_flight: int = 1024) -> None:
        if max_in_flight < 1:
            raise BadRequestError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.bootstrap = bootstrap
        self.tenant = tenant
        self.max_in_flight = max_in_flight
        # a request is sent at once (linger 1 ms, not 5): pipelined ones still share the produce requests that
        # leave while one is in flight, and a lone one does not wait
        self._producer = EventProducer(bootstrap, {"linger.ms": 1})
        self._requests = RecordCodec("InferenceRequest")
        self._book = ReplyBook()
        self._reader: ReplyReader | None = None
        self._lock = threading.Lock()
        self._slots = Slots(max_in_flight)
        self._closed = False

    # --- sending --------------------------------------------------------------------------------------------------
    def _record(
        self,
        prompt: str,
        max_new_tokens: int,
        do_sample: bool,
        temperature: float,
        top_k: int,
        top_p: float,
        seed: int | None,
        request_id: str | None,
        tenant: str | None = None,
        template: str | None = None,
    ) -> tuple[Published, bytes]:
        problem = prompt_problem(prompt) or template_problem(template)
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
            "tenant": self.tenant if tenant is None else tenant,
            "reply_to": rid,
            "submitted_at_us": submitted,
            "template": template,
        }
        return Published(rid, submitted), self._requests.encode(record)

    def _replies(self) -> ReplyReader:
        """The reply reader, started (and positioned) before the first request it must see is sent."""
        with self._lock:
            if self._closed:
                raise EvoError("this InferenceClient is closed")
            if self._reader is None:
                # a client may come before any service: the topics it writes and reads are created if missing
                ensure_topics(self.bootstrap, [t for t in CATALOG if t.name in (REQUESTS, COMPLETIONS)])
                self._reader = ReplyReader(self.bootstrap, self._book, now_us() - CLOCK_SLACK_US, self._serve_producer)
            return self._reader

    def _serve_producer(self) -> None:
        try:
            self._producer.poll()  # delivery reports of submitted requests (their outcome goes to their futures)
        except EvoError as e:  # each request's own failure reaches its future; this is the producer's state
            log.warning("request producer: %s", e)

    def publish(
        self,
        prompt: str,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        request_id: str | None = None,
        template: str | None = None,
    ) -> Published:
        """Send one request and wait for the broker's acknowledgement; an empty prompt is refused unsent. Its reply
        is kept for a later ``await_reply``. ``template``: a governed prompt template ('name' or 'name@version') the
        service renders the prompt into."""
        rid = [request_id] if request_id else None
        return self.publish_many([prompt], max_new_tokens, do_sample, temperature, top_k, top_p, seed, rid, template)[0]

    def publish_many(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        request_ids: Sequence[str] | None = None,
        template: str | None = None,
    ) -> list[Published]:
        """Send many requests with one wait for the broker's acknowledgement of all; every prompt is checked before
        any is sent."""
        ids: Sequence[str | None] = request_ids if request_ids is not None else [None] * len(prompts)
        if len(ids) != len(prompts):
            raise BadRequestError(f"{len(prompts)} prompts but {len(ids)} request ids")
        built = [
            self._record(p, max_new_tokens, do_sample, temperature, top_k, top_p, seed, rid, template=template)
            for p, rid in zip(prompts, ids, strict=True)
        ]
        self._replies()
        failed: list[EvoError] = []
        for published, value in built:
            self._book.expect_later(published.request_id)
            self._producer.send(
                REQUESTS, published.request_id, value, on_delivery=lambda e: failed.append(e) if e is not None else None
            )
        self._producer.flush(30)
        if failed:  # this call's records, not another's
            raise DeliveryError(f"{len(failed)} of {len(built)} requests were not delivered; first: {failed[0]}")
        return [published for published, _ in built]

    def submit(
        self,
        prompt: str,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        request_id: str | None = None,
        slot_timeout_s: float | None = None,
        template: str | None = None,
    ) -> Reply:
        """Send one request without waiting for anything but a free in-flight slot; the ``Reply`` fails if the
        request is not delivered to the broker. The request is stamped (``submitted_at_us``) when its slot is free,
        so a wait for a slot does not count as the service's queueing."""
        rid = self._admit(prompt, request_id, template)
        if not self._slots.acquire(slot_timeout_s):
            raise ReplyTimeoutError(
                f"no free slot among {self.max_in_flight} requests in flight within {slot_timeout_s} s"
            )
        record = self._record(prompt, max_new_tokens, do_sample, temperature, top_k, top_p, seed, rid, None, template)
        return self._send(*record)

    def _admit(self, prompt: str, request_id: str | None, template: str | None = None) -> str:
        """Refuse what would be refused anyway before waiting for a slot; the request id to use."""
        problem = prompt_problem(prompt) or template_problem(template)
        if problem is not None:
            raise BadRequestError(problem)
        rid = request_id or uuid.uuid4().hex
        self._replies()
        if self._book.awaited(rid):
            raise BadRequestError(f"request id {rid} is already in flight on this client")
        return rid

    def _send(self, published: Published, value: bytes) -> Reply:
        rid = published.request_id
        try:
            future = self._book.expect(rid, exclusive=True)
        except KeyError:
            self._slots.release()
            raise BadRequestError(f"request id {rid} is already in flight on this client") from None
        future.add_done_callback(lambda _: self._slots.release())  # exactly once: result, error or give-up

        def delivered(error: EvoError | None) -> None:
            if error is not None:
                self._book.fail(rid, error)

        try:
            self._producer.send(REQUESTS, rid, value, on_delivery=delivered)
        except EvoError as e:
            self._book.fail(rid, e)
        return Reply(self, published, future)

    async def asubmit(
        self,
        prompt: str,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        request_id: str | None = None,
        tenant: str | None = None,
        template: str | None = None,
    ) -> Reply:
        """``submit`` for asyncio: waits for a free slot without blocking the loop (woken when one is freed, no
        polling). ``tenant``: this request's, instead of the client's."""
        if self._reader is None:
            await asyncio.to_thread(self._replies)  # positioning the reader asks the broker: not on the loop
        rid = self._admit(prompt, request_id, template)
        await self._slots.aacquire()
        return self._send(
            *self._record(prompt, max_new_tokens, do_sample, temperature, top_k, top_p, seed, rid, tenant, template)
        )

    # --- waiting --------------------------------------------------------------------------------------------------
    def infer(self, prompt: str, timeout_s: float = 60.0, **params: Any) -> Record:
        """Send one request and return its Completion."""
        return self.submit(prompt, **params).result(timeout_s)

    def infer_many(self, prompts: Sequence[str], timeout_s: float = 60.0, **params: Any) -> list[Record]:
        """Pipeline ``prompts`` (at most ``max_in_flight`` outstanding) and return their Completions in order;
        ``timeout_s`` bounds the wait for each reply from when it is awaited."""
        problems = [(i, problem) for i, p in enumerate(prompts) if (problem := prompt_problem(p)) is not None]
        if problems:  # refused before any is sent
            raise BadRequestError(f"prompt {problems[0][0]}: {problems[0][1]}")
        replies = [self.submit(p, **params) for p in prompts]
        return [r.result(timeout_s) for r in replies]

    async def ainfer(self, prompt: str, timeout_s: float = 60.0, **params: Any) -> Record:
        """``infer`` for asyncio."""
        reply = await self.asubmit(prompt, **params)
        return await reply.aresult(timeout_s)

    def await_reply(self, published: Published, timeout_s: float = 60.0) -> Record:
        """The Completion answering ``published``: routed by this client's reader when this client sent it, else
        looked for among the completions written since it was sent."""
        rid = published.request_id
        if self._reader is not None and self._book.knows(rid):
            return Reply(self, published, self._book.expect(rid)).result(timeout_s)
        since_us = published.submitted_at_us - CLOCK_SLACK_US
        with TopicReader(
            self.bootstrap,
            COMPLETIONS,
            "Completion",
            since_us=since_us,
            idle_s=None,
            timeout_s=timeout_s,
            batch=500,
            name="client",
        ) as reader:
            for rec in reader:
                if rec["reply_to"] == rid and is_reply(rec):  # not an ESCALATED partial, not a SHADOW answer
                    return rec
        raise self._timeout(published, timeout_s)

    def _give_up(self, request_id: str) -> None:
        self._book.forget(request_id)

    def _timeout(self, published: Published, timeout_s: float | None) -> ReplyTimeoutError:
        reader = self._reader
        if reader is not None and reader.error is not None:
            return ReplyTimeoutError(
                f"no completion for request {published.request_id}: the reply reader failed: {reader.error}"
            )
        return ReplyTimeoutError(
            f"no completion for request {published.request_id} within {timeout_s} s; is `evostream serve` running?"
        )

    @property
    def in_flight(self) -> int:
        """Requests submitted whose reply has not come (nor been given up)."""
        return self._book.waiting

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what was sent, stop the reader; whatever still waits fails with a clear error."""
        with self._lock:
            self._closed = True
            reader, self._reader = self._reader, None
        try:
            self._producer.flush(timeout_s)
        finally:
            if reader is not None:
                reader.close(timeout_s)
            self._book.fail_all(EvoError("the InferenceClient was closed before its reply came"))

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def trace_steps(self, trace_ids: set[str], expected: int, timeout_s: float = 60.0) -> list[Record]:
        """The GenerationStep events of ``trace_ids`` on evo.steps: reads until ``expected`` are found or time is up."""
        found: list[Record] = []
        with TopicReader(
            self.bootstrap,
            STEPS,
            "GenerationStep",
            idle_s=None,
            timeout_s=timeout_s,
            until=lambda: len(found) >= expected,
            batch=5000,
            name="client",
        ) as reader:
            for rec in reader:
                if rec["trace_id"] in trace_ids:
                    found.append(rec)
        return found
