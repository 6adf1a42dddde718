"""The registry: a pure fold of the governance log into actors, policy, each model's versions and stages, each
route's independence level (``levels.py``) and each rollout (``rollouts.py``).

``Registry.apply`` folds one event with one small mutator per event type (``_FOLD``); with ``verify`` it first
checks the event the way the writer's ``check`` does: its hash against its content, its link to the head, its
actor's enrolled and unrevoked key, the signature, the role the type needs, and the policy (``policy.py``).
``replay`` folds a whole log, records a ``Finding`` for the first refused event and never advances past it, then
keeps scanning the rest (hashes, links, signatures of keys it knows) to report what else it can. No Kafka, no
clock, no file: the state is plain dicts and lists, so ``to_json`` is the snapshot and a fold costs no copies.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from evostream.consumers.governance import events as e
from evostream.consumers.governance import levels, rollouts
from evostream.consumers.governance import policy as rules
from evostream.consumers.governance.events import GovEvent, chain_hash, check_payload, payload_of, upcast
from evostream.consumers.governance.keys import SIGNATURE_ALG, key_id_of, verify_signature
from evostream.consumers.governance.shapes import (
    ActorState,
    ModelState,
    PendingApproval,
    RolloutState,
    RouteState,
    VersionState,
)
from evostream.core.errors import GovernanceError, PolicyViolationError, TamperError, UnauthorizedError

SNAPSHOT_FORMAT = 1

FINDING_KINDS = (
    "altered",
    "forged",
    "gap",
    "inserted",
    "reordered",
    "unknown_actor",
    "revoked_key",
    "unauthorized",
    "policy",
    "truncated",
    "undecodable",
)
_ERROR_OF: dict[str, type[GovernanceError]] = {
    "altered": TamperError,
    "forged": TamperError,
    "gap": TamperError,
    "inserted": TamperError,
    "reordered": TamperError,
    "truncated": TamperError,
    "unknown_actor": UnauthorizedError,
    "revoked_key": UnauthorizedError,
    "unauthorized": UnauthorizedError,
    "policy": PolicyViolationError,
    "undecodable": GovernanceError,
}


@dataclass(frozen=True)
class Finding:
    """Something wrong with the event at ``offset`` (None when not read from Kafka) claiming ``sequence``."""

    offset: int | None
    sequence: int
    kind: str
    detail: str

    def __str__(self) -> str:
        where = f"offset {self.offset}" if self.offset is not None else "no offset"
        return f"{self.kind} at sequence {self.sequence} ({where}): {self.detail}"


class Registry:
    """The projection of the governance log: what is true after the events folded so far."""

    def __init__(self) -> None:
        self.head_sequence = -1
        self.head_hash = ""
        self.head_us = 0
        self.offset = -1
        self.genesis_hash = ""
        """The hash of the log's first event: which log this is (API tokens name it)."""
        self.voided: dict[int, int] = {}
        """offset -> the sequence of the OffsetVoided event that voided the record there"""
        self.actors: dict[str, ActorState] = {}
        """actor id -> its roles and keys"""
        self.policy: dict[str, Any] = dict(rules.BASE_POLICY)
        self.models: dict[str, ModelState] = {}
        """model name -> its versions, stages and aliases"""
        self.routes: dict[str, RouteState] = {}
        """route name -> its independence level, the policy version in force, a pending proposal (``levels.py``)"""
        self.rollouts: dict[str, RolloutState] = {}
        """rollout id -> the rollout: model, candidate, incumbent, plan, step, weight, history (``rollouts.py``)"""

    # --- queries ----------------------------------------------------------------------------------------------
    def production(self, model_name: str) -> str | None:
        model = self.models.get(model_name)
        return model["production"] if model else None

    def staging(self, model_name: str) -> str | None:
        model = self.models.get(model_name)
        return model["staging"] if model else None

    def alias(self, model_name: str, alias: str) -> str | None:
        model = self.models.get(model_name)
        return model["aliases"].get(alias) if model else None

    def route(self, name: str) -> RouteState | None:
        """A copy of route ``name``'s level state, or None when no level event ever named it."""
        found = self.routes.get(name)
        return None if found is None else copy.deepcopy(found)

    def active_rollout(self, model_name: str) -> RolloutState | None:
        """A copy of the running rollout of ``model_name``, or None when none runs."""
        found = rollouts.running(self.rollouts, model_name)
        return None if found is None else copy.deepcopy(found)

    def last_rollout(self, model_name: str) -> RolloutState | None:
        """A copy of the running rollout of ``model_name``, or else of its last one; None when it never had one."""
        found = rollouts.latest(self.rollouts, model_name)
        return None if found is None else copy.deepcopy(found)

    def version(self, model_name: str, version: str) -> VersionState:
        """A copy of everything known about one version; GovernanceError if it was never registered."""
        model = self.models.get(model_name)
        if model is None:
            raise GovernanceError(f"no model {model_name!r} is registered (models: {', '.join(self.models) or 'none'})")
        found = model["versions"].get(version)
        if found is None:
            raise GovernanceError(f"{model_name} has no version {version!r} (versions: {', '.join(model['versions'])})")
        return copy.deepcopy(found)

    def lineage(self, model_name: str, version: str) -> list[str]:
        """``version`` and its ancestors by ``parent``, newest first."""
        chain = [version]
        parent = self.version(model_name, version)["parent"]
        while parent is not None:
            chain.append(parent)
            parent = self.models[model_name]["versions"][parent]["parent"]
        return chain

    def pending_approvals(self) -> list[PendingApproval]:
        """Approval requests whose version has not reached the stage yet, with who approved so far."""
        out: list[PendingApproval] = []
        for name, model in sorted(self.models.items()):
            for v, ver in model["versions"].items():
                for stage, seq in sorted(ver["requests"].items()):
                    if ver["stage"] != stage and ver["stage"] != "archived":
                        need = self.policy["production_approvals"] if stage == "production" else 1
                        out.append(
                            {
                                "model_name": name,
                                "version": v,
                                "stage": stage,
                                "requested_seq": seq,
                                "approvers": rules.approvers(ver, stage, self.actors),
                                "needed": need,
                            }
                        )
        return out

    # --- verification -----------------------------------------------------------------------------------------
    def refusal(self, ev: GovEvent, offset: int | None = None) -> Finding | None:
        """Why ``ev``, placed next, would be refused (the first reason in the order hash, link, actor and key,
        signature, role, payload, policy), or None if it may follow the head."""
        kind_detail = self._refusal(ev)
        return None if kind_detail is None else Finding(offset, ev.sequence, *kind_detail)

    def check(self, ev: GovEvent) -> None:
        """Raise TamperError, UnauthorizedError, PolicyViolationError (or GovernanceError for a payload that does
        not fit its type) if ``ev`` would be refused as the next event."""
        kind_detail = self._refusal(ev)
        if kind_detail is not None:
            kind, detail = kind_detail
            raise _ERROR_OF[kind](f"{ev.type} #{ev.sequence} refused ({kind}): {detail}")

    def _refusal(self, ev: GovEvent) -> tuple[str, str] | None:
        try:
            if chain_hash(ev.prev_hash, ev) != ev.hash:
                return "altered", f"{ev.type}: its content does not match its hash {ev.hash[:16]}..."
        except GovernanceError as e:
            return "altered", str(e)
        expected = self.head_sequence + 1
        if ev.sequence > expected:
            return (
                "gap",
                f"expected sequence {expected}, got {ev.sequence}: events {expected}..{ev.sequence - 1} are missing",
            )
        if ev.sequence < expected:
            return (
                "inserted",
                f"sequence {ev.sequence} is already taken (the head is {self.head_sequence}): the log forks",
            )
        if ev.prev_hash != self.head_hash:
            return (
                "inserted",
                f"prev_hash {ev.prev_hash[:16]}... does not link to the head's hash {self.head_hash[:16]}...",
            )
        if ev.signature_alg != SIGNATURE_ALG:
            return "forged", f"signature algorithm {ev.signature_alg!r} is not {SIGNATURE_ALG}"
        if expected == 0:
            return self._genesis_refusal(ev)
        actor = self.actors.get(ev.actor)
        if actor is None:
            return "unknown_actor", f"actor {ev.actor!r} is not enrolled"
        key = actor["keys"].get(ev.key_id)
        if key is None:
            return "unauthorized", f"key {ev.key_id} is not enrolled for actor {ev.actor!r}"
        if key["revoked_seq"] is not None:
            return "revoked_key", f"key {ev.key_id} of {ev.actor!r} was revoked at sequence {key['revoked_seq']}"
        if not verify_signature(key["public_key"], ev.hash, ev.signature):
            return "forged", f"the signature is not {ev.actor!r}'s key {ev.key_id} over the hash"
        return self._content_refusal(upcast(ev), actor["roles"])

    def _content_refusal(self, ev: GovEvent, roles: list[str]) -> tuple[str, str] | None:
        try:
            check_payload(ev.type, ev.payload)
        except GovernanceError as e:
            return "undecodable", str(e)
        allowed = rules.allowed_roles(ev.type, ev.payload, self.policy)
        if allowed.isdisjoint(roles):
            return "unauthorized", f"{ev.type} needs role {' or '.join(sorted(allowed))}; {ev.actor!r} has {roles}"
        why = rules.refusal(
            ev.type,
            ev.model_name,
            ev.payload,
            self.actors,
            self.models,
            self.policy,
            ev.actor,
            routes=self.routes,
            reason=ev.reason,
            rollouts=self.rollouts,
        )
        return None if why is None else ("policy", why)

    def _genesis_refusal(self, ev: GovEvent) -> tuple[str, str] | None:
        p = ev.payload
        if ev.type != "ActorEnrolled" or not isinstance(p.get("roles"), list) or "admin" not in p["roles"]:
            return "unauthorized", f"the first event must enroll an admin, not {ev.type} {p.get('roles', '')}"
        if p.get("actor_id") != ev.actor or p.get("key_id") != ev.key_id:
            return "unauthorized", "the first event must enroll its own actor and key (the admin signs itself in)"
        public = p.get("public_key")
        try:
            derived = key_id_of(public) if isinstance(public, str) else None
        except GovernanceError:
            derived = None
        if derived != ev.key_id or not isinstance(public, str):
            return "unauthorized", f"the first event's key_id {ev.key_id!r} is not the id of its public key"
        if not verify_signature(public, ev.hash, ev.signature):
            return "forged", "the first event is not signed by the key it enrolls"
        return self._content_refusal(upcast(ev), p["roles"])

    # --- the fold ---------------------------------------------------------------------------------------------
    def apply(self, ev: GovEvent, offset: int | None = None, verify: bool = True) -> None:
        """Fold ``ev`` as the next event; with ``verify`` refuse it first (raising, state untouched) as check()
        does. Without, trust the log (for speed, e.g. after a verified replay) and only fold."""
        if verify:
            self.check(ev)
        self._fold(ev, offset)

    def _fold(self, ev: GovEvent, offset: int | None) -> None:
        ev = upcast(ev)
        try:
            _FOLD[ev.type](self, ev)
        except (KeyError, TypeError, AttributeError) as e:
            raise GovernanceError(
                f"{ev.type} #{ev.sequence} does not fold onto the registry ({type(e).__name__}: {e}): "
                "replay with verification to find the event that is wrong"
            ) from e
        if ev.sequence == 0:
            self.genesis_hash = ev.hash
        self.head_sequence = ev.sequence
        self.head_hash = ev.hash
        self.head_us = ev.occurred_at_us
        if offset is not None:
            self.offset = offset

    # --- snapshots --------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The whole state as plain JSON (a copy): from_json of it folds on exactly as this registry does."""
        return copy.deepcopy(
            {
                "format": SNAPSHOT_FORMAT,
                "head_sequence": self.head_sequence,
                "head_hash": self.head_hash,
                "head_us": self.head_us,
                "offset": self.offset,
                "genesis_hash": self.genesis_hash,
                "voided": {str(k): v for k, v in self.voided.items()},
                "actors": self.actors,
                "policy": self.policy,
                "models": self.models,
                "routes": self.routes,
                "rollouts": self.rollouts,
            }
        )

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Registry:
        """The registry of a to_json() dict; GovernanceError if it is not one (another format, missing parts)."""
        if not isinstance(d, dict) or d.get("format") != SNAPSHOT_FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise GovernanceError(f"not a registry snapshot of format {SNAPSHOT_FORMAT} (got {got!r}): replay the log")
        reg = cls()
        try:
            reg.head_sequence, reg.head_hash = int(d["head_sequence"]), str(d["head_hash"])
            reg.head_us, reg.offset = int(d["head_us"]), int(d["offset"])
            # absent from snapshots written before they were kept
            reg.genesis_hash = str(d.get("genesis_hash", ""))
            reg.voided = {int(k): int(v) for k, v in d.get("voided", {}).items()}
            reg.actors, reg.policy, reg.models = copy.deepcopy((d["actors"], d["policy"], d["models"]))
            reg.routes = copy.deepcopy(d.get("routes", {}))  # absent from snapshots written before levels
            reg.rollouts = copy.deepcopy(d.get("rollouts", {}))  # absent from snapshots written before rollouts
        except (KeyError, TypeError, ValueError) as err:
            raise GovernanceError(f"registry snapshot is incomplete ({err}): replay the log instead") from err
        return reg

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Registry) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]  # mutable state

    def __repr__(self) -> str:
        return (
            f"Registry(head_sequence={self.head_sequence}, models={sorted(self.models)}, actors={sorted(self.actors)})"
        )


