"""``POST /infer``: publish a request, wait for its answer and, briefly, for its risk report."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter

from evostream.api.answers import InferAnswer
from evostream.api.bodies import InferBody
from evostream.api.deps import Publisher, State
from evostream.api.errors import TimeoutAnswerError, refusals
from evostream.views.recent import Recent, plain

router = APIRouter(tags=["inference"], responses=refusals(401, 503, 504))
T = TypeVar("T")


@router.post("/infer", response_model=InferAnswer, summary="Publish a request, wait for its answer (and its risk)")
async def infer(body: InferBody, state: State, _: Publisher) -> dict[str, Any]:
    from evostream.producers.client import ReplyTimeoutError

    client = await asyncio.to_thread(state.client)  # made once; its reader is positioned off the loop
    try:
        submit = client.asubmit(body.prompt, max_new_tokens=body.max_new_tokens)
        reply = await asyncio.wait_for(submit, body.timeout_s)
    except TimeoutError as e:
        raise TimeoutAnswerError(f"no free request slot within {body.timeout_s:g} s: too many in flight") from e
    try:
        rec = await reply.aresult(body.timeout_s)
    except ReplyTimeoutError as e:
        raise TimeoutAnswerError(f"no answer within {body.timeout_s:g} s (is `evostream serve` running?)") from e
    risk = await wait_for(lambda: state.read(lambda r: final_risk(r, rec["trace_id"])), body.risk_wait_s)
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
        }
    )


def final_risk(r: Recent, trace_id: str) -> dict[str, Any] | None:
    """The trace's FINAL risk report, once it came."""
    t = r.trace(trace_id)
    return None if t is None or "FINAL" not in t.risk else dict(t.risk["FINAL"])


async def wait_for(fn: Callable[[], T | None], timeout_s: float, every_s: float = 0.05) -> T | None:
    """``fn()`` once it is not None, or None after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (out := fn()) is None and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(every_s)
    return out
