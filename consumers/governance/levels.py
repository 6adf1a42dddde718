"""Independence levels as governance: the rules of a route's registration and of its level events.

A route ``N`` is the model ``route/N``: each of its versions is a routing policy (``evostream.routing.policy``)
registered with what its artifact says, so that replay can judge without reading files: ``operator_params`` name
the risk probe the policy reads (``probe_sha256``, which must be the artifact of a registered ``risk/<family>``
version), and ``metrics["levels"]`` holds each level's evidence exactly as the artifact's ``LevelGate.evidence``
(``wiring.routing.register_route`` copies it and checks it against the artifact; the follower checks again before it
serves).

- **LevelProposed** (proposer or admin): a route to a level on one of its policy versions, carrying the evidence;
  refused unless the evidence is the registration's for that level, and it earns the level
  (``evostream.routing.evidence.insufficient``: a corpus of at least ``level_corpus_per_level`` x (level + 1)
  labelled answers, an accuracy of at least ``level_min_accuracy``, and certified: ``certified`` true, the error
  rate's upper bound ``1 - accuracy_lower`` at most ``level_max_error``, a ``confidence`` of at least
  ``level_min_confidence``, a ``self_share`` within 0.05 of the level's target share).
- **LevelApproved** (approver or admin): the pending proposal takes effect; refused by the actor who proposed it
  (four eyes) and when the evidence no longer earns the level under the policy in force.
- **LevelLowered** (proposer or admin, a reason required): the route moves down on the policy in force, towards the
  reference, at once. No approval: lowering only sends more requests to the stronger model, and during an incident
  it must not wait for a second person. A pending proposal is dropped with it (a raise is proposed anew).

Pure: plain dicts in, a reason or None out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from evostream.consumers.governance.shapes import ModelState, RouteState
from evostream.routing.evidence import (
    MAX_ERROR,
    MIN_ACCURACY,
    MIN_CONFIDENCE,
    MIN_CORPUS_PER_LEVEL,
    insufficient,
    malformed,
)

ROUTE_PREFIX = "route/"
"""A route ``N``'s policies are the versions of the model ``route/N``."""
RISK_PREFIX = "risk/"
"""The risk probes' models (``wiring.risk``): a route's policy reads one of their versions."""
LEVEL_EVENTS = frozenset({"LevelProposed", "LevelApproved", "LevelLowered"})
LEVEL_POLICY_DEFAULTS: dict[str, Any] = {
    "level_corpus_per_level": MIN_CORPUS_PER_LEVEL,
    "level_min_accuracy": MIN_ACCURACY,
    "level_max_error": MAX_ERROR,
    "level_min_confidence": MIN_CONFIDENCE,
}
"""The level rules of a policy that never set them (the issue's numbers)."""

Models = Mapping[str, ModelState]
Routes = Mapping[str, RouteState]
Policy = Mapping[str, Any]


def route_model(name: str) -> str:
    """The registry model whose versions are route ``name``'s policies."""
    return ROUTE_PREFIX + name


def route_name(model_name: str) -> str | None:
    """The route a model name is about, or None when it is no route's."""
    return model_name[len(ROUTE_PREFIX) :] if model_name.startswith(ROUTE_PREFIX) else None


def level_rule(policy: Policy, name: str) -> Any:
    return policy.get(name, LEVEL_POLICY_DEFAULTS[name])


def four_eyes(policy: Policy) -> bool:
    """Levels follow the policy's ``four_eyes``; unset means on (no log written before level events holds one)."""
    return bool(policy.get("four_eyes", True))


def registered_evidence(models: Models, model_name: str, version: str) -> dict[str, Any]:
    """level (as a string) -> evidence, as the version's registration recorded it from its artifact."""
    levels = models[model_name]["versions"][version]["metrics"].get("levels")
    return dict(levels) if isinstance(levels, dict) else {}


def registration_refusal(model_name: str, payload: Mapping[str, Any], models: Models) -> str | None:
    """Why a ModelRegistered of a route's policy is refused: it must name the probe it reads (a registered risk probe
    or none) and hold each level's evidence, well formed."""
    if not model_name[len(ROUTE_PREFIX) :]:
        return f"a route's model name is {ROUTE_PREFIX}<name>, not {model_name!r}"
    probe = payload["operator_params"].get("probe_sha256")
    if not isinstance(probe, str):
        return f"{model_name}: a routing policy names the risk probe it reads in operator_params.probe_sha256"
    if probe and not any(
        v["artifact_sha256"] == probe
        for name, m in models.items()
        if name.startswith(RISK_PREFIX)
        for v in m["versions"].values()
    ):
        return (
            f"{model_name}: the policy reads probe {probe[:12]}..., which is no registered version of a "
            f"{RISK_PREFIX}<family> model: register the probe first (`evostream risk train`)"
        )
    levels = payload["metrics"].get("levels")
    if not isinstance(levels, dict):
        return f"{model_name}: a routing policy's metrics.levels holds each level's evidence (from its artifact)"
    for key, evidence in levels.items():
        if not (key.isascii() and key.isdigit() and int(key) >= 1 and str(int(key)) == key):
            return f"{model_name}: metrics.levels has key {key!r}; levels are 1, 2, ... (level 0 needs no evidence)"
        why = malformed(evidence)
        if why is not None:
            return f"{model_name}: level {key}: {why}"
    return None


