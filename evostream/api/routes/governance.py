"""Governance actions for the actor whose key came: ``POST /governance/rollback`` and ``/governance/approve``.

Each is signed with that actor's key from this machine's key folder (the token proves who calls; the log's own
rules decide whether its roles allow the act), one write at a time, and the registry is read afresh after."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from evostream.api.answers import Approved, RolledBack
from evostream.api.auth import Actor
from evostream.api.bodies import ApproveBody, RollbackBody
from evostream.api.deps import CurrentActor, State
from evostream.api.errors import ForbiddenError, refusals
from evostream.api.state import ApiState
from evostream.core.errors import GovernanceError

router = APIRouter(tags=["governance"], responses=refusals(400, 401, 403, 404, 409))


@router.post(
    "/governance/rollback", response_model=RolledBack, summary="Make an earlier version serve production again"
)
def rollback(body: RollbackBody, state: State, actor: CurrentActor) -> RolledBack:
    ev = acting(state, actor, lambda gov: gov.rollback(body.model, body.to, body.reason))
    return RolledBack(
        event=ev.type,
        sequence=ev.sequence,
        actor=ev.actor,
        model=body.model,
        from_version=ev.payload["from_version"],
        version=ev.payload["version"],
    )


@router.post("/governance/approve", response_model=Approved, summary="Approve a version for a stage")
def approve(body: ApproveBody, state: State, actor: CurrentActor) -> Approved:
    ev = acting(state, actor, lambda gov: gov.approve(body.model, body.version, body.stage, body.reason))
    return Approved(
        event=ev.type, sequence=ev.sequence, actor=ev.actor, model=body.model, version=body.version, stage=body.stage
    )


def acting(state: ApiState, actor: Actor, act: Callable[[Any], Any]) -> Any:
    """``act`` with the actor's commands (ForbiddenError if its private key is not on this machine)."""
    with state.write_lock:
        try:
            gov = state.governance.actor(actor.name)
        except GovernanceError as e:
            raise ForbiddenError(
                f"actor {actor.name!r} holds a valid key, but its private key is not on this "
                "server to sign with; act from the machine that holds it"
            ) from e
        try:
            return act(gov)
        finally:
            gov.log.close()
            state.registry.invalidate()
