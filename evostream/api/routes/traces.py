"""``/traces``: the latest traces, and one trace with its steps, completion, risk and alerts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from evostream.api.answers import TraceDoc, TraceSummary
from evostream.api.deps import Reader, State
from evostream.api.errors import refusals
from evostream.core.errors import NotFoundError

router = APIRouter(tags=["reads"], responses=refusals(401))


@router.get("/traces", response_model=list[TraceSummary], summary="The latest traces, newest first")
def traces(state: State, _: Reader, last: Annotated[int, Query(ge=1, le=500)] = 20) -> list[dict[str, Any]]:
    return state.read(lambda r: [t.summary() for t in r.traces(last)])


@router.get(
    "/traces/{trace_id}",
    response_model=TraceDoc,
    responses=refusals(404),
    summary="One trace: its steps, completion, risk and alerts",
)
def trace(trace_id: str, state: State, _: Reader) -> dict[str, Any]:
    doc = state.read(lambda r: None if (t := r.trace(trace_id)) is None else t.doc())
    if doc is None:
        raise NotFoundError(f"no trace {trace_id!r} among the latest {state.recent.max_traces} traces")
    return doc
