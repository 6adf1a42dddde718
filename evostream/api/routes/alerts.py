"""``/alerts`` (the latest risk alerts), and the server-sent event streams: ``/alerts/stream`` (alerts as they are
published) and ``/stream`` (everything the dashboard draws)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from evostream.api.deps import Reader, State
from evostream.api.errors import refusals
from evostream.api.record_models import RiskAlert
from evostream.api.sse import sse
from evostream.schemas.catalog import ALERTS, COMPLETIONS, DRIFT, PROFILES, RISK, ROUTES, STEPS
from evostream.schemas.records import Severity
from evostream.views.recent import at_least, plain

router = APIRouter(responses=refusals(401))
STREAMED = {
    200: {
        "description": "`event: <step|completion|risk|alert|drift|profile|governance>` and `data: <the record as "
        "JSON>` per record; `event: dropped` with how many records a slow reader lost",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **refusals(503),
}


@router.get("/alerts", tags=["reads"], response_model=list[RiskAlert], summary="Recent risk alerts, oldest first")
def alerts(
    state: State,
    _: Reader,
    last: Annotated[int, Query(ge=1, le=1000)] = 50,
    min_severity: Severity = "INFO",
    model: str | None = None,
) -> list[dict[str, Any]]:
    return [plain(a) for a in state.read(lambda r: r.alerts(last, min_severity, model))]


@router.get(
    "/alerts/stream",
    tags=["live"],
    summary="Risk alerts as server-sent events, as they are published",
    response_class=StreamingResponse,
    responses=STREAMED,
)
async def alerts_stream(
    request: Request, state: State, _: Reader, min_severity: Severity = "INFO"
) -> StreamingResponse:
    return sse(state, request, {ALERTS}, lambda _t, r: at_least(r, min_severity))


@router.get(
    "/stream",
    tags=["live"],
    summary="Steps, completions, risk, alerts, drift, profiles, routing decisions and governance events as events",
    response_class=StreamingResponse,
    responses=STREAMED,
)
async def stream(request: Request, state: State, _: Reader, trace_id: str | None = None) -> StreamingResponse:
    topics = {STEPS, COMPLETIONS, RISK, ALERTS, DRIFT, PROFILES, ROUTES, state.cfg.settings.governance_topic}
    return sse(state, request, topics, lambda _t, r: trace_id is None or r.get("trace_id") == trace_id)
