"""``POST /infer``: publish a request, wait for its answer and, briefly, for its risk.

Nothing here polls: a request waits for one of the client's slots on an asyncio semaphore (as many as the request
client's in-flight slots, so the client's own wait for a slot never runs), for its answer on the client's future,
and for its risk on an event the live tail sets. Each client (its actor, else its address) has a quota
(``ApiState.infer_quota``: a rate and a cap in flight; 429 with ``Retry-After`` over it). A caller that goes away
is noticed at once: a request not yet published is not published; one already published is given up (its slot
freed, its reply dropped when it comes). The inference service still generates it: ``evo.requests`` has no cancel
record, and the service reads a batch at a time (docs/api.md, "Limits")."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request

from evostream.api.answers import InferAnswer
from evostream.api.auth import Caller
from evostream.api.bodies import InferBody
from evostream.api.deps import Publisher, State
from evostream.api.door import Ask
from evostream.api.errors import TimeoutAnswerError, refusals
from evostream.api.quota import client_key
from evostream.api.state import ApiState
from evostream.core.errors import EvoError
from evostream.schemas.catalog import RISK
from evostream.views.recent import Recent, plain

router = APIRouter(tags=["inference"], responses=refusals(401, 429, 503, 504))
T = TypeVar("T")
DEFAULT_TENANT = "http"
"""The tenant of a request that names none (its ``user``): every such request of the API shares it."""


def tenant_of(caller: Caller, user: str | None) -> str:
    """Whose budget and limits a request counts against. A caller with a key is its own tenant: its ``user`` names
    nothing, or a key could spread its requests over tenants of its choosing and never meet a limit; an admin's key
    may act for any tenant it names. A keyless local client (``--trust-loopback``) is trusted with ``user``."""
    if caller.actor is not None and "admin" not in caller.roles:
        return caller.actor
    return user or DEFAULT_TENANT


class ClientGoneError(EvoError):
    """The caller closed its connection before its answer: nothing is sent back."""


@router.post("/infer", response_model=InferAnswer, summary="Publish a request, wait for its answer (and its risk)")
async def infer(body: InferBody, request: Request, state: State, caller: Publisher) -> dict[str, Any]:
    key = client_key(request, caller.actor)
    ask = Ask(tenant_of(caller, body.user), body.prompt, "evostream", body.max_new_tokens, template=body.template)
    with state.infer_quota.holding(key):
        gone = asyncio.ensure_future(disconnected(request))
        try:
            rec = await through_door(state, ask, body.timeout_s, gone)
            wait = body.risk_wait_s if has_risk(rec) else 0.0
            risk = await final_risk_of(state, rec["trace_id"], wait, gone)
            return plain(
                {
                    "request_id": rec["request_id"],
                    "trace_id": rec["trace_id"],
                    "model_version": rec["model_version"],
                    "answer": rec["output_text"],
                    "token_count": rec["token_count"],
                    "finish_reason": rec["finish_reason"],
                    "error": rec["error"],
                    "risk": risk,
                    "cached": bool(rec.get("cached")),
                    "cached_from": rec.get("cached_from"),
                    "template_version": rec.get("template_version"),
                }
            )
        finally:
            gone.cancel()


def has_risk(rec: dict[str, Any]) -> bool:
    """Whether a FINAL risk report can come for the answer: not for a cached one (nothing was generated) nor for an
    external reference's (``external:`` versions emit no steps, so the stream processors score nothing)."""
    return not rec.get("cached") and not str(rec.get("model_version") or "").startswith("external:")


async def through_door(
    state: ApiState, ask: Ask, timeout_s: float, gone: asyncio.Future[None], request_id: str | None = None
) -> dict[str, Any]:
    """The request's Completion: refused at the door (RateLimitedError, recorded), served from the cache, or
    published and awaited (then charged to its tenant and kept by the cache)."""
    rid = request_id or uuid.uuid4().hex
    cached, embedding = await at_door(state, ask, rid)
    if cached is not None:
        return cached
    rec = await complete(state, ask, timeout_s, gone, rid)
    await state.door.answered(ask, rec, embedding)
    return rec


