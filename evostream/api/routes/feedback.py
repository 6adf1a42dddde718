"""``POST /feedback``: the calling actor says whether a trace's answer was right, as a label on ``evo.outcomes``.

An ``Idempotency-Key`` header becomes the label's id, so a client (the dashboard's buttons) that retries a request
records it once; the trace's model version comes from the live view, else from the log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from starlette.concurrency import run_in_threadpool

from evostream.api.answers import Recorded
from evostream.api.bodies import FeedbackBody
from evostream.api.deps import CurrentActor, State
from evostream.api.errors import refusals
from evostream.wiring.feedback import record_feedback

router = APIRouter(tags=["outcomes"], responses=refusals(401, 404, 503))


@router.post("/feedback", response_model=Recorded, summary="Label a trace's answer right, wrong or graded")
async def feedback(
    body: FeedbackBody,
    state: State,
    actor: CurrentActor,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Recorded:
    known = state.read(lambda r: (t := r.trace(body.trace_id)) and t.completion)
    rec = await run_in_threadpool(
        record_feedback,
        state.cfg.bootstrap,
        body.trace_id,
        body.label,
        actor=actor.name,
        score=body.score,
        note=body.note,
        outcome_id=idempotency_key,
        model_version=str(known["model_version"]) if known else None,
        lookup_timeout_s=10.0,
    )
    return Recorded(**rec)
