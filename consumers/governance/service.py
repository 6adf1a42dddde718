"""The governance commands. Each one builds an event, checks it against the projection of the whole log, signs it
with the actor's key, and appends it as the next link of the chain; a concurrent writer's append makes it re-read
the log and try again (a few times), so the chain never forks and no decision is taken on a stale view.

Reading is a replay: the projection is folded from the log (verified: hashes, signatures, actors, policy) and
refuses to go past a tampered event, so no command is built on top of one."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from evostream.consumers.governance.anchor import advance_anchor, anchor_findings
from evostream.consumers.governance.checkpoint import write_checkpoint
from evostream.consumers.governance.events import ALL_MODELS, GovEvent, check_payload
from evostream.consumers.governance.keys import ActorKey, sign_event
from evostream.consumers.governance.levels import route_name
from evostream.consumers.governance.policy import DEFAULT_POLICY
from evostream.consumers.governance.projection import Finding, Registry, plan_void, replay
from evostream.core.clock import now_us
from evostream.core.errors import ConflictError, GovernanceError, TamperError
from evostream.rollout.plan import RolloutPlan


class LogT(Protocol):
    """What the commands need of the governance log (consumers.governance.log.GovernanceLog)."""

    def items(self, from_offset: int = 0) -> list[tuple[int, GovEvent | Finding]]: ...

    def append(self, ev: GovEvent, expected_head: tuple[int, str], skip: frozenset[int] = frozenset()) -> int: ...


@dataclass
class View:
    """The log as replayed: the projection, the events it folded (with their offsets), what verification found."""

    registry: Registry
    events: list[tuple[int, GovEvent]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def key_path(keys_dir: Path, actor: str) -> Path:
    """Where ``actor``'s private key lives."""
    return keys_dir / f"{actor}.key"


