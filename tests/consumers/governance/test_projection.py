"""The registry fold and its verification, on real signed chains built in memory (no broker needed).

Each tampering of a valid log is detected at the offset where it is, with its kind, and the projection stops before
it: its state is exactly the state of the untampered prefix."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from bench.replay import ADMIN, PROPOSER, Chain, build_log
from evostream.consumers.governance.events import GovEvent
from evostream.consumers.governance.keys import ActorKey, sign_event
from evostream.consumers.governance.projection import Finding, Registry, replay
from evostream.core.errors import GovernanceError, PolicyViolationError, TamperError, UnauthorizedError

M = "sentiment"
REGISTERED = {
    "artifact_sha256": "ab" * 32,
    "operator": "prune_heads",
    "operator_params": {"n": 2},
    "metrics": {"acc": 0.9},
}


def staged(policy: dict[str, Any] | None = None) -> Chain:
    """root (admin), evolution (proposer), alice / bob / carol (approvers); M v1 validated and in staging."""
    c = Chain(seed=7)
    c.genesis()  # 0
    c.enroll("evolution", ["proposer"])  # 1
    for a in ("alice", "bob", "carol"):  # 2, 3, 4
        c.enroll(a, ["approver"])
    if policy:
        c.append("PolicyChanged", ADMIN, {"policy": policy})
    register(c, "v1")
    c.append("ValidationCompleted", "evolution", {"version": "v1", "passed": True, "gates": {"acc": 0.9}}, M)
    c.append("Promoted", "evolution", {"version": "v1", "stage": "staging", "alias": None}, M)
    return c


def register(c: Chain, version: str, parent: str | None = None, model: str = M, by: str = "evolution") -> GovEvent:
    payload = {**REGISTERED, "version": version, "artifact_uri": f"file:///a/{version}", "parent": parent}
    return c.append("ModelRegistered", by, payload, model)


def production(c: Chain, version: str, approvers: tuple[str, ...] = ("alice",)) -> None:
    for a in approvers:
        c.append("ApprovalGranted", a, {"version": version, "stage": "production"}, M)
    c.append("Promoted", ADMIN, {"version": version, "stage": "production", "alias": None}, M)


def validated_version(c: Chain, version: str, parent: str | None = None) -> None:
    register(c, version, parent)
    c.append("ValidationCompleted", "evolution", {"version": version, "passed": True, "gates": {}}, M)


def lifecycle() -> Chain:
    """A 16-event log: v1 to production, then v2 registered, validated, staged, approved and promoted."""
    c = staged()  # 0..7
    c.append("ApprovalRequested", "evolution", {"version": "v1", "stage": "production"}, M)  # 8
    production(c, "v1")  # 9, 10
    register(c, "v2", parent="v1")  # 11
    c.append("ValidationCompleted", "evolution", {"version": "v2", "passed": True, "gates": {}}, M)  # 12
    c.append("Promoted", "evolution", {"version": "v2", "stage": "staging", "alias": None}, M)  # 13
    production(c, "v2", ("bob",))  # 14, 15
    assert len(c.events) == 16
    return c


def offsets(events: list[GovEvent]) -> list[tuple[int | None, GovEvent]]:
    """Events as a (transactional) topic holds them after tampering: offsets are positions, two apart."""
    return [(2 * i, ev) for i, ev in enumerate(events)]


def state_of(events: list[GovEvent]) -> dict[str, Any]:
    reg, found = replay(offsets(events))
    assert found == []
    return reg.to_json()


def refused(c: Chain, kind: str, match: str = "") -> Finding:
    """The last event of ``c`` is refused with ``kind``; the projection stops at the event before it."""
    bad = c.events[-1]
    reg, found = replay(offsets(c.events))
    assert [(f.offset, f.sequence, f.kind) for f in found] == [(2 * bad.sequence, bad.sequence, kind)], found
    assert match in found[0].detail
    assert reg.head_sequence == bad.sequence - 1
    assert reg.to_json() == state_of(c.events[:-1])
    before = replay(offsets(c.events[:-1]))[0]
    with pytest.raises(GovernanceError, match=kind):
        before.check(bad)
    assert before.to_json() == state_of(c.events[:-1])  # check() changes nothing
    return found[0]


# --- a clean log -----------------------------------------------------------------------------------------------
def test_clean_lifecycle_folds_to_the_registry_it_describes() -> None:
    c = lifecycle()
    reg, found = replay(c.log())
    assert found == []
    assert (reg.head_sequence, reg.head_hash, reg.offset) == (15, c.events[-1].hash, 30)
    assert reg.production(M) == "v2"
    assert reg.staging(M) is None
    assert reg.production("unknown") is None
    v1, v2 = reg.version(M, "v1"), reg.version(M, "v2")
    assert (v1["stage"], v2["stage"]) == ("archived", "production")
    assert v2["parent"] == "v1"
    assert v1["events"] == [5, 6, 7, 8, 9, 10]
    assert v1["validation"] == {"passed": True, "gates": {"acc": 0.9}, "sequence": 6, "actor": "evolution"}
    assert v1["approvals"] == {"production": {"granted": {"alice": 9}, "rejected": None}}
    assert v1["requests"] == {"production": 8}
    assert (v1["artifact_uri"], v1["operator"], v1["metrics"]) == ("file:///a/v1", "prune_heads", {"acc": 0.9})
    assert reg.lineage(M, "v2") == ["v2", "v1"]
    assert sorted(reg.actors) == ["alice", "bob", "carol", "evolution", "root"]
    assert reg.policy == {"production_approvals": 1, "auto_promote_staging": True, "auto_promote_production": False}
    assert reg.pending_approvals() == []
    with pytest.raises(GovernanceError, match="no version 'v9'"):
        reg.version(M, "v9")


def test_apply_with_verification_equals_replay_and_refuses_without_changing_state() -> None:
    c = lifecycle()
    reg = Registry()
    for off, ev in c.log():
        reg.apply(ev, off)
    assert reg == replay(c.log())[0]
    snapshot = reg.to_json()
    with pytest.raises(TamperError, match="inserted"):
        reg.apply(c.events[3], 99)  # a sequence already applied
    assert reg.to_json() == snapshot


def test_fold_without_verification_of_garbage_says_to_verify() -> None:
    c = staged()
    orphan = replace(c.events[-1], model_name="never-registered")
    reg = replay(offsets(c.events[:-1]), verify=False)[0]
    with pytest.raises(GovernanceError, match="replay with verification"):
        reg.apply(orphan, verify=False)


# --- tampering: each kind found at its offset, the projection stops before it ---------------------------------
def test_altered_payload_is_found_and_the_projection_stops_before_it() -> None:
    events = lifecycle().events
    k = 12
    events[k] = replace(events[k], payload={**events[k].payload, "passed": False})
    reg, found = replay(offsets(events))
    assert [(f.offset, f.sequence, f.kind) for f in found] == [(24, 12, "altered")]
    assert reg.head_sequence == 11
    assert reg.to_json() == state_of(events[:k])


def test_forged_signature_is_found() -> None:
    events = lifecycle().events
    k = 10
    events[k] = replace(events[k], signature=ActorKey.generate().sign(events[k].hash))  # another key, same key_id
    reg, found = replay(offsets(events))
    assert [(f.offset, f.sequence, f.kind) for f in found] == [(20, 10, "forged")]
    assert reg.production(M) is None  # the forged promotion did not fold
    assert reg.to_json() == state_of(events[:k])


def test_rehashed_and_resigned_by_an_outsider_is_forged_and_breaks_the_next_link() -> None:
    events = lifecycle().events
    k = 10
    outsider = ActorKey.generate()
    changed = replace(events[k], payload={**events[k].payload, "version": "v1"}, reason="sneaky")
    changed = changed.linked(changed.sequence, changed.prev_hash, changed.occurred_at_us)
    events[k] = replace(changed, signature=outsider.sign(changed.hash))
    reg, found = replay(offsets(events))
    assert [(f.offset, f.sequence, f.kind) for f in found] == [(20, 10, "forged"), (22, 11, "inserted")]
    assert reg.head_sequence == 9


def test_deleted_middle_event_is_a_gap_at_the_next_offset() -> None:
    events = lifecycle().events
    del events[9]
    reg, found = replay(offsets(events))
    assert [(f.offset, f.sequence, f.kind) for f in found] == [(18, 10, "gap")]
    assert "events 9..9 are missing" in found[0].detail
    assert reg.head_sequence == 8
    assert reg.to_json() == state_of(events[:9])


def test_reordered_events_are_found_both() -> None:
    events = lifecycle().events
    events[9], events[10] = events[10], events[9]
    reg, found = replay(offsets(events))
    assert [(f.offset, f.sequence, f.kind) for f in found] == [(18, 10, "reordered"), (20, 9, "reordered")]
    assert reg.head_sequence == 8
    assert reg.to_json() == state_of(events[:9])


def test_event_moved_forward_is_reordered_not_dropped() -> None:
    events = lifecycle().events
    moved = events.pop(12)
    events.insert(9, moved)  # 0..8, 12, 9, 10, 11, 13...
    found = replay(offsets(events))[1]
    assert [(f.sequence, f.kind) for f in found] == [
        (12, "reordered"),
        (9, "reordered"),
        (10, "reordered"),
        (11, "reordered"),
    ]


def test_inserted_event_signed_by_an_outsider_is_forged_and_the_real_one_then_forks() -> None:
    c = lifecycle()
    events = c.events
    k = 10
    intruder = ActorKey.generate()
    fake = GovEvent(
        type="Promoted",
        actor=ADMIN,
        key_id=c.keys[ADMIN].key_id,
        model_name=M,
        payload={"version": "v1", "stage": None, "alias": "champion"},
    )
    fake = fake.linked(k, events[k - 1].hash, events[k - 1].occurred_at_us + 1)
    events.insert(k, replace(fake, signature=intruder.sign(fake.hash)))
    reg, found = replay(offsets(events))
    assert [(f.offset, f.sequence, f.kind) for f in found] == [(20, 10, "forged"), (22, 10, "inserted")]
    assert reg.head_sequence == 9


def test_inserted_event_by_an_insider_forks_the_chain_at_the_real_event() -> None:
    c = lifecycle()
    events = c.events
    k = 10
    fake = GovEvent(
        type="CandidateProposed",
        actor="evolution",
        key_id=c.keys["evolution"].key_id,
        model_name=M,
        payload={"version": "v1", "evidence": {}},
    )
    fake = sign_event(fake.linked(k, events[k - 1].hash, events[k - 1].occurred_at_us + 1), c.keys["evolution"])
    events.insert(k, fake)
    reg, found = replay(offsets(events))
    # the insider's event is valid where it stands: the fork shows at the real event 10 (11 links to that one)
    assert [(f.offset, f.sequence, f.kind) for f in found] == [(22, 10, "inserted")]
    assert "already taken" in found[0].detail
    assert reg.head_sequence == 10
    assert reg.head_hash == fake.hash


def test_duplicate_event_is_inserted() -> None:
    events = lifecycle().events
    events.insert(11, events[10])
    found = replay(offsets(events))[1]
    assert [(f.offset, f.sequence, f.kind) for f in found] == [(22, 10, "inserted")]


def test_unsigned_admin_action_is_forged() -> None:
    c = lifecycle()
    c.append("PolicyChanged", ADMIN, {"policy": {"production_approvals": 3}})
    c.events[-1] = replace(c.events[-1], signature="")
    refused(c, "forged")


@pytest.mark.parametrize(
    ("type_", "actor", "payload"),
    [
        ("PolicyChanged", "evolution", {"policy": {"production_approvals": 1}}),
        ("RolledBack", "evolution", {"version": "v1", "from_version": "v2"}),
        ("ActorEnrolled", "alice", {"actor_id": "x", "key_id": "0" * 32, "public_key": "00" * 32, "roles": ["admin"]}),
        ("ActorRevoked", "bob", {"actor_id": "alice"}),
        ("Promoted", "evolution", {"version": "v1", "stage": "production", "alias": None}),
        ("Promoted", "evolution", {"version": "v1", "stage": None, "alias": "champion"}),
        ("ModelRegistered", "alice", {**REGISTERED, "version": "v3", "artifact_uri": "u", "parent": None}),
        ("ApprovalGranted", "evolution", {"version": "v2", "stage": "production"}),
    ],
)
def test_an_actor_without_the_role_is_unauthorized(type_: str, actor: str, payload: dict[str, Any]) -> None:
    c = lifecycle()
    c.append(type_, actor, payload, M if type_ not in ("PolicyChanged", "ActorEnrolled", "ActorRevoked") else "*")
    with pytest.raises(UnauthorizedError, match="needs role"):
        replay(offsets(c.events[:-1]))[0].check(c.events[-1])
    refused(c, "unauthorized", "needs role")


def test_revoked_key_is_refused_after_actor_revoked() -> None:
    c = lifecycle()
    old_key = c.keys["alice"]
    c.append("ActorRevoked", ADMIN, {"actor_id": "alice"}, reason="left the team")
    c.append("ApprovalGranted", "alice", {"version": "v1", "stage": "production"}, M, key=old_key)
    refused(c, "revoked_key", "revoked at sequence 16")


def test_reenrolled_actor_signs_with_the_new_key_only() -> None:
    c = lifecycle()
    old_key = c.keys["alice"]
    c.append("ActorRevoked", ADMIN, {"actor_id": "alice"})
    c.enroll("alice", ["approver"])
    c.append("ApprovalGranted", "alice", {"version": "v1", "stage": "production"}, M)  # new key: fine
    assert replay(c.log())[1] == []
    c.append("ApprovalGranted", "alice", {"version": "v2", "stage": "production"}, M, key=old_key)
    refused(c, "revoked_key")
    c.events.pop()
    c.append(
        "ActorEnrolled",
        ADMIN,
        {"actor_id": "alice", "key_id": old_key.key_id, "public_key": old_key.public_hex, "roles": ["approver"]},
    )
    refused(c, "policy", "never comes back")


def test_unknown_actor_and_a_key_not_the_actors() -> None:
    c = lifecycle()
    mallory = ActorKey.generate()
    c.append("ApprovalGranted", "mallory", {"version": "v1", "stage": "production"}, M, key=mallory)
    with pytest.raises(UnauthorizedError, match="not enrolled"):
        replay(offsets(c.events[:-1]))[0].check(c.events[-1])
    refused(c, "unknown_actor")
    c.events.pop()
    c.append("ApprovalGranted", "alice", {"version": "v1", "stage": "production"}, M, key=c.keys["bob"])
    refused(c, "unauthorized", "is not enrolled for actor 'alice'")


def test_genesis_must_be_an_admin_enrolling_itself() -> None:
    for roles, actor in ((["proposer"], "root"), (["admin"], "someone-else")):
        c = Chain()
        key = c.new_key("root")
        payload = {"actor_id": "root", "key_id": key.key_id, "public_key": key.public_hex, "roles": roles}
        c.append("ActorEnrolled", actor, payload, key=key)
        found = replay(c.log())[1]
        assert [(f.sequence, f.kind) for f in found] == [(0, "unauthorized")]
    c = Chain()
    key, other = c.new_key("root"), ActorKey.generate()
    payload = {"actor_id": "root", "key_id": key.key_id, "public_key": other.public_hex, "roles": ["admin"]}
    c.append("ActorEnrolled", "root", payload, key=key)
    assert [f.kind for f in replay(c.log())[1]] == ["unauthorized"]  # enrolls a key that is not its own
    c = Chain()
    c.genesis()
    c.events[0] = replace(c.events[0], signature=ActorKey.generate().sign(c.events[0].hash))
    assert [f.kind for f in replay(c.log())[1]] == ["forged"]


def test_undecodable_record_stops_the_projection_and_is_reported() -> None:
    c = lifecycle()
    log: list[tuple[int | None, Any]] = list(c.log())
    log[9] = (18, GovernanceError("offset 18: bad magic byte"))
    reg, found = replay(log)
    assert found == [Finding(18, -1, "undecodable", "offset 18: bad magic byte")]
    assert reg.head_sequence == 8


def test_check_raises_the_error_of_each_kind() -> None:
    c = lifecycle()
    reg = replay(c.log())[0]
    c.append("Promoted", ADMIN, {"version": "v2", "stage": "staging", "alias": None}, M)
    with pytest.raises(PolicyViolationError, match="is production: it cannot go back to staging"):
        reg.check(c.events[-1])
    with pytest.raises(TamperError, match="altered"):
        reg.check(replace(c.events[-1], reason="changed"))
    with pytest.raises(TamperError, match="gap"):
        reg.check(c.events[-1].linked(17, c.events[-1].prev_hash, 0))
    bad_payload = GovEvent(type="Promoted", actor=ADMIN, key_id=c.keys[ADMIN].key_id, payload={"version": "v1"})
    bad_payload = sign_event(bad_payload.linked(16, reg.head_hash, 0), c.keys[ADMIN])
    with pytest.raises(GovernanceError, match="undecodable"):
        reg.check(bad_payload)


# --- the policy ----------------------------------------------------------------------------------------------
def test_staging_needs_a_passed_validation() -> None:
    c = staged()
    register(c, "v2")
    c.append("Promoted", "evolution", {"version": "v2", "stage": "staging", "alias": None}, M)
    refused(c, "policy", "no passed validation")
    c.events.pop()
    c.append("ValidationCompleted", "evolution", {"version": "v2", "passed": False, "gates": {}}, M)
    c.append("Promoted", "evolution", {"version": "v2", "stage": "staging", "alias": None}, M)
    refused(c, "policy", "no passed validation")
    c.events.pop()
    c.append("ValidationCompleted", "evolution", {"version": "v2", "passed": True, "gates": {}}, M)
    c.append("Promoted", "evolution", {"version": "v2", "stage": "staging", "alias": None}, M)
    reg, found = replay(c.log())
    assert found == []
    assert reg.staging(M) == "v2"
    assert reg.version(M, "v1")["stage"] == "candidate"  # replaced in staging: back to candidate, not archived


def test_auto_promote_staging_off_makes_staging_the_admins() -> None:
    c = staged({"auto_promote_staging": False})
    c.events.pop()  # the proposer's staging promotion
    c.append("Promoted", "evolution", {"version": "v1", "stage": "staging", "alias": None}, M)
    refused(c, "unauthorized")
    c.events.pop()
    c.append("Promoted", ADMIN, {"version": "v1", "stage": "staging", "alias": None}, M)
    assert replay(c.log())[0].staging(M) == "v1"


def test_production_needs_n_distinct_approvers_from_the_policy() -> None:
    c = staged({"production_approvals": 2})
    c.append("ApprovalRequested", "evolution", {"version": "v1", "stage": "production"}, M)
    c.append("ApprovalGranted", "alice", {"version": "v1", "stage": "production"}, M)
    c.append("ApprovalGranted", "alice", {"version": "v1", "stage": "production"}, M)  # twice is still one
    pending = replay(c.log())[0].pending_approvals()
    assert pending == [
        {
            "model_name": M,
            "version": "v1",
            "stage": "production",
            "requested_seq": 9,
            "approvers": ["alice"],
            "needed": 2,
        }
    ]
    c.append("Promoted", ADMIN, {"version": "v1", "stage": "production", "alias": None}, M)
    refused(c, "policy", "needs 2 distinct approvers for production, has 1 (alice")
    c.events.pop()
    c.append("ApprovalGranted", "bob", {"version": "v1", "stage": "production"}, M)
    c.append("Promoted", ADMIN, {"version": "v1", "stage": "production", "alias": None}, M)
    reg, found = replay(c.log())
    assert found == []
    assert (reg.production(M), reg.staging(M), reg.pending_approvals()) == ("v1", None, [])


def test_a_rejection_voids_the_grants_before_it() -> None:
    c = staged({"production_approvals": 2})
    for actor, type_ in (
        ("alice", "ApprovalGranted"),
        ("bob", "ApprovalGranted"),
        ("carol", "ApprovalRejected"),
        ("alice", "ApprovalGranted"),
    ):
        c.append(type_, actor, {"version": "v1", "stage": "production"}, M)
    c.append("Promoted", ADMIN, {"version": "v1", "stage": "production", "alias": None}, M)
    refused(c, "policy", "has 1 (alice; grants before a rejection, or by a revoked actor, do not count)")
    c.events.pop()
    c.append("ApprovalGranted", "bob", {"version": "v1", "stage": "production"}, M)
    c.append("Promoted", ADMIN, {"version": "v1", "stage": "production", "alias": None}, M)
    reg, found = replay(c.log())
    assert found == []
    assert reg.version(M, "v1")["approvals"]["production"] == {
        "granted": {"alice": 12, "bob": 13},
        "rejected": {"actor": "carol", "sequence": 11},
    }


def test_a_grant_by_an_approver_revoked_before_the_promotion_no_longer_counts() -> None:
    c = staged({"production_approvals": 2})
    c.append("ApprovalGranted", "alice", {"version": "v1", "stage": "production"}, M)
    c.append("ApprovalGranted", "bob", {"version": "v1", "stage": "production"}, M)
    c.append("ActorRevoked", ADMIN, {"actor_id": "bob"})
    assert replay(c.log())[0].pending_approvals() == []  # no request was made; the count shows at promotion
    c.append("Promoted", ADMIN, {"version": "v1", "stage": "production", "alias": None}, M)
    refused(c, "policy", "needs 2 distinct approvers for production, has 1 (alice;")
    c.events.pop()
    c.append("ApprovalGranted", "carol", {"version": "v1", "stage": "production"}, M)
    c.append("Promoted", ADMIN, {"version": "v1", "stage": "production", "alias": None}, M)
    reg, found = replay(c.log())
    assert found == []
    assert reg.production(M) == "v1"
    # a revocation after the promotion changes nothing about it: the rule is judged where the event stands
    c.append("ActorRevoked", ADMIN, {"actor_id": "carol"})
    reg, found = replay(c.log())
    assert (found, reg.production(M)) == ([], "v1")


def test_auto_promote_production_lets_the_proposer_promote_without_approvals() -> None:
    c = staged()
    c.append("Promoted", "evolution", {"version": "v1", "stage": "production", "alias": None}, M)
    refused(c, "unauthorized")
    c.events.pop()
    c.append("PolicyChanged", ADMIN, {"policy": {"auto_promote_production": True}})
    c.append("Promoted", "evolution", {"version": "v1", "stage": "production", "alias": None}, M)
    reg, found = replay(c.log())
    assert found == []
    assert reg.production(M) == "v1"
    assert reg.policy == {"production_approvals": 1, "auto_promote_staging": True, "auto_promote_production": True}


def test_policy_changes_are_checked() -> None:
    for policy, why in (
        ({"production_approval": 2}, "unknown policy setting"),
        ({"production_approvals": 0}, "at least 1"),
        ({"production_approvals": True}, "must be int"),
        ({"auto_promote_production": "yes"}, "must be bool"),
        ({}, "non-empty"),
    ):
        c = staged()
        c.append("PolicyChanged", ADMIN, {"policy": policy})
        refused(c, "policy", why)


def test_rollback_restores_a_validated_version_and_archives_the_replaced_one() -> None:
    c = lifecycle()  # v1 archived, v2 production
    c.append("RolledBack", ADMIN, {"version": "v1", "from_version": "v2"}, M, reason="v2 regressed")
    reg, found = replay(c.log())
    assert found == []
    assert reg.production(M) == "v1"
    assert (reg.version(M, "v1")["stage"], reg.version(M, "v2")["stage"]) == ("production", "archived")
    assert reg.version(M, "v1")["events"][-1] == 16


def test_rollback_is_refused_to_unvalidated_current_or_stale_versions() -> None:
    for payload, why in (
        ({"version": "v3", "from_version": "v2"}, "never served production"),
        ({"version": "v2", "from_version": "v2"}, "already production"),
        ({"version": "v1", "from_version": "v1"}, "production is 'v2'"),
        ({"version": "v9", "from_version": "v2"}, "is not registered"),
    ):
        c = lifecycle()
        register(c, "v3", parent="v2")
        c.append("RolledBack", ADMIN, payload, M)
        refused(c, "policy", why)


def test_rollback_cannot_skip_the_approvals_of_a_version_that_never_served() -> None:
    """A validated candidate that never reached production is not a rollback target: it needs its approvals."""
    c = lifecycle()
    register(c, "v3", parent="v2")
    c.append("ValidationCompleted", PROPOSER, {"version": "v3", "passed": True, "gates": {}}, M)
    c.append("RolledBack", ADMIN, {"version": "v3", "from_version": "v2"}, M)
    refused(c, "policy", "never served production")


def test_an_alias_is_a_pointer_without_stage_change() -> None:
    c = lifecycle()
    c.append("Promoted", ADMIN, {"version": "v1", "stage": None, "alias": "challenger"}, M)
    c.append("Promoted", ADMIN, {"version": "v2", "stage": None, "alias": "champion"}, M)
    c.append("Promoted", ADMIN, {"version": "v2", "stage": None, "alias": "challenger"}, M)
    reg, found = replay(c.log())
    assert found == []
    assert (reg.alias(M, "champion"), reg.alias(M, "challenger")) == ("v2", "v2")
    assert reg.version(M, "v1")["aliases"] == []
    assert reg.version(M, "v2")["aliases"] == ["champion", "challenger"]
    assert (reg.version(M, "v1")["stage"], reg.production(M)) == ("archived", "v2")
    c.append("Promoted", ADMIN, {"version": "v2", "stage": None, "alias": "champion"}, M)
    refused(c, "policy", "already points")


def test_parent_must_be_a_registered_version_of_the_same_model() -> None:
    c = lifecycle()
    register(c, "v1", model="other")
    register(c, "v2", parent="v2", model="other")
    refused(c, "policy", "parent 'v2' is not a registered version of other")
    c.events.pop()
    register(c, "v1", parent=None)  # a duplicate version
    refused(c, "policy", "already registered")


def test_model_events_need_a_model_and_actor_events_none() -> None:
    c = lifecycle()
    register(c, "v3", model="*")
    refused(c, "policy", "needs the model")
    c.events.pop()
    c.append("PolicyChanged", ADMIN, {"policy": {"production_approvals": 1}}, M)
    refused(c, "policy", "about no one model")


def test_enrollment_rules() -> None:
    c = lifecycle()
    k = ActorKey.generate()
    c.append(
        "ActorEnrolled", ADMIN, {"actor_id": "x", "key_id": "0" * 32, "public_key": k.public_hex, "roles": ["approver"]}
    )
    refused(c, "policy", "is not the id of the public key")
    c.events.pop()
    bob = c.keys["bob"]
    c.append(
        "ActorEnrolled",
        ADMIN,
        {"actor_id": "x", "key_id": bob.key_id, "public_key": bob.public_hex, "roles": ["approver"]},
    )
    refused(c, "policy", "already enrolled for actor 'bob'")
    c.events.pop()
    c.append("ActorRevoked", ADMIN, {"actor_id": ADMIN})
    refused(c, "policy", "last admin")
    c.events.pop()
    c.append("ActorRevoked", ADMIN, {"actor_id": "nobody"})
    refused(c, "policy", "no such actor")


# --- as of, snapshots ------------------------------------------------------------------------------------------
def test_as_of_offset_and_time_give_the_earlier_state() -> None:
    c = lifecycle()
    c.append("RolledBack", ADMIN, {"version": "v1", "from_version": "v2"}, M)
    log = c.log()
    full = replay(log)[0]
    assert full.production(M) == "v1"
    by_offset = replay(log, until_offset=31)[0]  # offset 30 = event 15 (v2 to production); 32 is the rollback
    assert by_offset.production(M) == "v2"
    assert by_offset.to_json() == state_of(c.events[:16])
    by_time = replay(log, until_us=c.events[10].occurred_at_us)[0]
    assert (by_time.head_sequence, by_time.production(M), by_time.staging(M)) == (10, "v1", None)
    assert by_time.to_json() == state_of(c.events[:11])
    assert replay(log, until_us=c.events[0].occurred_at_us - 1)[0].head_sequence == -1


@pytest.mark.parametrize("cut", [0, 1, 5, 10, 15])
def test_snapshot_then_tail_equals_full_replay(cut: int) -> None:
    c = lifecycle()
    log = c.log()
    full = replay(log)[0]
    head = replay(log[:cut])[0]
    snap = Registry.from_json(head.to_json())
    assert snap.to_json() == head.to_json()
    tail, found = replay(log[cut:], start=snap)
    assert found == []
    assert tail.to_json() == full.to_json()
    assert snap.to_json() == head.to_json()  # the start registry is not modified
    for off, ev in log[cut:]:
        snap.apply(ev, off)
    assert snap.to_json() == full.to_json()


def test_snapshot_of_a_large_log_folds_on_identically() -> None:
    c = build_log(600, seed=3)
    log = c.log()
    full = replay(log)[0]
    start = Registry.from_json(replay(log[:400])[0].to_json())
    assert replay(log[400:], start=start)[0].to_json() == full.to_json()


def test_from_json_refuses_what_is_not_a_snapshot() -> None:
    with pytest.raises(GovernanceError, match="format 1"):
        Registry.from_json({"format": 99})
    with pytest.raises(GovernanceError, match="incomplete"):
        Registry.from_json({"format": 1, "head_sequence": 3})


def test_to_json_is_a_copy() -> None:
    reg = replay(lifecycle().log())[0]
    d = reg.to_json()
    d["models"][M]["production"] = "v1"
    reg.version(M, "v2")["stage"] = "archived"
    assert reg.production(M) == "v2"
    assert reg.version(M, "v2")["stage"] == "production"


# --- the bench's builder -----------------------------------------------------------------------------------------
def test_bench_log_folds_the_same_with_and_without_verification() -> None:
    c = build_log(200, seed=0)
    log = c.log()
    assert [ev.sequence for _, ev in log] == list(range(200))
    folded, found_fold = replay(log, verify=False)
    verified, found = replay(log)
    assert (found_fold, found) == ([], [])
    assert folded.to_json() == verified.to_json()
    assert verified.head_sequence == 199
    assert {ev.type for ev in c.events} >= {
        "ActorEnrolled",
        "PolicyChanged",
        "ModelRegistered",
        "Promoted",
        "ApprovalGranted",
        "ValidationCompleted",
        "CandidateProposed",
    }
    assert any(m["production"] for m in verified.models.values())
    # the same seed builds the same log
    assert [ev.hash for ev in build_log(200, seed=0).events] == [ev.hash for ev in c.events]


def test_registration_keeps_fields_a_newer_writer_added() -> None:
    c = lifecycle()
    c.append(
        "ModelRegistered",
        "evolution",
        {**REGISTERED, "version": "v3", "artifact_uri": "u", "parent": "v2", "license": "apache-2.0"},
        M,
    )
    reg, found = replay(c.log())
    assert found == []
    v3 = reg.version(M, "v3")
    assert (v3["extra"], v3["parent"], v3["stage"], reg.version(M, "v2")["extra"]) == (
        {"license": "apache-2.0"},
        "v2",
        "candidate",
        {},
    )
