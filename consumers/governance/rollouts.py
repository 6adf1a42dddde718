"""Rollouts as governance: the rules of a rollout's events and their fold.

A rollout moves production of one model from the **incumbent** (its production version when the rollout started) to
a **candidate** version in governed steps (``evostream.rollout.plan.RolloutPlan``): a shadow phase (weight 0), then
each step's weight in turn, then the candidate becomes production. Production's pointer does not move until
RolloutCompleted, so an abort is instant: the candidate's weight goes back to 0.

- **RolloutStarted** (a person, with the roles of a promotion to production): refused unless the candidate is
  registered and is not the incumbent, the incumbent is the model's production now, no other rollout of the model
  runs, the rollout id is new, and the plan is a valid plan (``RolloutPlan.from_json``: known fields, valid values)
  that carries every field of ``REQUIRED_PLAN_FIELDS``, each as ``RolloutPlan.to_json()`` writes it (so a replay
  never depends on defaults of the day). A field added to RolloutPlan later may be missing from an older event's
  plan: it takes its default, and the event still verifies. ``policy.py`` adds the checks of a promotion to
  production (a passed validation, the approvals the policy asks for).
- **RolloutStepped** (controller or admin): the next step only (step = the current step + 1; the first is 0), at the
  plan's weight for it; ``policy.py`` refuses it (and RolloutCompleted) once the candidate no longer holds what a
  promotion to production needs (a later failed validation, a rejection or a revoked approver): abort it then.
- **RolloutAborted** (controller, admin or approver): any running rollout; the candidate's stage does not change.
- **RolloutCompleted** (controller or admin): a running rollout at its last step (100%); folds as a promotion to
  production of the candidate (``projection.py``).

While a rollout of a model runs, ``policy.py`` refuses a Promoted to production and a RolledBack of that model: abort
the rollout first.

Pure: plain dicts in, a reason or None out; ``fold`` changes the rollouts dict it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from evostream.consumers.governance.shapes import ModelState, RolloutState
from evostream.rollout.plan import RolloutPlan

ROLLOUT_EVENTS = frozenset({"RolloutStarted", "RolloutStepped", "RolloutAborted", "RolloutCompleted"})
RUNNING, ABORTED, COMPLETED = "running", "aborted", "completed"
SHADOW_STEP = -1
"""A rollout's step in its shadow phase, before step 0."""

REQUIRED_PLAN_FIELDS = frozenset(
    {"steps", "step_s", "min_samples", "shadow_share", "shadow_s", "clean_cycles", "confidence", "gates"}
)
"""The fields every RolloutStarted's plan carries: those of the first RolloutPlan, frozen here (never today's
``to_json()``), so an event written before a field was added still verifies; a later field takes its default."""

Models = Mapping[str, ModelState]
Rollouts = Mapping[str, RolloutState]


def running(rollouts: Rollouts, model_name: str) -> RolloutState | None:
    """The running rollout of ``model_name`` (at most one runs), or None."""
    for r in rollouts.values():
        if r["model_name"] == model_name and r["status"] == RUNNING:
            return r
    return None


def latest(rollouts: Rollouts, model_name: str) -> RolloutState | None:
    """The running rollout of ``model_name``, or else its last one; None when it never had one."""
    mine = [r for r in rollouts.values() if r["model_name"] == model_name]
    return running(rollouts, model_name) or (max(mine, key=lambda r: r["started_seq"]) if mine else None)