class Governance:
    """The commands of one actor, signed with its key."""

    def __init__(
        self,
        log: LogT,
        key: ActorKey,
        actor: str,
        clock: Callable[[], int] = now_us,
        retries: int = 5,
        checkpoints: Path | None = None,
        anchor: Path | None = None,
    ) -> None:
        """``checkpoints``: a JSONL file outside the topic where each append leaves a signed checkpoint of the new
        head, so a later replay can tell a log cut short (``checkpoint.verify_checkpoints``). ``anchor``: the file
        where this machine keeps the highest head it verified (``anchor.py``). Both are checked before any write."""
        self.log = log
        self.checkpoints = checkpoints
        self.anchor = anchor
        self.key = key
        self.actor = actor
        self.clock = clock
        self.retries = retries
        self._view: View | None = None

    # --- reading -------------------------------------------------------------------------------------------
    def view(self) -> View:
        """The log replayed and verified: folded once, then only its new tail (and this actor's own appends, which
        count at once even if the log's reader has not caught up with them yet)."""
        if self._view is None or self._view.findings:
            items = self.log.items()
            registry, findings = replay(items)
            if self.anchor is not None or self.checkpoints is not None:
                found = anchor_findings(registry, items, anchor=self.anchor, checkpoints=self.checkpoints)
                if not findings and not found and self.anchor is not None:
                    advance_anchor(self.anchor, registry)
                findings += found
            self._view = View(registry, _events(items, registry), findings)
            return self._view
        v = self._view
        tail = self.log.items(from_offset=v.registry.offset + 1)
        if tail:
            registry, findings = replay(tail, start=v.registry)
            self._view = View(registry, v.events + _events(tail, registry), findings)
        return self._view

    def state(self) -> View:
        """The view, refusing to act on a log that failed verification."""
        v = self.view()
        if v.findings:
            first = v.findings[0]
            raise TamperError(
                f"the governance log failed verification at offset {first.offset} (sequence {first.sequence}): "
                f"{first.kind}: {first.detail}; run `evostream replay --verify`{recovery_hint(first)}"
            )
        return v

    # --- writing -------------------------------------------------------------------------------------------
    def append(
        self, type_: str, payload: Mapping[str, Any], model_name: str = ALL_MODELS, reason: str = ""
    ) -> GovEvent:
        """Build, check, sign and append one event on top of the current head; retry on a concurrent append."""
        check_payload(type_, payload)
        last: ConflictError | None = None
        for _ in range(self.retries):
            v = self.state()
            reg = v.registry
            ev = GovEvent(
                type=type_,
                actor=self.actor,
                key_id=self.key.key_id,
                payload=dict(payload),
                model_name=model_name,
                reason=reason,
            )
            # never before the head: "as of a time" reads the log as a prefix, so time must not go backwards in it
            at = max(self.clock(), reg.head_us)
            ev = sign_event(ev.linked(reg.head_sequence + 1, reg.head_hash, at), self.key)
            reg.check(ev)  # unauthorized or against the policy: refused before anything is written
            try:
                offset = self.log.append(ev, (reg.head_sequence, reg.head_hash))
            except ConflictError as e:
                last = e
                self._view = None  # re-read the whole log: someone else's events came first
                continue
            # the append checked that the head was still ``reg``'s: nothing came in between
            registry, findings = replay([(offset, ev)], start=reg)
            self._view = View(registry, [*v.events, (offset, ev)], findings)
            self._anchor_head(ev, offset)
            return ev
        raise ConflictError(f"{type_}: another writer kept appending first ({self.retries} tries): {last}")

    def void(self, offsets: list[int], reason: str, force: bool = False) -> GovEvent:
        """Void records of the log that are no events of its chain (junk, a copy), so that replay skips exactly
        those offsets (an OffsetVoided event, admin only). Refused: an offset that holds no record or is voided
        already; an offset that holds an event the projection takes (a decision of the history) unless ``force``;
        and a void after which the log would still fail verification (the error names the next offset to void)."""
        if not reason.strip():
            raise GovernanceError("a void needs a reason (--reason): it stays in the log")
        if not offsets:
            raise GovernanceError("name the offsets to void (--offset N, one or more)")
        items = self.log.items()
        held = {off: rec for off, rec in items}
        missing = sorted(set(offsets) - set(held))
        if missing:
            span = f"{min(held)}..{max(held)}" if held else "no record"
            raise GovernanceError(f"offset(s) {missing} hold no record of the log (it holds {span}): nothing to void")
        registry, findings, taken = plan_void(items, offsets)
        again = sorted(set(offsets) & set(registry.voided))
        if again:
            raise GovernanceError(f"offset(s) {again} are voided already (see `evostream audit`)")
        if taken and not force:
            what = "; ".join(f"offset {o}: {_told(held[o])}" for o in taken)
            raise GovernanceError(
                f"{what}: a valid event of the chain, not junk. Voiding it removes a decision from the history and "
                "breaks the link of every event after it; if that is really meant, void them together with --force "
                "(the void then says it was forced)"
            )
        if findings:
            f = findings[0]
            raise GovernanceError(
                f"with offset(s) {sorted(offsets)} voided, the log still fails verification at offset {f.offset} "
                f"({f.kind}: {f.detail}): void that record too (add --offset {f.offset})"
            )
        ev = GovEvent(
            type="OffsetVoided",
            actor=self.actor,
            key_id=self.key.key_id,
            payload={"offsets": sorted(offsets), "forced": bool(force)},
            reason=reason,
        )
        ev = sign_event(
            ev.linked(registry.head_sequence + 1, registry.head_hash, max(self.clock(), registry.head_us)), self.key
        )
        registry.check(ev)  # an admin's, or refused before anything is written
        offset = self.log.append(ev, (registry.head_sequence, registry.head_hash), skip=frozenset(offsets))
        self._view = None  # read again: the void changes what the log says from its first voided offset on
        self._anchor_head(ev, offset)
        return ev

    def _anchor_head(self, ev: GovEvent, offset: int) -> None:
        """The signed checkpoint of the new head, and this machine's anchor moved to it."""
        if self.checkpoints is not None:
            write_checkpoint(self.checkpoints, (ev.sequence, ev.hash, offset), self.key)
        if self.anchor is not None and self._view is not None and not self._view.findings:
            advance_anchor(self.anchor, self._view.registry)

    def enroll(self, actor_id: str, public_hex: str, key_id: str, roles: list[str], reason: str = "") -> GovEvent:
        payload = {"actor_id": actor_id, "key_id": key_id, "public_key": public_hex, "roles": list(roles)}
        return self.append("ActorEnrolled", payload, reason=reason)

    def revoke(self, actor_id: str, reason: str) -> GovEvent:
        return self.append("ActorRevoked", {"actor_id": actor_id}, reason=reason)

    def set_policy(self, policy: Mapping[str, Any], reason: str) -> GovEvent:
        return self.append("PolicyChanged", {"policy": dict(policy)}, reason=reason)

    def register(
        self,
        model: str,
        version: str,
        *,
        artifact_uri: str,
        artifact_sha256: str,
        parent: str | None = None,
        operator: str | None = None,
        operator_params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        reason: str = "",
    ) -> GovEvent:
        payload = {
            "version": version,
            "artifact_uri": artifact_uri,
            "artifact_sha256": artifact_sha256,
            "parent": parent,
            "operator": operator,
            "operator_params": dict(operator_params or {}),
            "metrics": dict(metrics or {}),
        }
        return self.append("ModelRegistered", payload, model, reason)

    def propose(self, model: str, version: str, evidence: Mapping[str, Any], reason: str = "") -> GovEvent:
        return self.append("CandidateProposed", {"version": version, "evidence": dict(evidence)}, model, reason)

    def validated(
        self, model: str, version: str, passed: bool, gates: Mapping[str, Any], reason: str = ""
    ) -> list[GovEvent]:
        """ValidationCompleted; a pass is promoted to staging at once when the policy says so."""
        out = [
            self.append(
                "ValidationCompleted", {"version": version, "passed": passed, "gates": dict(gates)}, model, reason
            )
        ]
        reg = self.state().registry
        stage = reg.version(model, version)["stage"]
        if passed and stage == "candidate" and reg.policy.get("auto_promote_staging", True):
            out.append(self.promote(model, version, stage="staging", reason="validation passed (auto_promote_staging)"))
        return out

    def request_approval(self, model: str, version: str, stage: str = "production", reason: str = "") -> GovEvent:
        return self.append("ApprovalRequested", {"version": version, "stage": stage}, model, reason)

    def approve(
        self,
        model: str,
        version: str,
        stage: str = "production",
        reason: str = "",
        evidence: Mapping[str, Any] | None = None,
    ) -> GovEvent:
        """Grant an approval; ``evidence`` (e.g. an ``evostream compare`` summary) is what the approver cites."""
        payload: dict[str, Any] = {"version": version, "stage": stage}
        if evidence is not None:
            payload["evidence"] = dict(evidence)
        return self.append("ApprovalGranted", payload, model, reason)

    def reject(self, model: str, version: str, stage: str = "production", reason: str = "") -> GovEvent:
        return self.append("ApprovalRejected", {"version": version, "stage": stage}, model, reason)

    def promote(
        self, model: str, version: str, *, stage: str | None = None, alias: str | None = None, reason: str = ""
    ) -> GovEvent:
        return self.append("Promoted", {"version": version, "stage": stage, "alias": alias}, model, reason)

    def propose_level(
        self, model: str, version: str, level: int, evidence: Mapping[str, Any], reason: str = ""
    ) -> GovEvent:
        """Propose route ``model`` (``route/<name>``) at ``level`` on policy ``version``, with the level's evidence
        from the policy artifact (``wiring.routing.propose_level`` reads it there); another actor approves it."""
        payload = {"version": version, "level": level, "evidence": dict(evidence)}
        return self.append("LevelProposed", payload, model, reason)

    def approve_level(self, model: str, version: str, level: int, reason: str = "") -> GovEvent:
        """Approve the pending proposal of ``level`` on ``version``: the level takes effect."""
        return self.append("LevelApproved", {"version": version, "level": level}, model, reason)

    def lower_level(self, model: str, level: int, reason: str) -> GovEvent:
        """Move the route down to ``level`` on its policy in force, at once (a reason is required)."""
        route = self.state().registry.route(route_name(model) or "")
        if route is None or route["version"] is None:
            raise GovernanceError(f"{model} has no level in force: nothing to lower")
        return self.append("LevelLowered", {"version": route["version"], "level": level}, model, reason)

    def start_rollout(
        self,
        model: str,
        version: str,
        plan: Mapping[str, Any],
        evidence: Mapping[str, Any],
        reason: str,
        rollout_id: str | None = None,
    ) -> GovEvent:
        """Start rolling ``version`` out in place of ``model``'s production under ``plan`` (a ``RolloutPlan`` JSON;
        omitted fields take the defaults, and the event carries the plan in full), citing ``evidence``."""
        if not reason.strip():
            raise GovernanceError("a rollout needs a reason (--reason): it stays in the log")
        try:
            full = RolloutPlan.from_json(plan).to_json()
        except ValueError as e:
            raise GovernanceError(f"the rollout plan is refused: {e}") from e
        incumbent = self.state().registry.production(model)
        if incumbent is None:
            raise GovernanceError(f"{model} has no production version to roll out from: promote its first version")
        payload = {
            "rollout_id": rollout_id or f"ro-{uuid.uuid4().hex[:12]}",
            "version": version,
            "incumbent": incumbent,
            "plan": full,
            "evidence": dict(evidence),
        }
        return self.append("RolloutStarted", payload, model, reason)

    def step_rollout(
        self, model: str, rollout_id: str, step: int, evidence: Mapping[str, Any], reason: str = ""
    ) -> GovEvent:
        """Move the rollout to ``step`` (the next one), at its plan's weight, on the window's ``evidence``."""
        r = self.state().registry.rollouts.get(rollout_id)
        steps = r["plan"]["steps"] if r is not None else []
        weight = steps[step] if 0 <= step < len(steps) else 0  # no such step: the rules refuse it, and say why
        payload = {"rollout_id": rollout_id, "step": step, "weight": max(weight, 1), "evidence": dict(evidence)}
        return self.append("RolloutStepped", payload, model, reason)

    def abort_rollout(
        self, model: str, rollout_id: str, evidence: Mapping[str, Any], automatic: bool, reason: str
    ) -> GovEvent:
        """End the rollout: the candidate's weight goes back to 0 (``automatic``: the controller decided)."""
        if not reason.strip():
            raise GovernanceError("an abort needs a reason (--reason): it stays in the log")
        payload = {"rollout_id": rollout_id, "automatic": bool(automatic), "evidence": dict(evidence)}
        return self.append("RolloutAborted", payload, model, reason)

    def complete_rollout(self, model: str, rollout_id: str, evidence: Mapping[str, Any], reason: str = "") -> GovEvent:
        """Make the rollout's candidate production (at its last step, after its clean windows)."""
        return self.append("RolloutCompleted", {"rollout_id": rollout_id, "evidence": dict(evidence)}, model, reason)

    def rollback(self, model: str, to: str, reason: str) -> GovEvent:
        """Make ``to`` (a version, or ``previous``: the production version before the current one) serve again."""
        if not reason.strip():
            raise GovernanceError("a rollback needs a reason (--reason)")
        v = self.state()
        current = v.registry.production(model)
        target = previous_production(v.events, model) if to == "previous" else to
        if target is None:
            raise GovernanceError(f"{model} has no previous production version to roll back to")
        if target == current:
            raise GovernanceError(f"{target} already serves {model} in production")
        return self.append("RolledBack", {"version": target, "from_version": current}, model, reason)