# --- one small mutator per event type (the event was verified, or is trusted) ---------------------------------
def _on_enrolled(reg: Registry, ev: GovEvent) -> None:
    p = payload_of(ev, e.ActorEnrolled)
    actor = reg.actors.get(p["actor_id"])
    if actor is None:
        actor = reg.actors[p["actor_id"]] = {"roles": [], "keys": {}, "sequence": ev.sequence, "revoked_seq": None}
    actor["roles"] = list(p["roles"])
    actor["revoked_seq"] = None
    actor["keys"][p["key_id"]] = {"public_key": p["public_key"], "sequence": ev.sequence, "revoked_seq": None}


def _on_revoked(reg: Registry, ev: GovEvent) -> None:
    actor = reg.actors[payload_of(ev, e.ActorRevoked)["actor_id"]]
    actor["revoked_seq"] = ev.sequence
    for key in actor["keys"].values():
        if key["revoked_seq"] is None:
            key["revoked_seq"] = ev.sequence


def _on_policy(reg: Registry, ev: GovEvent) -> None:
    reg.policy = {**reg.policy, **payload_of(ev, e.PolicyChanged)["policy"]}


_REGISTERED_FIELDS = frozenset(e.ModelRegistered.__annotations__)


def _on_registered(reg: Registry, ev: GovEvent) -> None:
    p = payload_of(ev, e.ModelRegistered)
    model = reg.models.get(ev.model_name)
    if model is None:
        model = reg.models[ev.model_name] = {"versions": {}, "production": None, "staging": None, "aliases": {}}
    extra = {k: v for k, v in ev.payload.items() if k not in _REGISTERED_FIELDS}
    model["versions"][p["version"]] = {
        "version": p["version"],
        "artifact_uri": p["artifact_uri"],
        "artifact_sha256": p["artifact_sha256"],
        "parent": p["parent"],
        "operator": p["operator"],
        "operator_params": p["operator_params"],
        "metrics": p["metrics"],
        "extra": extra,
        "sequence": ev.sequence,
        "registered_by": ev.actor,
        "registered_at_us": ev.occurred_at_us,
        "stage": "candidate",
        "aliases": [],
        "validation": None,
        "proposals": [],
        "requests": {},
        "approvals": {},
        "events": [ev.sequence],
    }


