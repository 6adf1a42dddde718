"""The governance rules: which role each event needs, and what the registry's state must be for an event to be
accepted. Pure functions over the projection's plain dicts (actors, models, policy); they judge, never change.

Roles: an admin may do everything; an approver grants or rejects approvals; a proposer registers, proposes,
validates, requests approval and promotes to staging. Actor, policy and rollback events are the admin's, and so is
a promotion to production unless the policy says ``auto_promote_production`` (then a proposer may promote a
validated version without approvals); ``auto_promote_staging: false`` makes staging the admin's too.

Approvals: with ``four_eyes`` an actor may not approve a version it registered itself, and with
``refuse_failed_approvals`` a version whose latest validation failed cannot be approved. ``governance init`` writes
both on; a log that never set them (one written before they existed) is judged without them, so it still verifies.

A controller (the rollout controller, a machine actor) may write only RolloutStepped, RolloutAborted and
RolloutCompleted; an approver may abort a rollout too. RolloutStarted needs what a promotion to production needs
(its roles, a passed validation, the approvals), and the rules of ``rollouts.py``; RolloutStepped and
RolloutCompleted need the candidate to still hold the validation and the approvals (``candidate_refusal``); while a
rollout of a model runs, a promotion to production and a rollback of that model are refused. ``shadow_share`` (0
unless set): the share of production's requests mirrored to the staging version outside a rollout.

Independence levels of routes (LevelProposed, LevelApproved, LevelLowered) and the registration of a route's policy
are judged by ``levels.py``, with the policy's ``level_corpus_per_level``, ``level_min_accuracy``, ``level_max_error``
and ``level_min_confidence``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from evostream.consumers.governance import levels
from evostream.consumers.governance import rollouts as rollout_rules
from evostream.consumers.governance.events import ALL_MODELS
from evostream.consumers.governance.keys import key_id_of
from evostream.consumers.governance.shapes import ActorState, ModelState, RolloutState, RouteState, VersionState
from evostream.core.errors import GovernanceError

BASE_POLICY: dict[str, Any] = {
    "production_approvals": 1,
    "auto_promote_staging": True,
    "auto_promote_production": False,
}
"""The policy of a log before its first PolicyChanged (the projection starts from it)."""
UNSET_RULES: dict[str, Any] = {"four_eyes": False, "refuse_failed_approvals": False, "shadow_share": 0.0}
"""The approval rules of a log that never set them: off, so a log written before they existed verifies as it did."""
DEFAULT_POLICY: dict[str, Any] = {**BASE_POLICY, "four_eyes": True, "refuse_failed_approvals": True}
"""The policy a new log's genesis writes (``service.init``)."""
_POLICY_TYPES: dict[str, type] = {
    "production_approvals": int,
    "auto_promote_staging": bool,
    "auto_promote_production": bool,
    "four_eyes": bool,
    "refuse_failed_approvals": bool,
    "level_corpus_per_level": int,
    "level_min_accuracy": float,
    "level_max_error": float,
    "level_min_confidence": float,
    "shadow_share": float,
    "template_min_gain": float,
}


def rule(policy: Mapping[str, Any], name: str) -> Any:
    """A policy setting, with ``UNSET_RULES`` for one the log never set."""
    return policy.get(name, UNSET_RULES.get(name))


ACTOR_EVENTS = frozenset({"ActorEnrolled", "ActorRevoked", "PolicyChanged", "OffsetVoided"})
"""Events about no one model: their model_name is ALL_MODELS."""

_ADMIN = frozenset({"admin"})
_PROPOSER = frozenset({"admin", "proposer"})
_APPROVER = frozenset({"admin", "approver"})
_CONTROLLER = frozenset({"admin", "controller"})
_ROLES_OF: dict[str, frozenset[str]] = {
    "ActorEnrolled": _ADMIN,
    "ActorRevoked": _ADMIN,
    "PolicyChanged": _ADMIN,
    "OffsetVoided": _ADMIN,
    "RolledBack": _ADMIN,
    "ModelRegistered": _PROPOSER,
    "CandidateProposed": _PROPOSER,
    "ValidationCompleted": _PROPOSER,
    "ApprovalRequested": _PROPOSER,
    "ApprovalGranted": _APPROVER,
    "ApprovalRejected": _APPROVER,
    "LevelProposed": _PROPOSER,
    "LevelApproved": _APPROVER,
    "LevelLowered": _PROPOSER,
    "RolloutStepped": _CONTROLLER,
    "RolloutAborted": _CONTROLLER | {"approver"},
    "RolloutCompleted": _CONTROLLER,
}
APPROVABLE_STAGES = ("staging", "production")