async def at_door(state: ApiState, ask: Ask, request_id: str) -> tuple[dict[str, Any] | None, list[float] | None]:
    """The front door's checks (BadRequestError, RateLimitedError), then its cache: the cached Completion served, or
    None and the prompt's embedding (for ``door.answered``)."""
    from evostream.producers.client import BadRequestError, prompt_problem

    problem = prompt_problem(ask.prompt)
    if problem is not None:
        raise BadRequestError(problem)  # before it is counted, embedded or published
    state.door.admit(ask, request_id)
    return await state.door.lookup(ask, request_id)


async def complete(
    state: ApiState, ask: Ask, timeout_s: float, gone: asyncio.Future[None], request_id: str
) -> dict[str, Any]:
    """Publish the request (once a slot is free) and await its Completion."""
    from evostream.producers.client import ReplyTimeoutError

    client = await asyncio.to_thread(state.client)  # made once; its reader is positioned off the loop
    slots = state.infer_slots
    try:
        await first(slots.acquire(), gone, timeout_s, undo=lambda _: slots.release())
    except TimeoutError as e:
        raise TimeoutAnswerError(f"no free request slot within {timeout_s:g} s: too many in flight") from e
    try:
        reply = await client.asubmit(  # a slot is free: no wait
            ask.prompt,
            max_new_tokens=ask.max_new_tokens,
            do_sample=ask.do_sample,
            temperature=ask.temperature,
            top_p=ask.top_p,
            seed=ask.seed,
            request_id=request_id,
            tenant=ask.tenant,
            template=ask.template,
        )
        try:
            return await first(reply.aresult(timeout_s), gone, None)  # a cancel gives the request up
        except ReplyTimeoutError as e:
            raise TimeoutAnswerError(f"no answer within {timeout_s:g} s (is `evostream serve` running?)") from e
    finally:
        slots.release()


async def disconnected(request: Request) -> None:
    """Returns when the caller has closed its connection (the body was read already: what comes next is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def first(
    work: Awaitable[T], gone: asyncio.Future[None], timeout_s: float | None, undo: Callable[[T], None] | None = None
) -> T:
    """``work``'s result; ClientGoneError if the caller leaves first, TimeoutError after ``timeout_s``. The work is
    cancelled then; ``undo`` gets a result that came in the same instant (a semaphore's place, given back)."""
    task = asyncio.ensure_future(work)
    waited: set[asyncio.Future[Any]] = {task, gone}
    done, _ = await asyncio.wait(waited, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return task.result()
    task.cancel()
    try:
        late = await task
    except (asyncio.CancelledError, EvoError):
        pass
    else:
        if undo is not None:
            undo(late)
    if gone in done:
        raise ClientGoneError("the caller went away before its answer")
    raise TimeoutError


def final_risk(r: Recent, trace_id: str) -> dict[str, Any] | None:
    """The trace's FINAL risk report, once it came."""
    t = r.trace(trace_id)
    return None if t is None or "FINAL" not in t.risk else dict(t.risk["FINAL"])


async def final_risk_of(
    state: ApiState, trace_id: str, timeout_s: float, gone: asyncio.Future[None]
) -> dict[str, Any] | None:
    """The trace's FINAL risk report, waited for up to ``timeout_s`` on the live tail's news of the trace's risk."""
    tail = state.tail
    if tail is None or timeout_s <= 0:
        return state.read(lambda r: final_risk(r, trace_id))
    loop = asyncio.get_running_loop()
    came = asyncio.Event()

    def push(topic: str, rec: Any) -> None:
        if topic == RISK and rec.get("trace_id") == trace_id:
            loop.call_soon_threadsafe(came.set)

    unsubscribe = tail.subscribe(push)
    try:
        deadline = loop.time() + timeout_s
        while True:
            came.clear()  # before the read: news that comes after it wakes the wait below
            out = state.read(lambda r: final_risk(r, trace_id))
            left = deadline - loop.time()
            if out is not None or left <= 0:
                return out
            try:
                await first(came.wait(), gone, left)
            except (TimeoutError, ClientGoneError):
                return state.read(lambda r: final_risk(r, trace_id))
    finally:
        unsubscribe()
