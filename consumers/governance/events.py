"""Governance events: their types and payloads, the canonical bytes that are hashed, and the hash chain link.

One chain over the whole topic (``evo.governance`` has one partition): event ``n`` carries ``sequence = n`` and the
hash of event ``n - 1`` as ``prev_hash``. ``hash = SHA-256(prev_hash bytes || canonical_bytes(event))`` covers the
header (everything but ``hash``, ``signature`` and ``signature_alg``) and the payload, and the actor's Ed25519 key
signs the 32 hash bytes (``keys.py``). Pure: no I/O, no Kafka.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import UnionType
from typing import Any, TypedDict, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from evostream.core.errors import GovernanceError

ROLES = ("admin", "approver", "proposer", "controller")
"""``controller``: a machine actor (the rollout controller) that may write only RolloutStepped, RolloutAborted and
RolloutCompleted (``policy.py``)."""
STAGES = ("candidate", "staging", "production", "archived")
ALL_MODELS = "*"
"""``model_name`` of events about no one model: actors and policy."""


# The payload of each event type, typed: the fold reads them through these (``payload_of``), and the runtime check of
# an event (``check_payload``) is derived from them. Every listed field must be present (a ``| None`` one may be
# null); extra fields are allowed (a newer writer), and kept.
class ActorEnrolled(TypedDict):
    actor_id: str
    key_id: str
    public_key: str
    roles: list[str]


class ActorRevoked(TypedDict):
    actor_id: str


class PolicyChanged(TypedDict):
    policy: dict[str, Any]


class ModelRegistered(TypedDict):
    version: str
    artifact_uri: str
    artifact_sha256: str
    parent: str | None
    operator: str | None
    operator_params: dict[str, Any]
    metrics: dict[str, Any]


class CandidateProposed(TypedDict):
    version: str
    evidence: dict[str, Any]


class ValidationCompleted(TypedDict):
    version: str
    passed: bool
    gates: dict[str, Any]


class ApprovalRequested(TypedDict):
    version: str
    stage: str


class ApprovalGranted(ApprovalRequested, total=False):
    """``evidence`` (optional: events written before it existed have none): what the approver cites, e.g. an
    ``evostream compare`` summary."""

    evidence: dict[str, Any]


class ApprovalRejected(ApprovalRequested):
    pass


class Promoted(TypedDict):
    version: str
    stage: str | None
    alias: str | None


class RolledBack(TypedDict):
    version: str
    from_version: str | None


class OffsetVoided(TypedDict):
    """An admin's void of records of the log that are no events of its chain (junk, a copy): replay skips exactly
    these offsets. ``forced``: the admin voided records that were valid events there (``governance void --force``)."""

    offsets: list[int]
    forced: bool


class LevelProposed(TypedDict):
    """A route (model ``route/<name>``) to an independence level on one of its policy versions, with the level's
    evidence from the policy artifact (``levels.py``)."""

    version: str
    level: int
    evidence: dict[str, Any]


class LevelApproved(TypedDict):
    """Another actor's approval of the pending proposal: the level takes effect."""

    version: str
    level: int


class LevelLowered(TypedDict):
    """The route moved down on its policy in force, towards the reference, at once (the event's reason says why)."""

    version: str
    level: int


class RolloutStarted(TypedDict):
    """A rollout of candidate ``version`` in place of ``incumbent`` (production now) under ``plan``
    (``evostream.rollout.plan.RolloutPlan.to_json()``), citing ``evidence`` (may be {}); ``rollouts.py``."""

    rollout_id: str
    version: str
    incumbent: str
    plan: dict[str, Any]
    evidence: dict[str, Any]


class RolloutStepped(TypedDict):
    """The rollout moved to ``step`` (an index into its plan's steps; the first is 0): the candidate answers
    ``weight`` percent of requests. ``evidence``: the window's analysis, per gate."""

    rollout_id: str
    step: int
    weight: int
    evidence: dict[str, Any]


class RolloutAborted(TypedDict):
    """The rollout is over, weight 0: every request goes back to the incumbent. ``automatic``: the controller's
    decision (a broken gate), not a person's."""

    rollout_id: str
    automatic: bool
    evidence: dict[str, Any]


class RolloutCompleted(TypedDict):
    """The rollout's candidate becomes production (after its clean windows at 100%)."""

    rollout_id: str
    evidence: dict[str, Any]