Actors = Mapping[str, ActorState]
Models = Mapping[str, ModelState]
Routes = Mapping[str, RouteState]
Policy = Mapping[str, Any]
Rollouts = Mapping[str, RolloutState]


def allowed_roles(type_: str, payload: Mapping[str, Any], policy: Policy) -> frozenset[str]:
    """The roles of which an actor needs one to write this event under ``policy``."""
    if type_ not in ("Promoted", "RolloutStarted"):
        return _ROLES_OF[type_]
    stage = "production" if type_ == "RolloutStarted" else payload["stage"]
    if stage == "staging":
        return _PROPOSER if policy["auto_promote_staging"] else _ADMIN
    if stage == "production":
        return _PROPOSER if policy["auto_promote_production"] else _ADMIN
    return _ADMIN  # an alias moves what serves as champion or challenger


def approvers(version: VersionState, stage: str, actors: Actors) -> list[str]:
    """The distinct actors whose approval of ``version`` for ``stage`` counts: granted after the last rejection, by
    an actor who is still enrolled, unrevoked and an approver (a revoked reviewer's pending grant no longer counts)."""
    ap = version["approvals"].get(stage)
    if not ap:
        return []
    return sorted(
        a
        for a in ap["granted"]
        if a in actors and actors[a]["revoked_seq"] is None and _APPROVER & set(actors[a]["roles"])
    )


def passed_validation(version: VersionState) -> bool:
    """Whether the version's latest validation passed."""
    v = version["validation"]
    return v is not None and v["passed"] is True


def check_policy_value(policy: Any) -> str | None:
    """Why a PolicyChanged payload's policy is refused, or None: only known keys, of their types."""
    if not isinstance(policy, dict) or not policy:
        return "PolicyChanged needs a non-empty policy object"
    for name, value in policy.items():
        want = _POLICY_TYPES.get(name)
        if want is None:
            return f"unknown policy setting {name!r} (known: {', '.join(_POLICY_TYPES)})"
        allowed = (int, float) if want is float else want  # 1 is a float's JSON spelling too
        if not isinstance(value, allowed) or (want is not bool and isinstance(value, bool)):
            return f"policy setting {name!r} must be {want.__name__}, not {type(value).__name__}"
    n = policy.get("production_approvals", 1)
    if n < 1:
        return f"production_approvals must be at least 1, got {n} (use auto_promote_production to need none)"
    if policy.get("level_corpus_per_level", 1) < 1:
        return f"level_corpus_per_level must be at least 1, got {policy['level_corpus_per_level']}"
    if not 0.0 <= policy.get("level_min_accuracy", 0.0) <= 1.0:
        return f"level_min_accuracy must be within [0, 1], got {policy['level_min_accuracy']}"
    if not 0.0 <= policy.get("level_max_error", 0.0) <= 1.0:
        return f"level_max_error must be within [0, 1], got {policy['level_max_error']}"
    if not 0.0 <= policy.get("level_min_confidence", 0.0) < 1.0:
        return f"level_min_confidence must be within [0, 1), got {policy['level_min_confidence']}"
    if not 0.0 <= policy.get("shadow_share", 0.0) <= 1.0:
        return f"shadow_share must be within [0, 1], got {policy['shadow_share']}"
    if not 0.0 <= policy.get("template_min_gain", 0.0) <= 1.0:
        return f"template_min_gain must be within [0, 1], got {policy['template_min_gain']}"
    return None


