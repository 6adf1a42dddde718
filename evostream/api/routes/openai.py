"""``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``: OpenAI's wire format, so OpenAI's
client libraries (and tools built on them) use evostream as they would any OpenAI-compatible server.

A request passes the front door (``door``: the tenant's rate limit and budget, then the response cache) and is
published as ``/infer``'s are; its tenant is its ``user`` (else ``http``). ``temperature`` 0 is greedy decoding
(the only kind the cache serves); above 0 samples; left out it is 1, as OpenAI's. A chat's prompt is its last user
message (the embedded model is a seq2seq model trained on single instructions: earlier turns and system messages are
not part of its input). The ``model`` asked for is not a choice: the inference service's model answers, and the
answer's ``model`` names the version that did.

With ``stream: true`` the answer comes as server-sent ``data: {chunk}`` lines ending with ``data: [DONE]``: tokens
as the service generates them (the request's steps on evo.steps, read by the API's live tail, decoded with the
version's tokenizer), the rest from the Completion when it comes. See docs/api.md for where that differs from
OpenAI."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request

from evostream.api.deps import OpenAIPublisher, OpenAIReader, State
from evostream.api.door import Ask
from evostream.api.errors import AnswerFailedError, TimeoutAnswerError, openai_error, openai_refusals
from evostream.api.openai_shapes import (
    CHAT_MAX_TOKENS,
    ChatBody,
    ChatCompletion,
    CompletionBody,
    ModelList,
    TextCompletion,
)
from evostream.api.quota import client_key
from evostream.api.routes.infer import at_door, complete, disconnected, tenant_of, through_door
from evostream.api.sse import Admitted
from evostream.api.state import ApiState
from evostream.core.errors import EvoError
from evostream.schemas.catalog import ROUTES, STEPS
from evostream.views.token_text import TokenDecoder

router = APIRouter(prefix="/v1", tags=["openai"], responses=openai_refusals(400, 401, 429, 502, 503, 504))
ANSWER_TIMEOUT_S = 120.0
"""How long a request waits for its answer (OpenAI's bodies carry no timeout)."""
COMPLETION_MAX_TOKENS = 16
"""A completion's length when the request names none (OpenAI's default)."""
Kind = Literal["text", "chat"]
Record = dict[str, Any]


@router.post("/completions", response_model=TextCompletion, summary="OpenAI-compatible text completion")
async def completions(body: CompletionBody, request: Request, state: State, caller: OpenAIPublisher) -> Any:
    ask = _ask(
        tenant_of(caller, body.user), body.text, body.model, body.max_tokens or COMPLETION_MAX_TOKENS, body.temperature
    )
    return await _serve(request, state, caller.actor, ask, "text", body.stream, body.stream_options)


@router.post("/chat/completions", response_model=ChatCompletion, summary="OpenAI-compatible chat completion")
async def chat_completions(body: ChatBody, request: Request, state: State, caller: OpenAIPublisher) -> Any:
    users = [m for m in body.messages if m.role == "user"]
    if not users:
        return openai_error(400, "messages: a chat needs a user message (its last one is the prompt)", param="messages")
    prompt = users[-1].text
    if not prompt.strip() or len(prompt) > 4000:
        return openai_error(400, "messages: the last user message has 1 to 4000 characters of text", param="messages")
    length = body.max_completion_tokens or body.max_tokens or CHAT_MAX_TOKENS
    ask = _ask(tenant_of(caller, body.user), prompt, body.model, length, body.temperature, body.top_p, body.seed)
    return await _serve(request, state, caller.actor, ask, "chat", body.stream, body.stream_options)


@router.get("/models", response_model=ModelList, summary="The models this API answers with")
def models(state: State, _: OpenAIReader) -> dict[str, Any]:
    """``evostream`` (whatever the inference service serves), and each governed model's production version."""
    cards = [{"id": "evostream", "object": "model", "created": 0, "owned_by": "evostream"}]
    try:
        registry = state.registry.get()
    except EvoError:
        registry = None  # no governance log (yet): the service's model only
    for model in [] if registry is None else registry.models.values():
        version = model.get("production")
        if version:
            info = model["versions"].get(version, {})
            created = int(info.get("registered_at_us", 0) // 1_000_000)
            cards.append({"id": version, "object": "model", "created": created, "owned_by": "evostream"})
    return {"object": "list", "data": cards}


def _ask(
    tenant: str,
    prompt: str,
    model: str,
    max_new_tokens: int,
    temperature: float | None,
    top_p: float | None = None,
    seed: int | None = None,
) -> Ask:
    t = 1.0 if temperature is None else temperature
    return Ask(
        tenant,
        prompt,
        model,
        max_new_tokens,
        do_sample=t > 0,
        temperature=t if t > 0 else 1.0,
        top_p=1.0 if top_p is None else top_p,
        seed=seed,
    )


async def _serve(
    request: Request, state: State, actor: str | None, ask: Ask, kind: Kind, stream: bool | None, options: Any
) -> Any:
    key = client_key(request, actor)
    state.infer_quota.take(key)
    released = [False]

    def release() -> None:
        if not released[0]:
            released[0] = True
            state.infer_quota.done(key)

    rid = uuid.uuid4().hex
    try:
        if not stream:
            gone = asyncio.ensure_future(disconnected(request))
            try:
                rec = await through_door(state, ask, ANSWER_TIMEOUT_S, gone, rid)
            finally:
                gone.cancel()
            return _whole(kind, ask, _checked(rec))
        cached, embedding = await at_door(state, ask, rid)
        usage = bool(options is not None and options.include_usage)
        events = _stream(state, ask, rid, kind, cached, embedding, usage)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        response = Admitted(release, events, media_type="text/event-stream", headers=headers)
        released[0] = True  # the stream's response gives the place back when it ends
        return response
    finally:
        if not released[0]:
            release()


UPSTREAM_FAILURES = ("model error", "reference ")
"""How the error of an answer the service failed begins (its model's error; the route's reference's, named by its
version); any other error is the service's refusal of the request itself (a prompt over its token limit)."""


def _checked(rec: Record) -> Record:
    """The answer, or its failure as an error: AnswerFailedError (502) when the model or the reference failed,
    BadRequestError (400) when the service refused the request."""
    error = rec.get("error")
    if rec.get("finish_reason") == "ERROR" or error:
        message = error or "the inference service failed this request"
        if not error or message.startswith(UPSTREAM_FAILURES) or ": model error" in message:
            raise AnswerFailedError(f"the inference service failed the answer: {message}")
        from evostream.producers.client import BadRequestError

        raise BadRequestError(f"the inference service refused the request: {message}")
    return rec


def _finish(rec: Record) -> str:
    return "length" if rec.get("finish_reason") == "LENGTH" else "stop"


def _usage(rec: Record) -> dict[str, int]:
    prompt, output = int(rec.get("prompt_token_count") or 0), int(rec.get("token_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}


def _info(ask: Ask, rid: str, rec: Record | None) -> dict[str, Any]:
    return {
        "request_id": rid if rec is None else rec["request_id"],
        "trace_id": None if rec is None else rec["trace_id"],
        "cached": bool(rec and rec.get("cached")),
        "cached_from": None if rec is None else rec.get("cached_from"),
        "cost_usd": 0.0 if rec is None else float(rec.get("cost_usd") or 0.0),
        "tenant": ask.tenant,
    }


def _whole(kind: Kind, ask: Ask, rec: Record) -> dict[str, Any]:
    common = {
        "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{rec['request_id']}",
        "created": int(rec["completed_at_us"] // 1_000_000),
        "model": rec["model_version"],
        "usage": _usage(rec),
        "system_fingerprint": None,
        "evostream": _info(ask, rec["request_id"], rec),
    }
    if kind == "chat":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": rec["output_text"]},
            "logprobs": None,
            "finish_reason": _finish(rec),
        }
        return {**common, "object": "chat.completion", "choices": [choice]}
    choice = {"index": 0, "text": rec["output_text"], "logprobs": None, "finish_reason": _finish(rec)}
    return {**common, "object": "text_completion", "choices": [choice]}


# --- streaming ---------------------------------------------------------------------------------------------------
class Chunks:
    """The stream's chunks of one request, in OpenAI's shape for ``kind``."""

    def __init__(self, kind: Kind, ask: Ask, rid: str) -> None:
        self.kind = kind
        self.ask = ask
        self.rid = rid
        self.created = int(time.time())
        self.model = ask.model

    def role(self) -> bytes:
        """A chat stream's first chunk: the assistant's role, no text yet."""
        return self.chunk("", role=True)

    def chunk(
        self, text: str | None, finish: str | None = None, rec: Record | None = None, role: bool = False
    ) -> bytes:
        if self.kind == "chat":
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if role:
                delta["role"] = "assistant"
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            obj = "chat.completion.chunk"
            cid = f"chatcmpl-{self.rid}"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
            cid = f"cmpl-{self.rid}"
        doc = {
            "id": cid,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "evostream": _info(self.ask, self.rid, rec),
        }
        return _event(doc)

    def usage(self, rec: Record) -> bytes:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        prefix = "chatcmpl" if self.kind == "chat" else "cmpl"
        doc = {
            "id": f"{prefix}-{self.rid}",
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": _usage(rec),
            "evostream": _info(self.ask, self.rid, rec),
        }
        return _event(doc)


def _event(doc: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(doc, allow_nan=False)}\n\n".encode()


DONE = b"data: [DONE]\n\n"


class Follower:
    """The text of one request's steps as they come: the tokens of its first trace, decoded together with the
    version's tokenizer (a token decoded alone loses the space before it), else joined as each step's
    ``token_text``. Text is handed on only when it extends what was sent (a partial UTF-8 sequence waits).

    A routed request's text is held (``hold``, or once a routing decision of the request is seen: ``routed``): its
    self model's answer may still move to the reference mid-answer, and that partial answer is not the answer. Its
    text is sent whole when its final Completion comes (``finish``)."""

    def __init__(self, tokens: TokenDecoder, hold: bool = False) -> None:
        self.tokens = tokens
        self.hold = hold
        self.trace: str | None = None
        self.version: str | None = None
        self.tokenizer: Any = None
        self.steps: dict[int, tuple[int, str]] = {}
        self.sent = ""
        self.moved = False

    def routed(self) -> None:
        """The request is routed: hold its text from now on."""
        self.hold = True

    async def step(self, rec: Record) -> str:
        if self.hold:
            return ""
        if self.trace is None:
            self.trace, self.version = rec["trace_id"], rec["model_version"]
            self.tokenizer = await asyncio.to_thread(self.tokens.tokenizer, rec["model_version"])
        if rec["trace_id"] != self.trace:
            self.moved = True  # another generation of the request (a reference's, after a move mid-answer)
            return ""
        self.steps[int(rec["step"])] = (int(rec["token_id"]), str(rec.get("token_text") or ""))
        n = 0
        while n in self.steps:
            n += 1
        if self.tokenizer is not None:
            text = str(self.tokenizer.decode([self.steps[i][0] for i in range(n)], skip_special_tokens=True))
        else:
            text = "".join(self.steps[i][1] for i in range(n))
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta

    def finish(self, rec: Record) -> str:
        """What the answer has that was not sent: its rest (all of it when the text was held); or, when the answer
        is not the text streamed (a request moved to another model mid-answer whose routing the API could not know
        of before its first tokens: docs/api.md), the answer whole, on a line of its own."""
        final = str(rec["output_text"])
        if final.startswith(self.sent):
            return final[len(self.sent) :]
        return "\n" + final


async def _stream(
    state: ApiState,
    ask: Ask,
    rid: str,
    kind: Kind,
    cached: Record | None,
    embedding: list[float] | None,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    chunks = Chunks(kind, ask, rid)
    if cached is not None:
        chunks.model = cached["model_version"]
        if kind == "chat":
            yield chunks.role()
        yield chunks.chunk(cached["output_text"], rec=cached)
        yield chunks.chunk(None if kind == "chat" else "", _finish(cached), cached)
        if include_usage:
            yield chunks.usage(cached)
        yield DONE
        return
    loop = asyncio.get_running_loop()
    steps: asyncio.Queue[Record] = asyncio.Queue()
    unsubscribe: Callable[[], None] = lambda: None  # noqa: E731
    if state.tail is not None:

        def push(topic: str, rec: Record) -> None:
            if topic in (STEPS, ROUTES) and rec.get("request_id") == rid:
                loop.call_soon_threadsafe(steps.put_nowait, {**rec, "_topic": topic})

        unsubscribe = state.tail.subscribe(push)  # before the request is published: no step is missed
    never: asyncio.Future[None] = loop.create_future()  # the stream's own cancel tells that the caller left
    answer = asyncio.ensure_future(complete(state, ask, ANSWER_TIMEOUT_S, never, rid))
    follower = Follower(state.tokens, hold=state.door.routes)
    try:
        if kind == "chat":
            yield chunks.role()
        while not answer.done():
            next_step = asyncio.ensure_future(steps.get())
            await asyncio.wait({answer, next_step}, return_when=asyncio.FIRST_COMPLETED)
            if not next_step.done():
                next_step.cancel()
                break
            rec = next_step.result()
            if rec.pop("_topic") == ROUTES:
                if rec.get("stage") != "ADMISSION":  # the service's decision: the request is routed
                    follower.routed()
                continue
            if chunks.model == ask.model:
                chunks.model = rec["model_version"]
            delta = await follower.step(rec)
            if delta:
                yield chunks.chunk(delta)
        try:
            rec = _checked(answer.result())
        except (EvoError, TimeoutAnswerError) as e:
            yield _event(
                {"error": {"message": str(e), "type": "server_error", "param": None, "code": type(e).__name__}}
            )
            yield DONE
            return
        await state.door.answered(ask, rec, embedding)
        chunks.model = rec["model_version"]
        rest = follower.finish(rec)
        if rest:
            yield chunks.chunk(rest, rec=rec)
        yield chunks.chunk(None if kind == "chat" else "", _finish(rec), rec)
        if include_usage:
            yield chunks.usage(rec)
        yield DONE
    finally:
        unsubscribe()
        if not answer.done():
            answer.cancel()
