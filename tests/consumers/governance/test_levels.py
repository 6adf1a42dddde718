"""Independence levels as governance events, on real signed chains in memory: moving a route up needs the evidence of
its policy artifact (a large enough held-out corpus, a high enough accuracy) and another actor's approval; moving it
down needs only a reason. Replay verifies every rule, and the projection says each route's level, policy and the event
that set it."""

from __future__ import annotations

from typing import Any

import pytest

from bench.replay import ADMIN, Chain
from evostream.consumers.governance.policy import DEFAULT_POLICY
from evostream.consumers.governance.projection import replay
from evostream.routing.policy import LADDER
from tests.consumers.governance.test_projection import refused

ROUTE = "route/default"
POLICY_V = "route/default@aaaaaaaaaaaa"
PROBE_SHA = "cd" * 32


def evidence(level: int, corpus: int, accuracy: float, lower: float | None = None) -> dict[str, Any]:
    """Certified evidence of ``level`` (as ``routing.calibrate.certify`` writes it) at the level's self-share."""
    low = accuracy - 0.02 if lower is None else lower
    return {
        "corpus": corpus,
        "accuracy": accuracy,
        "accuracy_lower": low,
        "confidence": 0.95,
        "self_share": LADDER[level],
        "bound": 0.15,
        "certified": True,
    }


LEVELS = {
    "1": evidence(1, 2500, 0.93),  # earns level 1: 2000 labels needed
    "2": evidence(2, 2500, 0.91),  # too small a corpus for level 2 (3000)
    "3": evidence(3, 9000, 0.80),  # too low an accuracy
    "4": evidence(4, 6000, 0.88, 0.86),
}


def routed(levels: dict[str, Any] | None = None, policy: dict[str, Any] | None = None) -> Chain:
    """root (admin), ops (proposer), alice and bob (approvers); a risk probe and one routing policy registered."""
    c = Chain(seed=27)
    c.genesis()
    c.append("PolicyChanged", ADMIN, {"policy": {**DEFAULT_POLICY, **(policy or {})}})
    c.enroll("ops", ["proposer"])
    c.enroll("alice", ["approver"])
    c.enroll("bob", ["approver"])
    probe: dict[str, Any] = {
        "version": "risk/fam@cdcdcdcdcdcd",
        "artifact_uri": "evo-artifact://sha256/" + PROBE_SHA,
        "artifact_sha256": PROBE_SHA,
        "parent": None,
        "operator": "risk-train",
        "operator_params": {},
        "metrics": {},
    }
    c.append("ModelRegistered", "ops", probe, "risk/fam")
    register_policy(c, POLICY_V, LEVELS if levels is None else levels)
    return c


def register_policy(c: Chain, version: str, levels: dict[str, Any], probe: str = PROBE_SHA) -> None:
    payload = {
        "version": version,
        "artifact_uri": "evo-artifact://sha256/" + "ab" * 32,
        "artifact_sha256": "ab" * 32,
        "parent": None,
        "operator": "route-register",
        "operator_params": {"route": "default", "probe_sha256": probe},
        "metrics": {"levels": levels},
    }
    c.append("ModelRegistered", "ops", payload, ROUTE)


def propose(c: Chain, level: int, by: str = "ops", ev: Any = None, version: str = POLICY_V) -> None:
    proposed = LEVELS.get(str(level), {}) if ev is None else ev
    c.append("LevelProposed", by, {"version": version, "level": level, "evidence": proposed}, ROUTE, "calibrated")


def approve(c: Chain, level: int, by: str = "alice", version: str = POLICY_V) -> None:
    c.append("LevelApproved", by, {"version": version, "level": level}, ROUTE, "looked at the evidence")


def lower(c: Chain, level: int, by: str = "ops", reason: str = "incident 42: wrong answers") -> None:
    c.append("LevelLowered", by, {"version": POLICY_V, "level": level}, ROUTE, reason)


def state(c: Chain) -> Any:
    reg, found = replay(c.log())
    assert found == [], found
    return reg