def _touch(reg: Registry, ev: GovEvent) -> VersionState:
    ver = reg.models[ev.model_name]["versions"][str(ev.payload["version"])]  # every type but actors' and policy's
    ver["events"].append(ev.sequence)
    return ver


def _on_proposed(reg: Registry, ev: GovEvent) -> None:
    _touch(reg, ev)["proposals"].append(
        {"sequence": ev.sequence, "actor": ev.actor, "evidence": payload_of(ev, e.CandidateProposed)["evidence"]}
    )


def _on_validated(reg: Registry, ev: GovEvent) -> None:
    p = payload_of(ev, e.ValidationCompleted)
    _touch(reg, ev)["validation"] = {
        "passed": p["passed"],
        "gates": p["gates"],
        "sequence": ev.sequence,
        "actor": ev.actor,
    }


def _on_requested(reg: Registry, ev: GovEvent) -> None:
    _touch(reg, ev)["requests"][payload_of(ev, e.ApprovalRequested)["stage"]] = ev.sequence


def _on_granted(reg: Registry, ev: GovEvent) -> None:
    approvals = _touch(reg, ev)["approvals"]
    stage = payload_of(ev, e.ApprovalGranted)["stage"]
    ap = approvals.get(stage)
    if ap is None:
        ap = approvals[stage] = {"granted": {}, "rejected": None}
    ap["granted"][ev.actor] = ev.sequence