def refusal(
    type_: str,
    model_name: str,
    payload: Mapping[str, Any],
    actors: Actors,
    models: Models,
    policy: Policy,
    actor: str = "",
    routes: Routes | None = None,
    reason: str = "",
    rollouts: Rollouts | None = None,
) -> str | None:
    """Why the registry's state refuses this event by ``actor`` with ``reason`` (its payload already fits its type),
    or None if it may follow. ``routes``: the routes' levels (level events are judged on them, ``levels.py``);
    ``rollouts``: the rollouts (rollout events, and promotions while one runs, are judged on them, ``rollouts.py``)."""
    if type_ in ACTOR_EVENTS:
        if model_name != ALL_MODELS:
            return f"{type_} is about no one model: its model_name must be {ALL_MODELS!r}, not {model_name!r}"
        return _RULES[type_](model_name, payload, actors, models, policy)
    if model_name in ("", ALL_MODELS):
        return f"{type_} needs the model it is about in model_name, not {model_name!r}"
    if type_ != "ModelRegistered":
        model = models.get(model_name)
        if model is None:
            return f"model {model_name!r} has no registered version: register one first"
        if type_ in rollout_rules.ROLLOUT_EVENTS and type_ != "RolloutStarted":  # about a rollout, not a version
            why = rollout_rules.refusal(type_, model_name, payload, models, rollouts or {})
            if why is None and type_ in ("RolloutStepped", "RolloutCompleted"):
                r = (rollouts or {})[payload["rollout_id"]]
                why = candidate_refusal(model_name, r, actors, models, policy)
            return why
        if payload["version"] not in model["versions"]:
            known = ", ".join(model["versions"]) or "none"
            return f"{model_name} version {payload['version']!r} is not registered (registered: {known})"
    if type_ in levels.LEVEL_EVENTS:
        return levels.refusal(type_, model_name, payload, models, routes or {}, policy, actor, reason)
    if type_ == "ModelRegistered" and levels.route_name(model_name) is not None:
        return _registered(model_name, payload, actors, models, policy) or levels.registration_refusal(
            model_name, payload, models
        )
    if type_ == "RolloutStarted":
        return rollout_rules.refusal(type_, model_name, payload, models, rollouts or {}) or _promoted(
            model_name, {"version": payload["version"], "stage": "production", "alias": None}, actors, models, policy
        )
    if (type_ == "RolledBack" or (type_ == "Promoted" and payload["stage"] == "production")) and (
        now := rollout_rules.running(rollouts or {}, model_name)
    ) is not None:
        return (
            f"rollout {now['rollout_id']} of {model_name} ({now['incumbent']} -> {now['version']}) is running: abort "
            f"it first (`evostream rollout abort {model_name} --reason ...`), then {type_} moves production"
        )
    if type_ == "ApprovalGranted":
        return _approval(model_name, payload, actors, models, policy) or _grant(
            model_name, payload, models, policy, actor
        )
    return _RULES[type_](model_name, payload, actors, models, policy)


def _grant(model_name: str, p: Mapping[str, Any], models: Models, policy: Policy, actor: str) -> str | None:
    """Four eyes, and no approval of a failed version (when the policy says so)."""
    name = p["version"]
    version = models[model_name]["versions"][name]
    if rule(policy, "four_eyes") and actor == version["registered_by"]:
        return (
            f"{actor!r} registered {model_name} {name} and may not approve it too (four eyes): another approver "
            "must (or an admin runs `evostream governance policy --no-four-eyes`)"
        )
    val = version["validation"]
    if rule(policy, "refuse_failed_approvals") and val is not None and not val["passed"]:
        return (
            f"{model_name} {name} FAILED its latest validation (sequence {val['sequence']}): a failed version cannot "
            "be approved; validate it again, and approve it once it passes"
        )
    return None


def _enrolled(model_name: str, p: Mapping[str, Any], actors: Actors, models: Models, policy: Policy) -> str | None:
    try:
        derived = key_id_of(p["public_key"])
    except GovernanceError as e:
        return f"ActorEnrolled: {e}"
    if derived != p["key_id"]:
        return f"ActorEnrolled: key_id {p['key_id']!r} is not the id of the public key ({derived!r})"
    for actor_id, actor in actors.items():
        key = actor["keys"].get(p["key_id"])
        if key is None:
            continue
        if key["revoked_seq"] is not None:
            return f"key {p['key_id']} was revoked at sequence {key['revoked_seq']}: a revoked key never comes back"
        if actor_id != p["actor_id"]:
            return f"key {p['key_id']} is already enrolled for actor {actor_id!r}: each actor needs its own key"
    return None


def _revoked(model_name: str, p: Mapping[str, Any], actors: Actors, models: Models, policy: Policy) -> str | None:
    actor = actors.get(p["actor_id"])
    if actor is None:
        return f"cannot revoke {p['actor_id']!r}: no such actor is enrolled"
    if actor["revoked_seq"] is not None:
        return f"actor {p['actor_id']!r} was already revoked at sequence {actor['revoked_seq']}"
    admins = [a for a, v in actors.items() if v["revoked_seq"] is None and "admin" in v["roles"]]
    if admins == [p["actor_id"]]:
        return f"{p['actor_id']!r} is the last admin: enroll another admin before revoking it, or no one could govern"
    return None


def _policy(model_name: str, p: Mapping[str, Any], actors: Actors, models: Models, policy: Policy) -> str | None:
    return check_policy_value(p["policy"])


