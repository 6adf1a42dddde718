"""A route's reference targets: the stronger model a request goes to when the self model is not trusted with it.

Two kinds behind one protocol (``ReferenceTarget``):

- ``GovernedTarget``: another governed version, loaded in this process beside the self model, generating with its
  own ``InstrumentedGenerator``; its steps are emitted like the self model's (``Emit``), so the log holds the
  reference's token statistics too.
- ``OpenAITarget``: a model behind an OpenAI-compatible server (vLLM, llama.cpp, Ollama, another evostream),
  called on ``POST <base>/completions``, non-streaming, one request per prompt (a batch's prompts at once, up to
  ``max_concurrent``, all within ``batch_deadline_s``); its version is ``external:<model>``. A failed call (an HTTP
  error, a timeout, the batch's deadline passed, an answer that is not the wire format, checked field by field by
  ``read_completion``) is that request's error answer, never the service's crash.

``parse_reference`` reads the ``--reference`` / ``EVOSTREAM_ROUTE_REFERENCE`` text. Loading a governed version's
artifact is wiring (the governance log and the artifact store), done by the CLI."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from evostream.core.errors import EvoError
from evostream.models.loading import LoadedModel
from evostream.producers.generate import Generated, GenParams, InstrumentedGenerator
from evostream.producers.records import TokenTexts
from evostream.producers.steps import AttentionSignal, StepBatch, TraceMeta

log = logging.getLogger("evostream.serve")


class TargetError(EvoError):
    """A reference target that cannot be named, reached or used as configured."""


class Emit(Protocol):
    """Hands one step of a generation over for its GenerationStep events (the service's step emitter)."""

    def __call__(
        self,
        batch: StepBatch,
        metas: Sequence[TraceMeta],
        model_version: str,
        signal: AttentionSignal,
        token_texts: Sequence[str],
    ) -> None: ...


@dataclass
class Answer:
    """A reference's answer to one prompt: what it generated (token ids where it reports them, counts, timings), its
    text, or why it failed."""

    generated: Generated | None
    text: str
    error: str | None = None
    output_tokens: int | None = None
    """Tokens generated as the target counted them (an HTTP target reports counts, not ids); None: the ids'."""


class ReferenceTarget(Protocol):
    """The stronger model of a route."""

    @property
    def version(self) -> str:
        """What its Completions carry as model_version."""
        ...

    def answer(
        self,
        prompts: Sequence[str],
        params: GenParams,
        metas: Sequence[TraceMeta],
        emit: Emit,
        deadline: float | None = None,
    ) -> list[Answer]:
        """One answer per prompt, in order; a failure is an error Answer, never an exception. ``deadline``
        (``time.monotonic()``): the batch's, shared by all its calls; a target that waits on others ends its calls
        by then (an in-process model is bounded by the tokens it may generate instead)."""
        ...

    def close(self) -> None: ...


class GovernedTarget:
    """A second loaded model answering in-process, with its own instrumented generator."""

    def __init__(self, loaded: LoadedModel, generator: InstrumentedGenerator | None = None) -> None:
        self.loaded = loaded
        self.generator = generator or InstrumentedGenerator(loaded)
        self.texts = TokenTexts(loaded.tokenizer)

    @property
    def version(self) -> str:
        return self.loaded.version

    def answer(
        self,
        prompts: Sequence[str],
        params: GenParams,
        metas: Sequence[TraceMeta],
        emit: Emit,
        deadline: float | None = None,
    ) -> list[Answer]:
        gen, version = self.generator, self.version

        def on_step(sb: StepBatch) -> None:
            emit(sb, metas, version, gen.signal, self.texts.rows(sb))

        try:
            results = gen.generate(list(prompts), params, on_step)
        except (EvoError, RuntimeError, ValueError) as e:  # a model error fails these requests, not the service
            log.exception("the reference %s failed for %d requests", version, len(prompts))
            return [Answer(None, "", f"reference {version}: model error: {e}") for _ in prompts]
        tok = self.loaded.tokenizer
        return [Answer(r, tok.decode(r.token_ids, skip_special_tokens=True)) for r in results]

    def close(self) -> None:
        self.generator.close()


FINISH = {"stop": "STOP", "length": "LENGTH", "eos": "STOP"}
"""OpenAI finish reasons as a Completion's (anything else: STOP)."""

POLL_INTERVAL_S = 300.0
"""The inference consumer's ``max.poll.interval.ms`` (librdkafka's default, set explicitly by the service): a member
that does not poll for this long leaves the group, and its requests are served again by another."""
BATCH_DEADLINE_S = POLL_INTERVAL_S / 3
"""How long one batch may wait on an HTTP reference in all (a third of the poll interval: the self model's
generation, the embedding and the step events of the batch have the rest)."""


class WireError(ValueError):
    """An answer that is not the OpenAI completions format."""


def read_completion(data: object) -> tuple[str, str, int, int]:
    """(text, finish reason, prompt tokens, completion tokens) of a ``/v1/completions`` answer body, each checked:
    an object with a non-empty ``choices`` list whose first item is an object with a string ``text``, and a
    ``usage`` (absent or null: no counts, 0) that is an object whose counts are non-negative integers. WireError
    says what is wrong."""
    if not isinstance(data, dict):
        raise WireError(f"the body is not an object: {type(data).__name__}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise WireError(f"no choices (a non-empty list): {choices!r:.100}")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise WireError(f"the choice is not an object: {choice!r:.100}")
    text = choice.get("text")
    if not isinstance(text, str):
        raise WireError(f"the choice's text is not a string: {text!r:.100}")
    usage = data.get("usage")
    if usage is None:
        usage = {}
    if not isinstance(usage, dict):
        raise WireError(f"usage is not an object: {usage!r:.100}")
    counts = []
    for name in ("prompt_tokens", "completion_tokens"):
        n = usage.get(name, 0)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise WireError(f"usage.{name} is not a count (a non-negative integer): {n!r:.100}")
        counts.append(n)
    finish = FINISH.get(str(choice.get("finish_reason")), "STOP")
    return text, finish, counts[0], counts[1]


class OpenAITarget:
    """A model behind an OpenAI-compatible ``/v1/completions`` endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str | None,
        timeout_s: float = 60.0,
        client: httpx.Client | None = None,
        max_concurrent: int = 8,
        batch_deadline_s: float = BATCH_DEADLINE_S,
    ) -> None:
        """``model`` None: the server's first model (``GET <base>/models``), asked now, so that every decision and
        Completion names the model that answers. ``max_concurrent``: a batch's prompts in flight at once.
        ``timeout_s`` bounds one call, ``batch_deadline_s`` all the calls of one ``answer``."""
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.batch_deadline_s = batch_deadline_s
        self.client = client or httpx.Client(timeout=timeout_s, limits=httpx.Limits(max_connections=max_concurrent))
        self.model = model or self._first_model()
        self._pool = ThreadPoolExecutor(max_concurrent, thread_name_prefix="evostream-reference")

    @property
    def version(self) -> str:
        return f"external:{self.model}"

    def _first_model(self) -> str:
        url = f"{self.base_url}/models"
        try:
            reply = self.client.get(url)
            reply.raise_for_status()
            models = [str(m["id"]) for m in reply.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            raise TargetError(
                f"the reference at {self.base_url} did not list its models ({url}: {e}); name the model: "
                f"{self.base_url}#<model>"
            ) from e
        if not models:
            raise TargetError(f"the reference at {self.base_url} serves no model; name one: {self.base_url}#<model>")
        return models[0]

    def body(self, prompt: str, params: GenParams) -> dict[str, Any]:
        """The request body of one prompt: greedy as temperature 0, sampling with its temperature, top_p, seed."""
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": params.max_new_tokens,
            "stream": False,
            "temperature": params.temperature if params.do_sample else 0.0,
        }
        if params.do_sample:
            body["top_p"] = params.top_p
            if params.seed is not None:
                body["seed"] = params.seed
        return body

    def answer(
        self,
        prompts: Sequence[str],
        params: GenParams,
        metas: Sequence[TraceMeta],
        emit: Emit,
        deadline: float | None = None,
    ) -> list[Answer]:
        """The prompts asked at once (up to ``max_concurrent`` in flight), all by ``deadline`` and within
        ``batch_deadline_s`` of now: each call's timeout is what is left, and a call not answered by then is an error
        answer."""
        now = time.monotonic()
        end = now + self.batch_deadline_s if deadline is None else min(deadline, now + self.batch_deadline_s)
        calls = [self._pool.submit(self._guarded, p, params, end) for p in prompts]
        wait(calls, timeout=max(0.0, end - now))
        answers = []
        for call in calls:
            if call.done():
                answers.append(call.result())  # _guarded raises nothing
                continue
            call.cancel()  # not started: never asked; started: its own timeout ends it by the deadline
            answers.append(Answer(None, "", self._late()))
        return answers

    def _late(self) -> str:
        return (
            f"reference {self.version}: no answer from {self.base_url}/completions by the batch's deadline (its "
            f"reference calls end within {self.batch_deadline_s:g} s)"
        )

    def _guarded(self, prompt: str, params: GenParams, deadline: float) -> Answer:
        """One call; whatever it raises is its error answer."""
        left = deadline - time.monotonic()
        if left <= 0:
            return Answer(None, "", self._late())
        try:
            return self._one(prompt, params, min(self.timeout_s, left))
        except Exception as e:  # a reference's failure is its request's, never the service's
            log.exception("the reference %s failed", self.version)
            return Answer(None, "", f"reference {self.version}: {type(e).__name__}: {e}")

    def _one(self, prompt: str, params: GenParams, timeout_s: float) -> Answer:
        url = f"{self.base_url}/completions"
        try:
            reply = self.client.post(url, json=self.body(prompt, params), timeout=timeout_s)
        except httpx.TimeoutException:
            if timeout_s < self.timeout_s:
                return Answer(None, "", self._late())
            return Answer(None, "", f"reference {self.version}: no answer from {url} within {self.timeout_s:g} s")
        except httpx.HTTPError as e:
            return Answer(None, "", f"reference {self.version}: {url}: {type(e).__name__}: {e}")
        if reply.status_code != 200:
            return Answer(
                None, "", f"reference {self.version}: {url} answered HTTP {reply.status_code}: {reply.text[:300]}"
            )
        try:
            try:
                data = reply.json()
            except ValueError as e:  # not UTF-8 or not JSON (UnicodeDecodeError is a ValueError)
                raise WireError(f"the body is not JSON ({e}): {reply.content[:100]!r}") from e
            text, finish, prompt_tokens, output_tokens = read_completion(data)
        except WireError as e:
            return Answer(None, "", f"reference {self.version}: {url} did not answer in the OpenAI format: {e}")
        gen = Generated(
            finish_reason=finish, prompt_tokens=prompt_tokens, decode_us=int(reply.elapsed.total_seconds() * 1e6)
        )
        return Answer(gen, text, output_tokens=output_tokens)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()


@dataclass(frozen=True)
class ReferenceSpec:
    """A parsed ``--reference``: a governed version, or an OpenAI-compatible base URL and model."""

    kind: str
    """governed or http"""
    version: str = ""
    base_url: str = ""
    model: str | None = None


def parse_reference(text: str) -> ReferenceSpec:
    """``governed:<version>`` or ``http(s)://host[:port]/v1[#model]``; TargetError says what is wrong otherwise."""
    text = text.strip()
    if not text:
        raise TargetError(
            "a route needs a reference: --reference governed:<version> or --reference http://host:port/v1[#model]"
        )
    if text.startswith("governed:"):
        version = text.removeprefix("governed:").strip()
        if not version:
            raise TargetError("--reference governed:<version> names no version (e.g. governed:my-model@0123abcd)")
        return ReferenceSpec("governed", version=version)
    if text.startswith(("http://", "https://")):
        url, _, model = text.partition("#")
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 (a port that is not a number raises here)
        except ValueError as e:
            raise TargetError(f"--reference {text!r}: {e}") from e
        if not parts.hostname:
            raise TargetError(f"--reference {text!r} names no host (http://host:port/v1)")
        if parts.query:
            raise TargetError(f"--reference {text!r}: a base URL takes no query; name the model after #")
        return ReferenceSpec("http", base_url=url.rstrip("/"), model=model.strip() or None)
    raise TargetError(
        f"--reference {text!r} is neither governed:<version> nor an http(s)://host:port/v1[#model] base URL"
    )


def new_trace(meta: TraceMeta) -> TraceMeta:
    """The trace of a request's answer by another target: same request, reply key, tenant and template, a new trace
    id."""
    return replace(meta, trace_id=uuid.uuid4().hex)