def _on_rejected(reg: Registry, ev: GovEvent) -> None:
    # a rejection voids the grants before it: approvers must look again
    approvals = _touch(reg, ev)["approvals"]
    stage = payload_of(ev, e.ApprovalRejected)["stage"]
    approvals[stage] = {"granted": {}, "rejected": {"actor": ev.actor, "sequence": ev.sequence}}


def _make_production(model: ModelState, name: str) -> None:
    versions = model["versions"]
    old = model["production"]
    if old is not None and old != name:
        versions[old]["stage"] = "archived"
    model["production"] = name
    versions[name]["stage"] = "production"
    if model["staging"] == name:
        model["staging"] = None


def _on_promoted(reg: Registry, ev: GovEvent) -> None:
    p = payload_of(ev, e.Promoted)
    ver = _touch(reg, ev)
    model = reg.models[ev.model_name]
    name, stage = p["version"], p["stage"]
    if stage == "production":
        _make_production(model, name)
    elif stage == "staging":
        old = model["staging"]
        if old is not None and old != name:
            model["versions"][old]["stage"] = "candidate"  # replaced in staging: back in the queue, not retired
        model["staging"] = name
        ver["stage"] = "staging"
    else:
        alias = str(p["alias"])  # check_payload: exactly one of stage and alias is set
        old = model["aliases"].get(alias)
        if old is not None:
            model["versions"][old]["aliases"].remove(alias)
        model["aliases"][alias] = name
        ver["aliases"].append(alias)