def _registered(model_name: str, p: Mapping[str, Any], actors: Actors, models: Models, policy: Policy) -> str | None:
    version, parent = p["version"], p["parent"]
    if not version:
        return "ModelRegistered: the version must not be empty"
    versions = models[model_name]["versions"] if model_name in models else {}
    if version in versions:
        return f"{model_name} version {version!r} is already registered (at sequence {versions[version]['sequence']})"
    if parent is not None and parent not in versions:
        return f"{model_name} version {version!r}: its parent {parent!r} is not a registered version of {model_name}"
    return None


def _no_rule(model_name: str, p: Mapping[str, Any], actors: Actors, models: Models, policy: Policy) -> str | None:
    return None


def _approval(model_name: str, p: Mapping[str, Any], actors: Actors, models: Models, policy: Policy) -> str | None:
    if p["stage"] not in APPROVABLE_STAGES:
        return f"approvals are for {' or '.join(APPROVABLE_STAGES)}, not {p['stage']!r}"
    return None


def _promoted(model_name: str, p: Mapping[str, Any], actors: Actors, models: Models, policy: Policy) -> str | None:
    model = models[model_name]
    name, stage = p["version"], p["stage"]
    version = model["versions"][name]
    if stage is None:
        if not p["alias"]:
            return "Promoted: an alias must not be empty"
        if model["aliases"].get(p["alias"]) == name:
            return f"{model_name} alias {p['alias']!r} already points to {name}"
        return None
    if version["stage"] == stage:
        return f"{model_name} {name} is already {stage}"
    if stage == "staging" and version["stage"] == "production":
        return f"{model_name} {name} is production: it cannot go back to staging (promote or roll back another)"
    if not passed_validation(version):
        return f"{model_name} {name} cannot be {stage}: it has no passed validation (run ValidationCompleted first)"
    if stage == "production":
        return _approvals_missing(model_name, name, actors, models, policy)
    return None


def _approvals_missing(model_name: str, name: str, actors: Actors, models: Models, policy: Policy) -> str | None:
    """Why ``name`` lacks the approvals for production that the policy asks for, or None."""
    if policy["auto_promote_production"]:
        return None
    version = models[model_name]["versions"][name]
    have, need = approvers(version, "production", actors), policy["production_approvals"]
    if len(have) < need:
        why = "grants before a rejection, or by a revoked actor, do not count"
        return (
            f"{model_name} {name} needs {need} distinct approvers for production, has {len(have)} "
            f"({', '.join(have) or 'none'}; {why})"
        )
    return None


def candidate_refusal(
    model_name: str, rollout: RolloutState, actors: Actors, models: Models, policy: Policy
) -> str | None:
    """Why the rollout's candidate no longer holds what a promotion to production needs (its latest validation
    passed, the approvals the policy asks for), or None: RolloutStepped and RolloutCompleted are refused then, and
    the controller aborts the rollout with this reason."""
    name = rollout["version"]
    why = None
    if not passed_validation(models[model_name]["versions"][name]):
        why = f"{model_name} {name}'s latest validation did not pass"
    else:
        why = _approvals_missing(model_name, name, actors, models, policy)
    if why is None:
        return None
    return (
        f"rollout {rollout['rollout_id']}'s candidate no longer holds what production needs: {why}; the rollout "
        "can only be aborted"
    )


def _rolled_back(model_name: str, p: Mapping[str, Any], actors: Actors, models: Models, policy: Policy) -> str | None:
    model = models[model_name]
    name, current = p["version"], model["production"]
    if name == current:
        return f"{model_name} {name} is already production: roll back to another version"
    if p["from_version"] is not None and p["from_version"] != current:
        return f"RolledBack from {p['from_version']!r}, but {model_name}'s production is {current!r}: re-read and retry"
    if model["versions"][name]["stage"] != "archived":
        return (
            f"{model_name} {name} cannot be rolled back to: it never served production (stage "
            f"{model['versions'][name]['stage']}); promote it with the approvals the policy needs"
        )
    if not passed_validation(model["versions"][name]):
        return f"{model_name} {name} cannot be rolled back to: its latest validation did not pass"
    return None


_Rule = Callable[[str, Mapping[str, Any], Actors, Models, Policy], str | None]
_RULES: dict[str, _Rule] = {
    "ActorEnrolled": _enrolled,
    "ActorRevoked": _revoked,
    "PolicyChanged": _policy,
    "ModelRegistered": _registered,
    "CandidateProposed": _no_rule,
    "ValidationCompleted": _no_rule,
    "ApprovalRequested": _approval,
    "ApprovalGranted": _approval,
    "ApprovalRejected": _approval,
    "Promoted": _promoted,
    "RolledBack": _rolled_back,
    "OffsetVoided": _no_rule,  # its offsets are judged by replay, which knows where they and the void stand
}