PAYLOAD_TYPES: dict[str, type] = {
    t.__name__: t
    for t in (
        ActorEnrolled,
        ActorRevoked,
        PolicyChanged,
        ModelRegistered,
        CandidateProposed,
        ValidationCompleted,
        ApprovalRequested,
        ApprovalGranted,
        ApprovalRejected,
        Promoted,
        RolledBack,
        OffsetVoided,
        LevelProposed,
        LevelApproved,
        LevelLowered,
        RolloutStarted,
        RolloutStepped,
        RolloutAborted,
        RolloutCompleted,
    )
}
P = TypeVar("P")


def _accepted(annotation: Any) -> tuple[type, ...]:
    """The Python types a JSON value of this annotation may have (an int is a float's JSON spelling too)."""
    origin = get_origin(annotation)
    if origin in (UnionType, Union):
        return tuple(t for arm in get_args(annotation) for t in _accepted(arm))
    if annotation is float:
        return (int, float)
    return (origin or annotation,)


# type -> {payload field: accepted Python types}, from the TypedDicts above
PAYLOADS: dict[str, dict[str, tuple[type, ...]]] = {
    name: {field: _accepted(a) for field, a in get_type_hints(td).items()} for name, td in PAYLOAD_TYPES.items()
}
OPTIONAL: dict[str, frozenset[str]] = {
    name: frozenset(getattr(td, "__optional_keys__", ())) for name, td in PAYLOAD_TYPES.items()
}
"""type -> payload fields an event may omit (added after events of the type were written)"""
EVENT_TYPES = tuple(PAYLOADS)


def payload_of(ev: GovEvent, kind: type[P]) -> P:
    """The event's payload as the TypedDict of its type; refuses an event of another type (a programming error)."""
    if ev.type != kind.__name__:
        raise GovernanceError(f"event {ev.sequence} is a {ev.type}, not a {kind.__name__}")
    return cast(P, ev.payload)  # check_payload verified the fields when the event was made or read