def _on_rolled_back(reg: Registry, ev: GovEvent) -> None:
    _touch(reg, ev)
    _make_production(reg.models[ev.model_name], payload_of(ev, e.RolledBack)["version"])


def _on_voided(reg: Registry, ev: GovEvent) -> None:
    for offset in payload_of(ev, e.OffsetVoided)["offsets"]:
        reg.voided[offset] = ev.sequence


def _on_level(reg: Registry, ev: GovEvent) -> None:
    _touch(reg, ev)  # an event about the policy version it names
    levels.fold(reg.routes, reg.models, ev.type, ev.model_name, ev.payload, ev.actor, ev.sequence)


def _on_rollout(reg: Registry, ev: GovEvent) -> None:
    r = rollouts.fold(
        reg.rollouts, ev.type, ev.model_name, ev.payload, ev.actor, ev.sequence, ev.reason, ev.occurred_at_us
    )
    model = reg.models[ev.model_name]
    model["versions"][r["version"]]["events"].append(ev.sequence)  # every rollout event is about its candidate
    if ev.type == "RolloutCompleted":
        _make_production(model, r["version"])


def _unrecord(reg: Registry, ev: GovEvent) -> None:
    """Take out of ``reg.voided`` the offsets a folded OffsetVoided event named, for a void that does not stand
    (``standing_voids``): the replay skipped none of them, so none counts as voided (an anchor or a checkpoint there
    is still checked)."""
    for offset in ev.payload.get("offsets", []):
        if reg.voided.get(offset) == ev.sequence:
            del reg.voided[offset]