def test_a_proposal_approved_by_another_actor_sets_the_level_with_its_evidence() -> None:
    c = routed()
    propose(c, 1)
    pending = state(c).route("default")
    assert pending["level"] is None and pending["proposal"]["level"] == 1  # proposed, not yet in force
    approve(c, 1)
    route = state(c).route("default")
    assert (route["level"], route["version"], route["evidence"]) == (1, POLICY_V, LEVELS["1"])
    assert route["set_by"] == c.events[-1].sequence and route["proposal"] is None
    assert [h["type"] for h in route["history"]] == ["LevelProposed", "LevelApproved"]
    assert state(c).version(ROUTE, POLICY_V)["events"][-2:] == [c.events[-2].sequence, c.events[-1].sequence]
    propose(c, 4)  # on up: the next level needs its own evidence and approval
    approve(c, 4, by="bob")
    assert state(c).route("default")["level"] == 4


def test_without_an_approval_the_level_does_not_move() -> None:
    c = routed()
    propose(c, 1)
    assert state(c).route("default")["level"] is None
    approve(c, 4)  # an approval of a level nobody proposed
    refused(c, "policy", "has no pending proposal of level 4")


def test_the_proposer_may_not_approve_its_own_proposal() -> None:
    c = routed()
    c.enroll("dual", ["proposer", "approver"])
    propose(c, 1, by="dual")
    approve(c, 1, by="dual")
    refused(c, "policy", "'dual' proposed level 1 for route default and may not approve it too (four eyes)")
    c.events.pop()
    approve(c, 1, by="alice")
    assert state(c).route("default")["level"] == 1


def test_a_proposal_without_evidence_is_refused() -> None:
    c = routed()
    propose(c, 1, ev={})
    refused(c, "policy", "no evidence")
    c.events.pop()
    propose(c, 5, ev=LEVELS["4"])  # nor a level the policy artifact holds no evidence for
    refused(c, "policy", "holds no evidence for level 5")


def test_evidence_that_differs_from_the_policy_artifacts_is_refused() -> None:
    c = routed()
    propose(c, 2, ev={**LEVELS["2"], "corpus": 3500})  # the corpus the level would need, but not the artifact's
    refused(c, "policy", "differs from what route/default route/default@aaaaaaaaaaaa's policy artifact holds")


def test_too_small_a_corpus_is_refused() -> None:
    c = routed()
    propose(c, 2)
    refused(c, "policy", "level 2 needs a held-out corpus of at least 3000 labelled answers")


def test_too_low_an_accuracy_is_refused() -> None:
    c = routed()
    propose(c, 3)
    refused(c, "policy", "level 3 needs a self-answered accuracy of at least 0.85; the evidence has 0.8")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"certified": False}, "level 1's evidence is not certified"),
        ({"accuracy_lower": 0.8}, "error rate bounded by 0.15; the evidence bounds it by 0.2"),
        ({"confidence": 0.01}, "a confidence of at least 0.9; the evidence's is 0.01"),
        ({"self_share": 0.5}, "measured at a self-share of 0.5 (within 0.05 of 0.2 is needed)"),
    ],
)
def test_evidence_that_is_not_certified_for_the_level_is_refused(change: dict[str, Any], why: str) -> None:
    changed = {**LEVELS["1"], **change}
    c = routed({"1": changed})
    propose(c, 1, ev=changed)
    refused(c, "policy", why)


def test_a_registration_from_before_certification_reads_but_earns_no_level() -> None:
    old = {k: v for k, v in LEVELS["1"].items() if k not in ("bound", "certified")}
    c = routed({"1": old})
    assert state(c).version(ROUTE, POLICY_V)["metrics"]["levels"] == {"1": old}
    propose(c, 1, ev=old)
    refused(c, "policy", "not certified (certified: None)")


def test_the_certification_rules_are_the_policys() -> None:
    loose = {**LEVELS["1"], "accuracy_lower": 0.75, "confidence": 0.8}
    c = routed({"1": loose}, policy={"level_max_error": 0.3, "level_min_confidence": 0.8})
    propose(c, 1, ev=loose)
    approve(c, 1)
    assert state(c).route("default")["level"] == 1
    c.append("PolicyChanged", ADMIN, {"policy": {"level_min_confidence": 1.0}}, reason="a typo")
    refused(c, "policy", "level_min_confidence must be within [0, 1)")


