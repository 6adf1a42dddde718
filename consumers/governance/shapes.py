"""The shapes of the registry projection (``projection.Registry``): what the fold keeps per actor, model and
version. Plain JSON-able dicts, typed, so the fold, the views and the API read the same fields and mypy checks
them; the snapshot (``Registry.to_json``) is these dicts as they are."""

from __future__ import annotations

from typing import Any, TypedDict


class KeyState(TypedDict):
    public_key: str
    sequence: int
    revoked_seq: int | None


class ActorState(TypedDict):
    roles: list[str]
    keys: dict[str, KeyState]
    """key id -> the key"""
    sequence: int
    revoked_seq: int | None


class Validation(TypedDict):
    passed: bool
    gates: dict[str, Any]
    sequence: int
    actor: str


class Proposal(TypedDict):
    sequence: int
    actor: str
    evidence: dict[str, Any]


class Rejection(TypedDict):
    actor: str
    sequence: int


class Approvals(TypedDict):
    granted: dict[str, int]
    """approver -> the sequence of the grant"""
    rejected: Rejection | None


class VersionState(TypedDict):
    version: str
    artifact_uri: str
    artifact_sha256: str
    parent: str | None
    operator: str | None
    operator_params: dict[str, Any]
    metrics: dict[str, Any]
    extra: dict[str, Any]
    """payload fields of a newer writer, kept"""
    sequence: int
    registered_by: str
    registered_at_us: int
    stage: str
    aliases: list[str]
    validation: Validation | None
    proposals: list[Proposal]
    requests: dict[str, int]
    """stage -> the sequence of the request"""
    approvals: dict[str, Approvals]
    """stage -> who approved or rejected"""
    events: list[int]
    """the sequences of every event about this version"""


class ModelState(TypedDict):
    versions: dict[str, VersionState]
    production: str | None
    staging: str | None
    aliases: dict[str, str]
    """alias -> version"""


class PendingApproval(TypedDict):
    model_name: str
    version: str
    stage: str
    requested_seq: int
    approvers: list[str]
    needed: int


class LevelProposal(TypedDict):
    """A move of a route to ``level`` on policy ``version``, waiting for another actor's approval."""

    version: str
    level: int
    evidence: dict[str, Any]
    actor: str
    sequence: int


class LevelChange(TypedDict):
    """One level event of a route: proposed, approved (the level moved up) or lowered."""

    sequence: int
    type: str
    actor: str
    version: str
    level: int


class RouteState(TypedDict):
    """A route's independence level as governance set it (``levels.py``)."""

    version: str | None
    """the version of ``route/<name>`` (its routing policy) in force; None: no level was ever set"""
    level: int | None
    """the level in force; None: no routing"""
    evidence: dict[str, Any] | None
    """the evidence of the level in force (its registration's, the policy artifact's); None at level 0"""
    set_by: int | None
    """the sequence of the event that set the level in force"""
    proposal: LevelProposal | None
    """the pending proposal, if any"""
    history: list[LevelChange]


class RolloutStep(TypedDict):
    """One rollout event as the rollout's history keeps it: who or what decided, on which evidence."""

    type: str
    sequence: int
    actor: str
    step: int
    """the step after the event (-1: the shadow phase)"""
    weight: int
    """the candidate's percent of requests after the event (0 in the shadow phase and after an abort)"""
    evidence: dict[str, Any]
    reason: str
    at_us: int


class RolloutState(TypedDict):
    """A rollout of one model from its incumbent to a candidate (``rollouts.py``)."""

    rollout_id: str
    model_name: str
    version: str
    """the candidate"""
    incumbent: str
    """the production version when the rollout started"""
    plan: dict[str, Any]
    """``evostream.rollout.plan.RolloutPlan.to_json()``"""
    evidence: dict[str, Any]
    """what the person who started it cited"""
    status: str
    """running | aborted | completed"""
    step: int
    """the index of the step in force in ``plan["steps"]``; -1: the shadow phase"""
    weight: int
    """the candidate's percent of requests now (0 in the shadow phase and after an abort)"""
    started_seq: int
    started_us: int
    history: list[RolloutStep]