_FOLD: dict[str, Callable[[Registry, GovEvent], None]] = {
    "ActorEnrolled": _on_enrolled,
    "ActorRevoked": _on_revoked,
    "PolicyChanged": _on_policy,
    "ModelRegistered": _on_registered,
    "CandidateProposed": _on_proposed,
    "ValidationCompleted": _on_validated,
    "ApprovalRequested": _on_requested,
    "ApprovalGranted": _on_granted,
    "ApprovalRejected": _on_rejected,
    "Promoted": _on_promoted,
    "RolledBack": _on_rolled_back,
    "OffsetVoided": _on_voided,
    "LevelProposed": _on_level,
    "LevelApproved": _on_level,
    "LevelLowered": _on_level,
    "RolloutStarted": _on_rollout,
    "RolloutStepped": _on_rollout,
    "RolloutAborted": _on_rollout,
    "RolloutCompleted": _on_rollout,
}


# --- replay -------------------------------------------------------------------------------------------------------
class _Scan:
    """After the projection stopped: checks what the rest of the log can still be checked for without trusting
    it (each event's hash against its content, links between the events seen since, signatures of known keys)."""

    def __init__(self, reg: Registry) -> None:
        self.head = reg.head_sequence
        self.hashes: dict[int, list[str]] = {reg.head_sequence: [reg.head_hash]}  # a fork has several
        self.offsets: dict[int, int | None] = {reg.head_sequence: reg.offset}
        self.top = reg.head_sequence
        self.keys = {kid: k["public_key"] for a in reg.actors.values() for kid, k in a["keys"].items()}
        self.blind = False  # the previous record was undecodable: the next link cannot be checked
        self.gaps: list[tuple[int, int, int]] = []  # (finding index, first missing, last missing)

    def see(self, ev: GovEvent, offset: int | None) -> None:
        if ev.sequence not in self.hashes:
            self.hashes[ev.sequence] = [ev.hash]
            self.offsets[ev.sequence] = offset
        elif ev.hash not in self.hashes[ev.sequence]:
            self.hashes[ev.sequence].append(ev.hash)
        self.top = max(self.top, ev.sequence)
        self.blind = False
        if ev.type == "ActorEnrolled" and isinstance(ev.payload.get("public_key"), str):
            self.keys.setdefault(str(ev.payload.get("key_id")), ev.payload["public_key"])

    def judge(self, ev: GovEvent) -> tuple[str, str] | None:
        seq = ev.sequence
        try:
            if chain_hash(ev.prev_hash, ev) != ev.hash:
                return "altered", f"{ev.type}: its content does not match its hash {ev.hash[:16]}..."
        except GovernanceError as e:
            return "altered", str(e)
        if seq in self.hashes or seq <= self.head:
            taken = self.offsets.get(seq, "an applied event")
            same = " (a copy of it)" if ev.hash in self.hashes.get(seq, ()) else ""
            return "inserted", f"sequence {seq} is already taken by offset {taken}{same}: the log forks"
        if not self.blind:
            if seq < self.top:
                return "reordered", f"sequence {seq} comes after sequence {self.top}"
            if seq > self.top + 1:
                return (
                    "gap",
                    f"expected sequence {self.top + 1}, got {seq}: events {self.top + 1}..{seq - 1} are missing",
                )
            if ev.prev_hash not in self.hashes[self.top]:
                return "inserted", f"prev_hash does not link to the hash of sequence {self.top}"
        public = self.keys.get(ev.key_id)
        if public is not None and not verify_signature(public, ev.hash, ev.signature):
            return "forged", f"the signature is not key {ev.key_id}'s over the hash"
        return None


@contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """The cyclic collector off while folding: the fold makes many small dicts and lists but no cycles, and the
    collector's passes over a big log's events were most of the fold's run-to-run spread (bench.replay; see
    docs/benchmarks.md#governance-replay)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def replay(
    events: Iterable[tuple[int | None, GovEvent | Finding | Exception]],
    *,
    verify: bool = True,
    until_us: int | None = None,
    until_offset: int | None = None,
    start: Registry | None = None,
) -> tuple[Registry, list[Finding]]:
    """Fold ``events`` (offset, event) in order onto ``start`` (a snapshot; not modified) or an empty registry.

    The first refused event gives a Finding and the projection stops before it; the rest is still scanned for
    further findings. A record that could not be decoded may come as a Finding or an exception in place of the
    event: it is an "undecodable" finding and stops the projection too. ``until_offset`` / ``until_us`` give the
    state as of that offset / time: the fold ends before the first event past it (events are in chain order, so
    this is a prefix of the log). Without ``verify`` only the fold runs (no hash, link, signature or rule check).

    A record at an offset that a standing OffsetVoided event names is skipped, whatever it holds (``standing_voids``).
    """
    items = list(events)
    with _no_gc_pauses():
        skip = standing_voids(items, verify=verify, start=start)
        return _replay(_start(start), items, verify, until_us, until_offset, _Voids(skip))


def _start(start: Registry | None) -> Registry:
    return Registry.from_json(start.to_json()) if start is not None else Registry()


@dataclass
class _Voids:
    """What a replay skips (voided offset -> offset of the void), and what it saw of the voids."""

    skip: dict[int, int]
    folded: set[int] = field(default_factory=set)
    """offsets of the events the fold took (verified, when it verifies)"""
    valid: set[int] = field(default_factory=set)
    """skipped offsets that held an event the projection would have taken there"""


def _void_claims(items: list[tuple[int | None, GovEvent | Finding | Exception]]) -> dict[int, tuple[list[int], bool]]:
    """offset of each OffsetVoided event -> (the earlier offsets it names, forced), as written (not yet verified)."""
    claims: dict[int, tuple[list[int], bool]] = {}
    for offset, item in items:
        if offset is None or not isinstance(item, GovEvent) or item.type != "OffsetVoided":
            continue
        offsets, forced = item.payload.get("offsets"), item.payload.get("forced")
        if isinstance(offsets, list) and all(type(o) is int and 0 <= o < offset for o in offsets):
            claims[offset] = (offsets, forced is True)
    return claims


def standing_voids(
    events: Iterable[tuple[int | None, GovEvent | Finding | Exception]],
    *,
    verify: bool = True,
    start: Registry | None = None,
    also: Iterable[int] = (),
) -> dict[int, int]:
    """voided offset -> the offset of the void, for every OffsetVoided event of ``events`` that stands: it names only
    offsets before its own; with ``verify``, the projection folds it (so it is in the chain, signed by an admin key),
    and unless it says ``forced``, none of the records it skips is an event the projection would have taken there.
    A void that does not stand voids nothing (the replay is run again without it: a few times at most, and never
    when the log holds no void). ``also``: offsets to treat as voided by a standing, forced void (what ``void``
    would do)."""
    items = events if isinstance(events, list) else list(events)
    claims = _void_claims(items)
    pinned = {offset: -1 for offset in also}
    while claims:
        skip = pinned | {n: m for m, (offsets, _) in claims.items() for n in offsets}  # a void in the log wins
        if not verify:
            return skip
        seen = _Voids(skip)
        _replay(_start(start), items, True, None, None, seen)
        fallen = {
            m
            for m, (offsets, forced) in claims.items()
            if m not in seen.folded or (not forced and seen.valid.intersection(offsets))
        }
        if not fallen:
            return skip
        claims = {m: claim for m, claim in claims.items() if m not in fallen}
    return dict(pinned)


def plan_void(
    events: Iterable[tuple[int | None, GovEvent | Finding | Exception]], offsets: Iterable[int]
) -> tuple[Registry, list[Finding], list[int]]:
    """What voiding ``offsets`` would do: the verified projection with them (and every standing void) skipped, its
    findings, and which of ``offsets`` hold an event the projection takes today (voiding those needs force)."""
    items = list(events)
    offsets = list(offsets)
    with _no_gc_pauses():
        now = _Voids(standing_voids(items))
        _replay(Registry(), items, True, None, None, now)
        after = _Voids(standing_voids(items, also=offsets))
        registry, findings = _replay(Registry(), items, True, None, None, after)
    return registry, findings, sorted(set(offsets) & (now.folded | after.valid))


def _replay(
    reg: Registry,
    events: Iterable[tuple[int | None, GovEvent | Finding | Exception]],
    verify: bool,
    until_us: int | None,
    until_offset: int | None,
    voids: _Voids,
) -> tuple[Registry, list[Finding]]:
    findings: list[Finding] = []
    scan: _Scan | None = None
    standing = set(voids.skip.values())
    for offset, item in events:
        if until_offset is not None and offset is not None and offset > until_offset:
            break
        if offset is not None and offset in voids.skip:
            if verify and scan is None and isinstance(item, GovEvent) and reg._refusal(item) is None:
                voids.valid.add(offset)
            continue
        if not isinstance(item, GovEvent):
            found = item if isinstance(item, Finding) else Finding(offset, -1, "undecodable", str(item))
            findings.append(found)
            scan = scan or _Scan(reg)
            scan.blind = True
            continue
        if until_us is not None and item.occurred_at_us > until_us:
            break
        if scan is None:
            if not verify:
                reg._fold(item, offset)
                continue
            kind_detail = reg._refusal(item)
            if kind_detail is None:
                reg._fold(item, offset)
                if offset is not None:
                    voids.folded.add(offset)
                if item.type == "OffsetVoided" and (offset is None or offset not in standing):
                    _unrecord(reg, item)  # in the chain, but it voids nothing: its offsets are no voided ones
                continue
            scan = _Scan(reg)
        elif verify:
            kind_detail = scan.judge(item)
        else:
            continue
        if kind_detail is not None:
            kind, detail = kind_detail
            if kind == "gap":
                scan.gaps.append((len(findings), scan.top + 1, item.sequence - 1))
            findings.append(Finding(offset, item.sequence, kind, detail))
        scan.see(item, offset)
    if scan is not None:
        for index, lo, hi in scan.gaps:  # a "missing" event that came later was moved, not dropped
            late = [s for s in range(lo, hi + 1) if s in scan.hashes]
            if late:
                f = findings[index]
                detail = f"sequence {f.sequence} comes before {', '.join(map(str, late))}"
                findings[index] = Finding(f.offset, f.sequence, "reordered", detail)
    return reg, findings