def test_the_thresholds_are_the_policys_and_judged_again_at_the_approval() -> None:
    c = routed(policy={"level_corpus_per_level": 500})  # level 2 needs 1500 labels now
    propose(c, 2)
    c.append("PolicyChanged", ADMIN, {"policy": {"level_corpus_per_level": 1000}}, reason="stricter")
    approve(c, 2)
    refused(c, "policy", "level 2 needs a held-out corpus of at least 3000")
    c.events.pop()
    c.append("PolicyChanged", ADMIN, {"policy": {"level_min_accuracy": 1.5}}, reason="a typo")
    refused(c, "policy", "level_min_accuracy must be within [0, 1]")


def test_lowering_needs_no_approval_but_a_reason_and_drops_a_pending_raise() -> None:
    c = routed()
    propose(c, 1)
    approve(c, 1)
    propose(c, 4)
    lower(c, 0, reason="")
    refused(c, "policy", "needs a reason")
    c.events.pop()
    lower(c, 0)
    route = state(c).route("default")
    assert (route["level"], route["evidence"], route["set_by"]) == (0, None, c.events[-1].sequence)
    assert route["proposal"] is None
    approve(c, 4)  # the raise proposed before the incident is gone: propose it anew
    refused(c, "policy", "no pending proposal")
    c.events.pop()
    lower(c, 0)  # not below where it is
    refused(c, "policy", "lowering goes to a level in 0..-1")


def test_an_approver_alone_may_not_lower_and_a_lowering_needs_a_level_in_force() -> None:
    c = routed({"1": LEVELS["1"], "4": LEVELS["4"]})
    lower(c, 0)
    refused(c, "policy", "route default has no level in force")
    c.events.pop()
    propose(c, 4)
    approve(c, 4)
    lower(c, 1, by="alice")
    refused(c, "unauthorized", "LevelLowered needs role admin or proposer")
    c.events.pop()
    lower(c, 2)  # a level the policy holds no evidence for
    refused(c, "policy", "holds no evidence for level 2")
    c.events.pop()
    lower(c, 1)
    assert state(c).route("default")["evidence"] == LEVELS["1"]


def test_proposing_no_move_up_on_the_policy_in_force_is_refused() -> None:
    c = routed()
    propose(c, 4)
    approve(c, 4)
    propose(c, 1)
    refused(c, "policy", "moves nothing up")


def test_a_routes_policy_must_name_a_registered_probe_and_well_formed_evidence() -> None:
    c = routed()
    register_policy(c, "route/default@bbbbbbbbbbbb", LEVELS, probe="ef" * 32)
    refused(c, "policy", "no registered version of a risk/<family> model")
    c.events.pop()
    register_policy(c, "route/default@bbbbbbbbbbbb", {"1": {"corpus": 10}})
    refused(c, "policy", "level 1: the evidence has no 'accuracy'")
    c.events.pop()
    register_policy(c, "route/default@bbbbbbbbbbbb", {"0": LEVELS["1"]})
    refused(c, "policy", "levels are 1, 2, ...")
    c.events.pop()
    register_policy(c, "route/default@bbbbbbbbbbbb", {}, probe="")  # no probe, no level: allowed (level 0 only)
    assert "route/default@bbbbbbbbbbbb" in state(c).models[ROUTE]["versions"]


def test_level_events_are_about_routes_only() -> None:
    c = routed()
    c.append(
        "LevelProposed", "ops", {"version": "risk/fam@cdcdcdcdcdcd", "level": 1, "evidence": LEVELS["1"]}, "risk/fam"
    )
    refused(c, "policy", "its model_name is route/<name>")


def test_a_snapshot_keeps_the_routes() -> None:
    c = routed()
    propose(c, 1)
    approve(c, 1)
    reg = state(c)
    again = type(reg).from_json(reg.to_json())
    assert again.route("default") == reg.route("default") and again == reg