@dataclass(frozen=True)
class GovEvent:
    """One governance event as the chain sees it; ``to_record`` / ``from_record`` map it to the Avro record."""

    type: str
    actor: str
    key_id: str
    payload: dict[str, Any]
    model_name: str = ALL_MODELS
    reason: str = ""
    sequence: int = -1
    prev_hash: str = ""
    occurred_at_us: int = 0
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    type_version: int = 1
    hash: str = ""
    signature: str = ""
    signature_alg: str = "Ed25519"

    def header(self) -> dict[str, Any]:
        """What the hash covers besides the payload."""
        return {
            "event_id": self.event_id,
            "model_name": self.model_name,
            "sequence": self.sequence,
            "type": self.type,
            "type_version": self.type_version,
            "actor": self.actor,
            "key_id": self.key_id,
            "reason": self.reason,
            "occurred_at_us": self.occurred_at_us,
            "prev_hash": self.prev_hash,
        }

    def to_record(self) -> dict[str, Any]:
        return {
            **self.header(),
            "payload_json": canonical_json(self.payload),
            "hash": self.hash,
            "signature": self.signature,
            "signature_alg": self.signature_alg,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> GovEvent:
        """The event of a decoded record (any schema version); a payload that is not JSON raises GovernanceError."""
        try:
            payload = json.loads(rec["payload_json"])
        except (TypeError, ValueError) as e:
            raise GovernanceError(f"event {rec.get('sequence')}: payload is not JSON: {e}") from e
        if not isinstance(payload, dict):
            raise GovernanceError(f"event {rec.get('sequence')}: payload is not a JSON object")
        if canonical_json(payload) != rec["payload_json"]:  # duplicate keys, other spacing or number forms
            raise GovernanceError(
                f"event {rec.get('sequence')}: payload_json is not canonical JSON (sorted keys, no spaces, no "
                "duplicate keys): the hash covers one reading of it, and a reader may see another"
            )
        ev = cls(
            type=str(rec["type"]),
            actor=str(rec["actor"]),
            key_id=str(rec["key_id"]),
            payload=payload,
            model_name=str(rec["model_name"]),
            reason=str(rec.get("reason") or ""),
            sequence=int(rec["sequence"]),
            prev_hash=str(rec["prev_hash"]),
            occurred_at_us=int(rec["occurred_at_us"]),
            event_id=str(rec["event_id"]),
            type_version=int(rec.get("type_version") or 1),
            hash=str(rec.get("hash") or ""),
            signature=str(rec["signature"]),
            signature_alg=str(rec.get("signature_alg") or ""),
        )
        return ev

    def linked(self, sequence: int, prev_hash: str, occurred_at_us: int) -> GovEvent:
        """This event placed after the head (``sequence``, ``prev_hash``), its hash computed; still unsigned."""
        ev = replace(self, sequence=sequence, prev_hash=prev_hash, occurred_at_us=occurred_at_us, hash="", signature="")
        return replace(ev, hash=chain_hash(prev_hash, ev))


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 text; NaN, infinities and lone surrogates are refused (no JSON / UTF-8 form)."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        text.encode()
    except (ValueError, TypeError) as e:  # UnicodeEncodeError is a ValueError
        raise GovernanceError(f"a governance payload must be plain JSON: {e}") from e
    return text


def canonical_bytes(ev: GovEvent) -> bytes:
    """The bytes the hash covers: the header and the payload as one canonical JSON object."""
    return canonical_json({"header": ev.header(), "payload": ev.payload}).encode()


def chain_hash(prev_hash: str, ev: GovEvent) -> str:
    """Hex SHA-256(prev_hash bytes || canonical bytes); the first event's prev_hash is ''."""
    try:
        prev = bytes.fromhex(prev_hash)
    except ValueError as e:
        raise GovernanceError(f"prev_hash {prev_hash!r} is not hex") from e
    return hashlib.sha256(prev + canonical_bytes(ev)).hexdigest()


def check_payload(type_: str, payload: Mapping[str, Any]) -> None:
    """Raise GovernanceError naming the event type and field that does not fit."""
    spec = PAYLOADS.get(type_)
    if spec is None:
        raise GovernanceError(f"unknown governance event type {type_!r} (known: {', '.join(EVENT_TYPES)})")
    optional = OPTIONAL[type_]
    for name, types in spec.items():
        if name not in payload:
            if name in optional:
                continue
            raise GovernanceError(f"{type_}: payload field {name!r} is missing")
        value = payload[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise GovernanceError(f"{type_}: payload field {name!r} must be {want}, not {type(value).__name__}")
    if type_ == "ActorEnrolled":
        bad = [r for r in payload["roles"] if r not in ROLES]
        if bad or not payload["roles"]:
            raise GovernanceError(f"ActorEnrolled: roles must be a non-empty subset of {ROLES}, got {payload['roles']}")
    if type_ in ("ApprovalRequested", "ApprovalGranted", "ApprovalRejected") and payload["stage"] not in STAGES:
        raise GovernanceError(f"{type_}: stage must be one of {STAGES}, got {payload['stage']!r}")
    if type_ == "OffsetVoided":
        offsets = payload["offsets"]
        if not offsets or any(not isinstance(o, int) or isinstance(o, bool) or o < 0 for o in offsets):
            raise GovernanceError(
                f"OffsetVoided: offsets must be a non-empty list of offsets (ints >= 0), got {offsets}"
            )
        if len(set(offsets)) != len(offsets):
            raise GovernanceError(f"OffsetVoided: an offset is named twice in {offsets}")
    if type_ in ("LevelProposed", "LevelApproved", "LevelLowered") and payload["level"] < 0:
        raise GovernanceError(f"{type_}: level must be 0 or above, got {payload['level']}")
    if type_ == "RolloutStepped" and (payload["step"] < 0 or not 1 <= payload["weight"] <= 100):
        raise GovernanceError(
            f"RolloutStepped: step must be 0 or above and weight within 1..100, got {payload['step']}, "
            f"{payload['weight']}"
        )
    if type_ == "Promoted":
        if (payload["stage"] is None) == (payload["alias"] is None):
            raise GovernanceError("Promoted: exactly one of stage and alias must be set")
        if payload["stage"] is not None and payload["stage"] not in ("staging", "production"):
            raise GovernanceError(f"Promoted: stage must be staging or production, got {payload['stage']!r}")


def upcast(ev: GovEvent) -> GovEvent:
    """The event with its payload read as the current ``type_version`` of its type. Every type is at version 1 so
    far: this is where a version 2 will map version 1 payloads. Hashes and signatures are checked on the event as
    written; only the projection folds upcast events."""
    return ev
