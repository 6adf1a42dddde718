"""Approvals under the genesis policy: four eyes (the registrant may not approve its own version) and no approval of
a version whose latest validation failed; a log that never set these rules keeps verifying as it was written."""

from __future__ import annotations

from bench.replay import ADMIN, Chain
from evostream.consumers.governance.policy import DEFAULT_POLICY
from evostream.consumers.governance.projection import replay
from tests.consumers.governance.test_projection import M, refused, register


def governed(policy: dict[str, object] | None = None) -> Chain:
    """root (admin) with the genesis policy; dual (proposer and approver), alice (approver); M v1 registered by
    dual."""
    c = Chain(seed=11)
    c.genesis()
    c.append("PolicyChanged", ADMIN, {"policy": dict(DEFAULT_POLICY if policy is None else policy)})
    c.enroll("dual", ["proposer", "approver"])
    c.enroll("alice", ["approver"])
    register(c, "v1", by="dual")
    return c


def validation(c: Chain, passed: bool) -> None:
    c.append("ValidationCompleted", "dual", {"version": "v1", "passed": passed, "gates": {"acc": 0.5}}, M)


def grant(c: Chain, actor: str) -> None:
    c.append("ApprovalGranted", actor, {"version": "v1", "stage": "production"}, M)


def test_the_registrant_may_not_approve_its_own_version() -> None:
    c = governed()
    validation(c, True)
    grant(c, "dual")
    refused(c, "policy", "'dual' registered sentiment v1 and may not approve it too (four eyes)")
    c.events.pop()
    grant(c, "alice")
    reg, found = replay(c.log())
    assert found == [] and reg.version(M, "v1")["approvals"]["production"]["granted"] == {"alice": 6}


def test_four_eyes_is_the_policys_to_switch_off() -> None:
    c = governed({**DEFAULT_POLICY, "four_eyes": False})
    validation(c, True)
    grant(c, "dual")
    reg, found = replay(c.log())
    assert found == [] and reg.version(M, "v1")["approvals"]["production"]["granted"] == {"dual": 6}


def test_a_version_that_failed_its_validation_cannot_be_approved() -> None:
    c = governed()
    validation(c, False)
    grant(c, "alice")
    refused(c, "policy", "sentiment v1 FAILED its latest validation (sequence 5): a failed version cannot be approved")
    c.events.pop()
    validation(c, True)  # validated again, and passed: now it may be
    grant(c, "alice")
    assert replay(c.log())[1] == []


def test_a_log_that_never_set_the_approval_rules_verifies_as_written() -> None:
    # a log from before these rules: its admin approved what it registered, even after a failed validation
    c = Chain(seed=12)
    c.genesis()
    c.append("PolicyChanged", ADMIN, {"policy": {"production_approvals": 1}})
    register(c, "v1", by=ADMIN)
    c.append("ValidationCompleted", ADMIN, {"version": "v1", "passed": False, "gates": {}}, M)
    c.append("ApprovalGranted", ADMIN, {"version": "v1", "stage": "production"}, M)
    reg, found = replay(c.log())
    assert found == [] and reg.version(M, "v1")["approvals"]["production"]["granted"] == {ADMIN: 4}
    c.append("PolicyChanged", ADMIN, {"policy": {"four_eyes": True}})  # switched on later: judged from there on
    c.append("ApprovalGranted", ADMIN, {"version": "v1", "stage": "production"}, M)
    refused(c, "policy", "four eyes")