def refusal(type_: str, model_name: str, p: Mapping[str, Any], models: Models, rollouts: Rollouts) -> str | None:
    """Why this rollout event is refused by the rollouts' state (the model is registered, and RolloutStarted's
    version too: ``policy.refusal`` checked), or None."""
    if type_ == "RolloutStarted":
        return _started(model_name, p, models, rollouts)
    rid = p["rollout_id"]
    r = rollouts.get(rid)
    if r is None or r["model_name"] != model_name:
        now = running(rollouts, model_name)
        return f"{model_name} has no rollout {rid!r} (running: {now['rollout_id'] if now else 'none'})"
    if r["status"] != RUNNING:
        return f"rollout {rid} of {model_name} is {r['status']}: it takes no more events"
    steps = r["plan"]["steps"]
    if type_ == "RolloutStepped":
        step, weight = p["step"], p["weight"]
        if step != r["step"] + 1:
            where = "the shadow phase" if r["step"] == SHADOW_STEP else f"step {r['step']}"
            return f"rollout {rid} is at {where}: the next step is {r['step'] + 1}, not {step}"
        if step >= len(steps):
            return (
                f"rollout {rid} is at its last step ({r['step']}, {steps[-1]}%): complete it, there is no step {step}"
            )
        if weight != steps[step]:
            return f"rollout {rid}'s step {step} is {steps[step]}% by its plan, not {weight}%"
        return None
    if type_ == "RolloutCompleted":
        if r["step"] != len(steps) - 1:
            where = "the shadow phase" if r["step"] == SHADOW_STEP else f"step {r['step']} ({r['weight']}%)"
            return f"rollout {rid} is at {where}: it completes only at its last step ({len(steps) - 1}, 100%)"
        production = models[model_name]["production"]
        if production != r["incumbent"]:
            return f"{model_name}'s production is {production}, not the rollout's incumbent {r['incumbent']}"
    return None  # RolloutAborted: any running rollout


def _started(model_name: str, p: Mapping[str, Any], models: Models, rollouts: Rollouts) -> str | None:
    rid, version, incumbent = p["rollout_id"], p["version"], p["incumbent"]
    if not rid.strip():
        return "RolloutStarted: the rollout id must not be empty"
    if rid in rollouts:
        return f"rollout id {rid!r} is taken (rollout of {rollouts[rid]['model_name']} {rollouts[rid]['version']})"
    production = models[model_name]["production"]
    if production is None:
        return f"{model_name} has no production version to roll out from: promote its first version instead"
    if incumbent != production:
        return f"the incumbent {incumbent!r} is not {model_name}'s production ({production}): re-read and retry"
    if version == incumbent:
        return f"{model_name} {version} is production already: roll out another version"
    now = running(rollouts, model_name)
    if now is not None:
        return (
            f"rollout {now['rollout_id']} of {model_name} ({now['version']}) is running: one rollout of a model at a "
            "time (abort it first)"
        )
    try:
        plan = RolloutPlan.from_json(p["plan"])
    except ValueError as e:
        return f"RolloutStarted: the plan is refused: {e}"
    missing = sorted(REQUIRED_PLAN_FIELDS - set(p["plan"]))
    full = plan.to_json()
    loose = sorted(k for k in p["plan"] if full[k] != p["plan"][k])
    if missing or loose:
        what = f"it lacks {missing}" if missing else f"{loose} not as to_json() writes them"
        return f"RolloutStarted: write the plan in full, as RolloutPlan.to_json() does ({what}): {full}"
    return None


def fold(
    rollouts: dict[str, RolloutState],
    type_: str,
    model_name: str,
    p: Mapping[str, Any],
    actor: str,
    seq: int,
    reason: str,
    at_us: int,
) -> RolloutState:
    """Apply one (verified, or trusted) rollout event to ``rollouts``; the rollout it is about, changed."""
    if type_ == "RolloutStarted":
        r: RolloutState = {
            "rollout_id": p["rollout_id"],
            "model_name": model_name,
            "version": p["version"],
            "incumbent": p["incumbent"],
            "plan": dict(p["plan"]),
            "evidence": dict(p["evidence"]),
            "status": RUNNING,
            "step": SHADOW_STEP,
            "weight": 0,
            "started_seq": seq,
            "started_us": at_us,
            "history": [],
        }
        rollouts[r["rollout_id"]] = r
    else:
        r = rollouts[p["rollout_id"]]
    if type_ == "RolloutStepped":
        r["step"], r["weight"] = int(p["step"]), int(p["weight"])
    elif type_ == "RolloutAborted":
        r["status"], r["weight"] = ABORTED, 0
    elif type_ == "RolloutCompleted":
        r["status"] = COMPLETED
    r["history"].append(
        {
            "type": type_,
            "sequence": seq,
            "actor": actor,
            "step": r["step"],
            "weight": r["weight"],
            "evidence": dict(p["evidence"]),
            "reason": reason,
            "at_us": at_us,
        }
    )
    return r
