"""The JSON the API answers with, as pydantic models: one per answer of its own, so /docs and /openapi.json show every
response's shape. The contract's records (steps, completions, risk, alerts, drift, profiles) are ``records``'s,
derived from the ``.avsc`` files; the registry's shapes mirror ``consumers.governance.shapes`` (a test holds them
equal). Only payloads the log keeps as free JSON (metrics, gates, evidence, policy) stay open dicts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from evostream.api.record_models import Completion, GenerationStep, RiskAlert, RiskReport, RouteDecision
from evostream.schemas.records import AnswerRole, FinishReason, RiskStage

Open = dict[str, Any]
"""Free JSON as the governance log keeps it (metrics, gates, evidence, policy)."""


# --- health and overview -----------------------------------------------------------------------------------------
class Broker(BaseModel):
    bootstrap: str
    reachable: bool
    brokers: int | None = Field(description="Brokers in the cluster (null while unreachable).")
    topics: int | None = Field(description="Topics in the cluster (null while unreachable).")


class Component(BaseModel):
    """A service the dashboard's panels depend on, known by its consumer group's members."""

    group: str = Field(description="Its consumer group.")
    members: int | None = Field(description="Members of the group now (null when the broker could not say).")
    running: bool | None = Field(description="Whether any member is in the group (null when unknown).")
    notice: str | None = Field(description="What is missing and how to start it, while it is not running.")


class LiveView(BaseModel):
    """The API's own tail of the topics, which every read and event stream answers from."""

    caught_up: bool = Field(description="The history up to the API's start has been read.")
    error: str | None
    streams: int = Field(description="Event streams open now.")
    governance_followed: bool = Field(description="Governance events are followed (the log's topic exists).")
    records: dict[str, int] = Field(description="Records read per topic.")


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="ok: the broker answers and the live view reads.")
    broker: Broker
    error: str | None = Field(description="Why the broker's lags or the registry could not be read.")
    consumer_lags: dict[str, dict[str, int]] | None = Field(
        description="Per consumer group, per topic: records not yet consumed ({} before the group's first commit)."
    )
    active_versions: dict[str, str | None] | None = Field(description="The production version of each model.")
    components: dict[str, Component] = Field(description="inference, processors and evolution, by their groups.")
    notices: list[str] = Field(description="One sentence per needed component that is not running.")
    live: LiveView


class Overview(BaseModel):
    window_s: float
    requests_per_s: float
    tokens_per_s: float
    alerts_per_min: float
    versions_answering: dict[str, int] = Field(description="Completions per model version in the window.")
    records_seen: dict[str, int] = Field(description="Records read per topic since the API started.")


# --- traces ------------------------------------------------------------------------------------------------------
class TraceSummary(BaseModel):
    trace_id: str
    request_id: str | None
    model_version: str | None
    steps: int = Field(description="Steps received so far.")
    answer: str | None
    finish_reason: FinishReason | None
    role: AnswerRole | None = Field(
        description="ANSWER, or SHADOW: a rollout candidate's answer to a mirrored request, never returned (null "
        "before the completion)."
    )
    risk_score: float | None = Field(description="The FINAL report's score once it came, else the EARLY one's.")
    risk_stage: RiskStage | None
    alerts: int


class TraceDoc(BaseModel):
    trace_id: str
    request_id: str | None
    model_version: str | None
    steps: list[GenerationStep] = Field(description="In step order (packed statistics left out).")
    completion: Completion | None
    risk: RiskReport | None = Field(description="The FINAL report once it came, else the EARLY one.")
    alerts: list[RiskAlert]


# --- routes ------------------------------------------------------------------------------------------------------
class RouteCompletion(BaseModel):
    """A Completion of a routed request, without its text's machine fields."""

    trace_id: str
    model_version: str
    finish_reason: FinishReason = Field(description="ESCALATED: the self model's partial answer.")
    output_text: str
    token_count: int
    prompt_token_count: int
    cached: bool
    cost_usd: float
    completed_at_us: int


class RouteDoc(BaseModel):
    """One request's route: every decision of the router in order, the partial and final traces, what it cost."""

    request_id: str
    tenant: str
    route: str
    chosen: str = Field(description="Where it went in the end: self, reference, cache or refused.")
    escalated: bool = Field(description="Moved to the reference mid-answer.")
    decisions: list[RouteDecision]
    partial_traces: list[str] = Field(description="The self model's partial answers (finish ESCALATED).")
    final_trace: str | None = Field(description="The trace of the answer the client got (null while none).")
    completions: list[RouteCompletion]
    paid_usd: float = Field(description="The cost_usd of every Completion of the request, partials included.")


class RouteTally(BaseModel):
    requests: int
    self_answered: int
    reference_answered: int
    escalated: int
    cache_hits: int
    refusals: int
    pending: int = Field(description="Admitted, no final answer yet (left out of the money).")
    paid_usd: float
    reference_usd: float = Field(description="The same answers' tokens at the reference's price.")
    saved_usd: float
    self_share: float | None = Field(description="Self-answered over self- plus reference-answered requests.")