def recovery_hint(f: Finding) -> str:
    """How a log stopped by ``f`` recovers, when a void can do it: a record that is no event of the chain."""
    if f.kind == "truncated" or f.offset is None:
        return ""
    return (
        f". If the record at offset {f.offset} is junk or a copy, an admin voids it: `evostream governance void "
        f"--offset {f.offset} --reason '...'` (docs/governance.md, Recovering from a bad record)"
    )


def _events(items: list[tuple[int, GovEvent | Finding]], registry: Registry) -> list[tuple[int, GovEvent]]:
    """The events of ``items`` the chain holds: no undecodable record, nothing at a voided offset."""
    return [(off, ev) for off, ev in items if isinstance(ev, GovEvent) and off not in registry.voided]


def _told(rec: GovEvent | Finding) -> str:
    return str(rec) if isinstance(rec, Finding) else f"{rec.type} #{rec.sequence} by {rec.actor}"


def previous_production(events: list[tuple[int, GovEvent]], model: str) -> str | None:
    """The version that was in production before the current one, from the log's promotions, completed rollouts and
    rollbacks."""
    served: list[str] = []
    candidates: dict[str, str] = {}  # rollout id -> its candidate: a completed rollout moves production to it
    for _, ev in events:
        if ev.model_name != model:
            continue
        if ev.type == "RolloutStarted":
            candidates[str(ev.payload["rollout_id"])] = str(ev.payload["version"])
        moved = (ev.type == "Promoted" and ev.payload.get("stage") == "production") or ev.type == "RolledBack"
        if moved or (ev.type == "RolloutCompleted" and ev.payload["rollout_id"] in candidates):
            version = candidates[ev.payload["rollout_id"]] if ev.type == "RolloutCompleted" else ev.payload["version"]
            if not served or served[-1] != version:
                served.append(str(version))
    return served[-2] if len(served) >= 2 else None


