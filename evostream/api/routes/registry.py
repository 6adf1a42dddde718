"""The governance log as read: ``/registry`` (every model and version), ``/registry/{version}``,
``/governance/audit`` (who did what, verified as it is read) and ``/provenance/{trace_id}`` (which version answered a
trace, and why it served). Each is a replay of the log (``views.governance``), as of now or ``as_of``, kept by the
view's ``LogCache`` until the log's end moves; each client has a quota of them (``ApiState.governance_quota``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from evostream.api.answers import Audit, Provenance, Registry, Version
from evostream.api.deps import GovernanceReader, State
from evostream.api.errors import refusals
from evostream.core.errors import NotFoundError
from evostream.views.governance import finding_doc, parse_time, provenance_doc, registry_doc, version_doc
from evostream.views.routes import route_doc

router = APIRouter(tags=["governance"], responses=refusals(400, 401, 429))


@router.get("/registry", response_model=Registry, summary="Every model, version, stage, lineage and pending approval")
def registry(state: State, _: GovernanceReader, as_of: str | None = None) -> dict[str, Any]:
    r = state.governance.replayed(as_of)
    return {**registry_doc(r.registry), "findings": [finding_doc(f) for f in r.findings]}


@router.get(
    "/registry/{version}",
    response_model=Version,
    responses=refusals(404),
    summary="One version: artifact, metrics, lineage, approvals",
)
def registry_version(version: str, state: State, _: GovernanceReader, as_of: str | None = None) -> dict[str, Any]:
    return version_doc(state.governance.replayed(as_of).registry, version)


@router.get("/governance/audit", response_model=Audit, summary="Who did what, when and why, verified as it is read")
def audit(state: State, _: GovernanceReader, since: str | None = None, actor: str | None = None) -> dict[str, Any]:
    rows, findings = state.governance.audit(parse_time(since) if since else None, actor)
    return {"events": rows, "findings": [finding_doc(f) for f in findings]}


@router.get(
    "/provenance/{trace_id}",
    response_model=Provenance,
    responses=refusals(404),
    summary="Which version answered a trace, and why it served",
)
def provenance(trace_id: str, state: State, _: GovernanceReader) -> dict[str, Any]:
    done = state.read(lambda r: None if (t := r.trace(trace_id)) is None else t.completion)
    if done is None:
        raise NotFoundError(f"no completion of trace {trace_id!r} among the latest {state.recent.max_traces} traces")
    route = state.read(lambda r: None if (x := r.routes.request(done["request_id"])) is None else route_doc(x))
    return provenance_doc(state.governance.replayed(), done, route)