class RouteSummary(BaseModel):
    """The latest routed requests the API holds: cost paid against always the reference."""

    total: RouteTally
    by_tenant: dict[str, RouteTally]
    by_route: dict[str, RouteTally]
    unpriced: list[str] = Field(description="References without a price (costed at 0).")


# --- the registry and the governance log -------------------------------------------------------------------------
class Validation(BaseModel):
    passed: bool
    gates: Open
    sequence: int
    actor: str


class Proposal(BaseModel):
    sequence: int
    actor: str
    evidence: Open


class Rejection(BaseModel):
    actor: str
    sequence: int


class Approvals(BaseModel):
    granted: dict[str, int] = Field(description="Approver -> the sequence of the grant.")
    rejected: Rejection | None


class Version(BaseModel):
    """One version: artifact, metrics, lineage (newest first), validation, approvals, stage, and its model."""

    version: str
    model_name: str
    artifact_uri: str
    artifact_sha256: str
    parent: str | None
    operator: str | None
    operator_params: Open
    metrics: Open
    extra: Open = Field(description="Payload fields of a newer writer, kept.")
    sequence: int
    registered_by: str
    registered_at_us: int
    stage: str
    aliases: list[str]
    validation: Validation | None
    proposals: list[Proposal]
    requests: dict[str, int] = Field(description="Stage -> the sequence of the request.")
    approvals: dict[str, Approvals] = Field(description="Stage -> who approved or rejected.")
    events: list[int] = Field(description="The sequences of every event about this version.")
    lineage: list[str] = Field(description="This version and its ancestors, newest first.")


class Model(BaseModel):
    production: str | None
    staging: str | None
    aliases: dict[str, str] = Field(description="Alias -> version.")
    versions: dict[str, Version]


class PendingApproval(BaseModel):
    model_name: str
    version: str
    stage: str
    requested_seq: int
    approvers: list[str]
    needed: int


class Head(BaseModel):
    sequence: int
    offset: int
    hash: str


class ActorSummary(BaseModel):
    roles: list[str]
    revoked: bool


class Finding(BaseModel):
    """Something the verification of the log refused (a broken link, a bad signature, a forbidden event)."""

    offset: int | None
    sequence: int
    kind: str
    detail: str


class Registry(BaseModel):
    models: dict[str, Model]
    pending_approvals: list[PendingApproval]
    policy: Open
    head: Head
    actors: dict[str, ActorSummary]
    findings: list[Finding]


class AuditRow(BaseModel):
    sequence: int
    offset: int
    occurred_at_us: int
    when: str = Field(description="occurred_at_us as a UTC time.")
    actor: str
    model: str | None
    type: str
    version: str | None
    what: str
    reason: str


class Audit(BaseModel):
    events: list[AuditRow]
    findings: list[Finding]


class Provenance(BaseModel):
    trace_id: str
    request_id: str
    model_version: str
    answered_at_us: int
    token_count: int
    role: AnswerRole = Field(
        default="ANSWER", description="SHADOW: a rollout candidate's answer to a mirrored request, never returned."
    )
    rollout_id: str | None = Field(default=None, description="The rollout that sent the request to this version.")
    version: Version
    events: list[AuditRow] = Field(description="The governance events of the version up to the answer.")
    route: RouteDoc | None = Field(
        default=None, description="The route of the trace's request (null for a request no router decided)."
    )


# --- writes ------------------------------------------------------------------------------------------------------
class InferAnswer(BaseModel):
    request_id: str
    trace_id: str
    model_version: str
    answer: str
    token_count: int
    finish_reason: FinishReason
    error: str | None
    risk: RiskReport | None = Field(description="The FINAL risk report, if it came within risk_wait_s.")
    cached: bool = Field(False, description="Served by the response cache: no model generated this answer.")
    cached_from: str | None = Field(None, description="The trace whose answer a cached answer repeats.")
    template_version: str | None = Field(
        None, description="The governed prompt template version the prompt was rendered with (null: none named)."
    )


class Acted(BaseModel):
    """A governance event written for the caller."""

    event: str
    sequence: int
    actor: str
    model: str


class RolledBack(Acted):
    from_version: str | None
    version: str


class Approved(Acted):
    version: str
    stage: Literal["staging", "production"]


class EvolveJob(BaseModel):
    """One evolution cycle started through the API, run on a thread of its own; its progress lines as they come."""

    job_id: str
    actor: str
    started_us: int
    state: Literal["running", "done", "failed"] = "running"
    lines: list[str] = Field(default_factory=list, description="Progress, as the cycle reports it.")
    candidates: list[str] = Field(default_factory=list, description="One line per candidate built.")
    version: str | None = Field(default=None, description="The version registered, if any.")
    passed: bool | None = None
    error: str | None = None
    ended_us: int | None = None


class Recorded(BaseModel):
    """A label as ``evo.outcomes`` holds it (the broker acknowledged it)."""

    outcome_id: str = Field(description="The label's id: the Idempotency-Key when one came, so a retry is one label.")
    trace_id: str
    model_version: str
    label: Literal["RIGHT", "WRONG", "GRADED"]
    score: float
    source: str
    actor: str
    note: str
    recorded_at_us: int