def _judge_evidence(model_name: str, p: Mapping[str, Any], models: Models, policy: Policy) -> str | None:
    level, version = p["level"], p["version"]
    why = malformed(p["evidence"])
    if why is not None:
        return f"{model_name} cannot move to level {level}: {why}"
    known = registered_evidence(models, model_name, version)
    recorded = known.get(str(level))
    if recorded is None:
        have = ", ".join(sorted(known, key=int)) or "none"
        return f"{model_name} {version} holds no evidence for level {level} (levels with evidence: {have})"
    if p["evidence"] != recorded:
        return (
            f"the evidence for level {level} differs from what {model_name} {version}'s policy artifact holds "
            f"(registered: {recorded}; proposed: {p['evidence']})"
        )
    why = insufficient(
        p["evidence"],
        level,
        per_level=level_rule(policy, "level_corpus_per_level"),
        min_accuracy=level_rule(policy, "level_min_accuracy"),
        max_error=level_rule(policy, "level_max_error"),
        min_confidence=level_rule(policy, "level_min_confidence"),
    )
    return None if why is None else f"{model_name} cannot move to level {level}: {why}"


def refusal(
    type_: str,
    model_name: str,
    p: Mapping[str, Any],
    models: Models,
    routes: Routes,
    policy: Policy,
    actor: str,
    reason: str,
) -> str | None:
    """Why this level event is refused (its version is registered: ``policy.refusal`` checked), or None."""
    name = route_name(model_name)
    if not name:
        return f"{type_} is about a route: its model_name is {ROUTE_PREFIX}<name>, not {model_name!r}"
    level = p["level"]
    route = routes.get(name)
    now_version, now_level = (route["version"], route["level"]) if route else (None, None)
    if type_ == "LevelProposed":
        if level < 1:
            return f"a proposal moves a route up to level 1 or above, not {level} (`route level lower` moves down)"
        if p["version"] == now_version and now_level is not None and level <= now_level:
            return (
                f"route {name} is at level {now_level} on {p['version']}: proposing level {level} moves nothing up "
                "(`route level lower` moves down, at once)"
            )
        return _judge_evidence(model_name, p, models, policy)
    if type_ == "LevelApproved":
        pending = route["proposal"] if route else None
        if pending is None or (pending["version"], pending["level"]) != (p["version"], level):
            what = "none" if pending is None else f"level {pending['level']} on {pending['version']}"
            return f"route {name} has no pending proposal of level {level} on {p['version']} (pending: {what})"
        if four_eyes(policy) and actor == pending["actor"]:
            return (
                f"{actor!r} proposed level {level} for route {name} and may not approve it too (four eyes): "
                "another approver must"
            )
        return _judge_evidence(model_name, {**p, "evidence": pending["evidence"]}, models, policy)
    # LevelLowered
    if not reason.strip():
        return f"lowering route {name}'s level needs a reason (--reason): it stays in the log"
    if now_level is None:
        return f"route {name} has no level in force: nothing to lower"
    if p["version"] != now_version:
        return f"route {name}'s policy in force is {now_version}, not {p['version']}: a lowering keeps the policy"
    if not 0 <= level < now_level:
        return f"route {name} is at level {now_level}: lowering goes to a level in 0..{now_level - 1}, not {level}"
    if level > 0 and str(level) not in registered_evidence(models, model_name, p["version"]):
        return f"{model_name} {p['version']} holds no evidence for level {level}: lower to a level it has, or to 0"
    return None


# --- the fold ------------------------------------------------------------------------------------------------------
def _route(routes: dict[str, RouteState], model_name: str) -> RouteState:
    name = model_name[len(ROUTE_PREFIX) :]
    route = routes.get(name)
    if route is None:
        route = routes[name] = {
            "version": None,
            "level": None,
            "evidence": None,
            "set_by": None,
            "proposal": None,
            "history": [],
        }
    return route


def fold(
    routes: dict[str, RouteState],
    models: Models,
    type_: str,
    model_name: str,
    p: Mapping[str, Any],
    actor: str,
    seq: int,
) -> None:
    """Apply one (verified, or trusted) level event to ``routes``."""
    route = _route(routes, model_name)
    version, level = str(p["version"]), int(p["level"])
    route["history"].append({"sequence": seq, "type": type_, "actor": actor, "version": version, "level": level})
    if type_ == "LevelProposed":
        route["proposal"] = {
            "version": version,
            "level": level,
            "evidence": dict(p["evidence"]),
            "actor": actor,
            "sequence": seq,
        }
        return
    if type_ == "LevelApproved":
        pending = route["proposal"]
        route["evidence"] = dict(pending["evidence"]) if pending else None
    else:
        route["evidence"] = registered_evidence(models, model_name, version).get(str(level)) if level else None
    route["version"], route["level"], route["set_by"], route["proposal"] = version, level, seq, None
