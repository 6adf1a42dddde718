"""A route's reference targets: the stronger model a request goes to when the self model is not trusted with it.

Two kinds behind one protocol (``ReferenceTarget``):

- ``GovernedTarget``: another governed version, loaded in this process beside the self model, generating with its
  own ``InstrumentedGenerator``; its steps are emitted like the self model's (``Emit``), so the log holds the
  reference's token statistics too.
- ``OpenAITarget``: a model behind an OpenAI-compatible server (vLLM, llama.cpp, Ollama, another evostream),
  called on ``POST <base>/completions``, non-streaming, one request per prompt (a batch's prompts at once, up to
  ``max_concurrent``); its version is ``external:<model>``. A failed call (an HTTP error, a timeout, an answer that
  is not the wire format) is that request's error answer, never the service's crash.

``parse_reference`` reads the ``--reference`` / ``EVOSTREAM_ROUTE_REFERENCE`` text. Loading a governed version's
artifact is wiring (the governance log and the artifact store), done by the CLI."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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

    def answer(self, prompts: Sequence[str], params: GenParams, metas: Sequence[TraceMeta], emit: Emit) -> list[Answer]:
        """One answer per prompt, in order; a failure is an error Answer, never an exception."""
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

    def answer(self, prompts: Sequence[str], params: GenParams, metas: Sequence[TraceMeta], emit: Emit) -> list[Answer]:
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


class OpenAITarget:
    """A model behind an OpenAI-compatible ``/v1/completions`` endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str | None,
        timeout_s: float = 60.0,
        client: httpx.Client | None = None,
        max_concurrent: int = 8,
    ) -> None:
        """``model`` None: the server's first model (``GET <base>/models``), asked now, so that every decision and
        Completion names the model that answers. ``max_concurrent``: a batch's prompts in flight at once."""
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
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

    def answer(self, prompts: Sequence[str], params: GenParams, metas: Sequence[TraceMeta], emit: Emit) -> list[Answer]:
        if len(prompts) == 1:
            return [self._one(prompts[0], params)]
        return list(self._pool.map(lambda p: self._one(p, params), prompts))

    def _one(self, prompt: str, params: GenParams) -> Answer:
        url = f"{self.base_url}/completions"
        try:
            reply = self.client.post(url, json=self.body(prompt, params), timeout=self.timeout_s)
        except httpx.TimeoutException:
            return Answer(None, "", f"reference {self.version}: no answer from {url} within {self.timeout_s:g} s")
        except httpx.HTTPError as e:
            return Answer(None, "", f"reference {self.version}: {url}: {type(e).__name__}: {e}")
        if reply.status_code != 200:
            return Answer(
                None, "", f"reference {self.version}: {url} answered HTTP {reply.status_code}: {reply.text[:300]}"
            )
        try:
            data = reply.json()
            choice = data["choices"][0]
            text = str(choice["text"])
            usage = data.get("usage") or {}
            gen = Generated(
                finish_reason=FINISH.get(str(choice.get("finish_reason")), "STOP"),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                decode_us=int(reply.elapsed.total_seconds() * 1e6),
            )
            return Answer(gen, text, output_tokens=int(usage.get("completion_tokens", 0)))
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return Answer(None, "", f"reference {self.version}: {url} did not answer in the OpenAI format: {e!r}")

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
    """The trace of a request's answer by another target: same request, reply key and tenant, a new trace id."""
    return TraceMeta(uuid.uuid4().hex, meta.request_id, meta.reply_to, meta.tenant, meta.submitted_at_us)