def init(
    log: LogT,
    keys_dir: Path,
    actor: str = "admin",
    clock: Callable[[], int] = now_us,
    *,
    checkpoints: Path,
    anchor: Path,
    reuse_key: bool = False,
) -> tuple[Governance, Path]:
    """Start an empty log: a new admin key (saved 0600 under ``keys_dir``), its self-signed enrolment, the default
    policy. Refuses a log that already has events, and an existing key file unless ``reuse_key``. ``checkpoints``
    and ``anchor``: this machine's files for the log (``views.governance.checkpoints_path``, ``anchor_file``),
    required so that no writer of a machine's keys skips them."""
    if log.items():
        raise GovernanceError("the governance log already has events: `governance init` starts an empty log only")
    path = key_path(keys_dir, actor)
    if reuse_key and path.exists():
        key = ActorKey.load(path)
    else:
        key = ActorKey.generate()
        key.save(path)  # refuses to overwrite an existing key
    gov = Governance(log, key, actor, clock, checkpoints=checkpoints, anchor=anchor)
    gov.enroll(actor, key.public_hex, key.key_id, ["admin"], reason="genesis: the first admin")
    gov.set_policy(DEFAULT_POLICY, reason="genesis: the default policy")
    return gov, path


def load_actor(
    log: LogT,
    keys_dir: Path,
    actor: str,
    clock: Callable[[], int] = now_us,
    *,
    checkpoints: Path,
    anchor: Path,
) -> Governance:
    """The commands of ``actor``, with its key from ``keys_dir``, checked against this machine's checkpoints and
    anchor for the log (required, as for ``init``)."""
    path = key_path(keys_dir, actor)
    if not path.exists():
        raise GovernanceError(
            f"no key for actor {actor!r} at {path}: run `evostream governance init` (first admin) or "
            f"`evostream governance enroll {actor}` as an admin"
        )
    return Governance(log, ActorKey.load(path), actor, clock, checkpoints=checkpoints, anchor=anchor)
