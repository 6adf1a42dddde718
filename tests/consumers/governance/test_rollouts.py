"""Rollouts as governance events, on real signed chains in memory: a person starts a rollout of an approved candidate
in place of production; the controller steps it through its plan's weights, one step at a time, and completes it (the
candidate becomes production) or aborts it (production stays the incumbent's). Replay verifies every rule, and the
projection holds each rollout with its history and evidence."""

from __future__ import annotations

from typing import Any

import pytest

from bench.replay import ADMIN, Chain, build_log
from evostream.consumers.governance.events import GovEvent, check_payload
from evostream.consumers.governance.policy import DEFAULT_POLICY
from evostream.consumers.governance.projection import Registry, replay
from evostream.consumers.governance.service import Governance, previous_production
from evostream.core.errors import ConflictError, GovernanceError, PolicyViolationError, UnauthorizedError
from evostream.rollout.plan import Gate, RolloutPlan
from tests.consumers.governance.test_projection import M, refused, register

PLAN = RolloutPlan(steps=(20, 100), step_s=3, min_samples=5, shadow_s=1, clean_cycles=1).to_json()
WINDOW = {"verdict": "ADVANCE", "gates": {"alert_rate": {"verdict": "pass", "candidate": 0.01, "incumbent": 0.01}}}
BROKEN = {"verdict": "ABORT", "gates": {"alert_rate": {"verdict": "break", "candidate": 0.4, "incumbent": 0.01}}}


def validated(c: Chain, version: str, parent: str | None = None) -> None:
    register(c, version, parent, by="ops")
    c.append("ValidationCompleted", "ops", {"version": version, "passed": True, "gates": {"acc": 0.9}}, M)


def approved(c: Chain, version: str, by: str = "alice") -> None:
    c.append("ApprovalGranted", by, {"version": version, "stage": "production"}, M)


def governed() -> Chain:
    """root (admin), ops (proposer), alice / bob (approvers), ctl (controller), under the genesis policy; M v1 in
    production, v2 validated, in staging and approved for production by alice."""
    c = Chain(seed=28)
    c.genesis()
    c.append("PolicyChanged", ADMIN, {"policy": dict(DEFAULT_POLICY)})
    c.enroll("ops", ["proposer"])
    c.enroll("alice", ["approver"])
    c.enroll("bob", ["approver"])
    c.enroll("ctl", ["controller"])
    validated(c, "v1")
    approved(c, "v1")
    c.append("Promoted", ADMIN, {"version": "v1", "stage": "production", "alias": None}, M)
    validated(c, "v2", parent="v1")  # auto_promote_staging is the writer's: here the proposer stages it
    c.append("Promoted", "ops", {"version": "v2", "stage": "staging", "alias": None}, M)
    approved(c, "v2")
    return c


def start(
    c: Chain,
    version: str = "v2",
    incumbent: str = "v1",
    rid: str = "ro-1",
    by: str = ADMIN,
    plan: dict[str, Any] | None = None,
) -> GovEvent:
    payload = {
        "rollout_id": rid,
        "version": version,
        "incumbent": incumbent,
        "plan": PLAN if plan is None else plan,
        "evidence": {"compare": {"agree": 0.97, "n": 400}},
    }
    return c.append("RolloutStarted", by, payload, M, "shadowed a day, compare looks clean")


def step(c: Chain, n: int, weight: int | None = None, rid: str = "ro-1", by: str = "ctl") -> GovEvent:
    w = PLAN["steps"][n] if weight is None else weight
    return c.append(
        "RolloutStepped", by, {"rollout_id": rid, "step": n, "weight": w, "evidence": WINDOW}, M, "gates pass"
    )


def abort(c: Chain, rid: str = "ro-1", by: str = "ctl", automatic: bool = True) -> GovEvent:
    payload = {"rollout_id": rid, "automatic": automatic, "evidence": BROKEN}
    return c.append("RolloutAborted", by, payload, M, "alert_rate broke")


def complete(c: Chain, rid: str = "ro-1", by: str = "ctl") -> GovEvent:
    return c.append("RolloutCompleted", by, {"rollout_id": rid, "evidence": WINDOW}, M, "1 clean window at 100%")


def state(c: Chain) -> Registry:
    reg, found = replay(c.log())
    assert found == [], found
    return reg


# --- the life of a rollout -----------------------------------------------------------------------------------------
def test_a_full_rollout_moves_production_to_the_candidate_only_when_it_completes() -> None:
    c = governed()
    start(c)
    reg = state(c)
    r = reg.active_rollout(M)
    assert r is not None
    assert (r["status"], r["step"], r["weight"], r["version"], r["incumbent"]) == ("running", -1, 0, "v2", "v1")
    assert r["plan"] == PLAN and r["evidence"] == {"compare": {"agree": 0.97, "n": 400}}
    assert reg.production(M) == "v1"
    step(c, 0)
    assert (state(c).active_rollout(M) or {}).get("weight") == 20
    assert state(c).production(M) == "v1"  # the pointer does not move while the rollout runs
    step(c, 1)
    complete(c)
    reg = state(c)
    assert reg.production(M) == "v2" and reg.version(M, "v1")["stage"] == "archived"
    assert reg.version(M, "v2")["stage"] == "production" and reg.staging(M) is None
    assert reg.active_rollout(M) is None
    done = reg.last_rollout(M)
    assert done is not None and (done["status"], done["step"], done["weight"]) == ("completed", 1, 100)
    assert [(h["type"], h["actor"], h["step"], h["weight"]) for h in done["history"]] == [
        ("RolloutStarted", ADMIN, -1, 0),
        ("RolloutStepped", "ctl", 0, 20),
        ("RolloutStepped", "ctl", 1, 100),
        ("RolloutCompleted", "ctl", 1, 100),
    ]
    assert done["history"][1]["evidence"] == WINDOW and done["history"][1]["reason"] == "gates pass"
    assert [h["sequence"] for h in done["history"]] == [ev.sequence for ev in c.events[-4:]]
    assert [h["at_us"] for h in done["history"]] == [ev.occurred_at_us for ev in c.events[-4:]]
    assert reg.version(M, "v2")["events"][-4:] == [ev.sequence for ev in c.events[-4:]]
    assert previous_production([(o, ev) for o, ev in c.log()], M) == "v1"  # `rollback previous` goes back to v1


def test_an_abort_leaves_the_incumbent_in_production_and_the_candidate_where_it_was() -> None:
    c = governed()
    start(c)
    step(c, 0)
    abort(c)
    reg = state(c)
    assert reg.production(M) == "v1" and reg.version(M, "v2")["stage"] == "staging"
    assert reg.active_rollout(M) is None
    r = reg.last_rollout(M)
    assert r is not None and (r["status"], r["step"], r["weight"]) == ("aborted", 0, 0)
    assert r["history"][-1]["evidence"] == BROKEN
    step(c, 1)  # an aborted rollout takes no more events
    refused(c, "policy", "rollout ro-1 of sentiment is aborted: it takes no more events")
    c.events.pop()
    start(c, rid="ro-2")  # the candidate may be rolled out again
    assert (state(c).active_rollout(M) or {}).get("rollout_id") == "ro-2"


def test_replay_of_a_rollout_is_the_same_registry_verified_or_not_and_from_any_snapshot() -> None:
    c = governed()
    start(c)
    step(c, 0)
    abort(c)
    start(c, rid="ro-2")
    step(c, 0, rid="ro-2")
    step(c, 1, rid="ro-2")
    complete(c, rid="ro-2")
    log = c.log()
    full = state(c)
    folded, found = replay(log, verify=False)
    assert found == [] and folded.to_json() == full.to_json()
    assert set(full.rollouts) == {"ro-1", "ro-2"}
    for cut in range(len(log) - 7, len(log)):
        snap = Registry.from_json(replay(log[:cut])[0].to_json())
        tail, found = replay(log[cut:], start=snap)
        assert found == [] and tail.to_json() == full.to_json()
    assert Registry.from_json(full.to_json()) == full


def test_a_snapshot_written_before_rollouts_loads_with_none() -> None:
    c = governed()
    old = state(c).to_json()
    del old["rollouts"]
    reg = Registry.from_json(old)
    assert reg.rollouts == {} and reg.active_rollout(M) is None
    start(c)
    tail, found = replay(c.log()[-1:], start=reg)
    assert found == [] and tail.to_json() == state(c).to_json()


# --- refusals ----------------------------------------------------------------------------------------------------
def test_a_candidate_without_the_approvals_of_a_promotion_cannot_be_rolled_out() -> None:
    c = governed()
    validated(c, "v3", parent="v1")
    start(c, version="v3")
    refused(c, "policy", "sentiment v3 needs 1 distinct approvers for production, has 0")
    c.events.pop()
    register(c, "v4", by="ops")
    approved(c, "v4", by="bob")
    start(c, version="v4")
    refused(c, "policy", "sentiment v4 cannot be production: it has no passed validation")


def test_the_incumbent_must_be_production_and_the_candidate_another_version() -> None:
    c = governed()
    start(c, incumbent="v2")
    refused(c, "policy", "the incumbent 'v2' is not sentiment's production (v1)")
    c.events.pop()
    start(c, version="v1")
    refused(c, "policy", "sentiment v1 is production already")
    c.events.pop()
    start(c, version="v9")
    refused(c, "policy", "sentiment version 'v9' is not registered")


def test_one_rollout_of_a_model_at_a_time_and_each_id_once() -> None:
    c = governed()
    start(c)
    validated(c, "v3", parent="v1")
    approved(c, "v3")
    start(c, version="v3", rid="ro-2")
    refused(c, "policy", "rollout ro-1 of sentiment (v2) is running: one rollout of a model at a time")
    c.events.pop()
    abort(c, by=ADMIN, automatic=False)
    start(c, version="v3", rid="ro-1")
    refused(c, "policy", "rollout id 'ro-1' is taken")


def test_steps_come_in_order_at_the_plans_weights() -> None:
    c = governed()
    start(c)
    step(c, 1)
    refused(c, "policy", "rollout ro-1 is at the shadow phase: the next step is 0, not 1")
    c.events.pop()
    step(c, 0, weight=50)
    refused(c, "policy", "rollout ro-1's step 0 is 20% by its plan, not 50%")
    c.events.pop()
    step(c, 0)
    step(c, 0)
    refused(c, "policy", "rollout ro-1 is at step 0: the next step is 1, not 0")
    c.events.pop()
    step(c, 1)
    step(c, 2, weight=100)
    refused(c, "policy", "is at its last step (1, 100%): complete it, there is no step 2")
    c.events.pop()
    step(c, 1, rid="ro-9")
    refused(c, "policy", "sentiment has no rollout 'ro-9' (running: ro-1)")


def test_completion_only_at_the_last_step() -> None:
    c = governed()
    start(c)
    complete(c)
    refused(c, "policy", "rollout ro-1 is at the shadow phase: it completes only at its last step (1, 100%)")
    c.events.pop()
    step(c, 0)
    complete(c)
    refused(c, "policy", "rollout ro-1 is at step 0 (20%): it completes only at its last step")


def test_the_controller_may_only_step_abort_and_complete() -> None:
    c = governed()
    start(c, by="ctl")
    refused(c, "unauthorized", "RolloutStarted needs role admin; 'ctl' has ['controller']")
    c.events.pop()
    c.append("Promoted", "ctl", {"version": "v2", "stage": "production", "alias": None}, M)
    refused(c, "unauthorized", "Promoted needs role admin")
    c.events.pop()
    start(c)
    step(c, 0, by="ops")
    refused(c, "unauthorized", "RolloutStepped needs role admin or controller")
    c.events.pop()
    complete(c, by="alice")
    refused(c, "unauthorized", "RolloutCompleted needs role admin or controller")
    c.events.pop()
    step(c, 0, by=ADMIN)  # an admin may do the controller's work
    abort(c, by="bob", automatic=False)  # and an approver may stop a rollout
    assert (state(c).last_rollout(M) or {}).get("status") == "aborted"


def test_a_proposer_starts_rollouts_under_auto_promote_production() -> None:
    c = governed()
    c.append("PolicyChanged", ADMIN, {"policy": {"auto_promote_production": True}})
    start(c, by="ops")
    assert state(c).active_rollout(M) is not None


def test_production_does_not_move_by_hand_while_a_rollout_runs() -> None:
    c = governed()
    validated(c, "v3", parent="v1")
    approved(c, "v3")
    start(c)
    c.append("Promoted", ADMIN, {"version": "v3", "stage": "production", "alias": None}, M)
    refused(c, "policy", "rollout ro-1 of sentiment (v1 -> v2) is running: abort it first")
    c.events.pop()
    abort(c, by=ADMIN, automatic=False)
    c.append("Promoted", ADMIN, {"version": "v3", "stage": "production", "alias": None}, M)
    assert state(c).production(M) == "v3"


def test_a_plan_that_is_no_valid_plan_written_in_full_is_refused() -> None:
    c = governed()
    start(c, plan={**PLAN, "steps": [50, 20, 100]})
    refused(c, "policy", "the plan is refused: steps must rise strictly")
    c.events.pop()
    short = dict(PLAN)
    del short["confidence"]
    start(c, plan=short)
    refused(c, "policy", "write the plan in full")


def test_payload_shapes_are_checked() -> None:
    with pytest.raises(GovernanceError, match="'automatic' must be bool"):
        check_payload("RolloutAborted", {"rollout_id": "r", "automatic": 1, "evidence": {}})
    with pytest.raises(GovernanceError, match=r"weight within 1\.\.100"):
        check_payload("RolloutStepped", {"rollout_id": "r", "step": 0, "weight": 0, "evidence": {}})
    with pytest.raises(GovernanceError, match="'evidence' is missing"):
        check_payload("RolloutCompleted", {"rollout_id": "r"})


# --- evidence on approvals, the policy's shadow share, logs from before ----------------------------------------------
def test_an_approval_may_cite_evidence_and_one_without_verifies_as_before() -> None:
    c = governed()  # its approvals carry no evidence, as every approval written before the field
    cited = {"compare": {"n": 400, "agree": 0.97}}
    c.append("ApprovalGranted", "bob", {"version": "v2", "stage": "production", "evidence": cited}, M)
    reg = state(c)
    assert reg.version(M, "v2")["approvals"]["production"]["granted"] == {
        "alice": c.events[-2].sequence,
        "bob": c.events[-1].sequence,
    }
    assert c.events[-1].payload["evidence"] == cited
    with pytest.raises(GovernanceError, match="'evidence' must be dict"):
        check_payload("ApprovalGranted", {"version": "v2", "stage": "production", "evidence": "compare.json"})


def test_a_log_without_rollouts_verifies_and_folds_as_before() -> None:
    c = build_log(300, seed=5)  # every event type a log held before rollouts, none of theirs
    reg, found = replay(c.log())
    assert found == [] and reg.head_sequence == 299 and reg.rollouts == {}
    assert all(reg.active_rollout(m) is None and reg.last_rollout(m) is None for m in reg.models)
    assert reg.to_json() == replay(c.log(), verify=False)[0].to_json()


def test_the_policy_shadow_share_is_a_share() -> None:
    c = governed()
    assert state(c).policy.get("shadow_share") is None  # unset: off (rule() reads 0)
    c.append("PolicyChanged", ADMIN, {"policy": {"shadow_share": 0.25}})
    assert state(c).policy["shadow_share"] == 0.25
    c.append("PolicyChanged", ADMIN, {"policy": {"shadow_share": 1.5}})
    refused(c, "policy", "shadow_share must be within [0, 1], got 1.5")


# --- the commands -------------------------------------------------------------------------------------------------
class ListLog:
    """A governance log in a list, with the append contract of the Kafka one (the head must be the expected one)."""

    def __init__(self, events: list[GovEvent]) -> None:
        self.events = list(events)

    def items(self, from_offset: int = 0) -> list[tuple[int, GovEvent]]:
        return [(i, ev) for i, ev in enumerate(self.events) if i >= from_offset]

    def append(self, ev: GovEvent, expected_head: tuple[int, str], skip: frozenset[int] = frozenset()) -> int:
        head = (self.events[-1].sequence, self.events[-1].hash) if self.events else (-1, "")
        if head != expected_head:
            raise ConflictError(f"head moved: {head}")
        self.events.append(ev)
        return len(self.events) - 1


def test_the_governance_commands_run_a_rollout_and_the_rules_refuse_before_writing() -> None:
    c = governed()
    log = ListLog(c.events)
    admin = Governance(log, c.keys[ADMIN], ADMIN, clock=lambda: c.now_us)
    ctl = Governance(log, c.keys["ctl"], "ctl", clock=lambda: c.now_us)
    with pytest.raises(UnauthorizedError, match="RolloutStarted needs role admin"):
        ctl.start_rollout(M, "v2", {}, {}, reason="the controller may not start one")
    with pytest.raises(GovernanceError, match="the rollout plan is refused: the last step must be 100"):
        admin.start_rollout(M, "v2", {"steps": [10, 50]}, {}, reason="bad plan")
    with pytest.raises(GovernanceError, match="needs a reason"):
        admin.start_rollout(M, "v2", {}, {}, reason=" ")
    plan = {"steps": [20, 100], "gates": {"alert_rate": {"tolerance": 0.2}}}
    started = admin.start_rollout(M, "v2", plan, {"compare": {"n": 3}}, reason="go", rollout_id="ro-7")
    full = RolloutPlan(steps=(20, 100), gates={"alert_rate": Gate(0.2)}).to_json()
    assert started.payload == {
        "rollout_id": "ro-7",
        "version": "v2",
        "incumbent": "v1",
        "plan": full,
        "evidence": {"compare": {"n": 3}},
    }
    with pytest.raises(PolicyViolationError, match="the next step is 0, not 1"):
        ctl.step_rollout(M, "ro-7", 1, WINDOW, reason="skip")
    with pytest.raises(PolicyViolationError, match="the next step is 0, not 5"):
        ctl.step_rollout(M, "ro-7", 5, WINDOW, reason="no such step")
    assert [ev.type for ev in log.events[-1:]] == ["RolloutStarted"]  # nothing refused was written
    ctl.step_rollout(M, "ro-7", 0, WINDOW, reason="shadow clean")
    ctl.step_rollout(M, "ro-7", 1, WINDOW, reason="20% clean")
    ctl.complete_rollout(M, "ro-7", WINDOW, reason="clean at 100%")
    reg = admin.state().registry
    assert reg.production(M) == "v2" and (reg.last_rollout(M) or {}).get("status") == "completed"
    auto = admin.start_rollout(M, "v1", {}, {}, reason="back to v1 by rollout")
    assert str(auto.payload["rollout_id"]).startswith("ro-") and auto.payload["incumbent"] == "v2"
    ctl.abort_rollout(M, str(auto.payload["rollout_id"]), BROKEN, automatic=True, reason="alert_rate broke")
    reg2, found = replay([(i, ev) for i, ev in enumerate(log.events)])
    assert found == [] and reg2.production(M) == "v2" and reg2.active_rollout(M) is None


def test_a_candidate_that_loses_its_validation_or_approvals_cannot_be_stepped_or_completed() -> None:
    """Review finding 1: what a promotion to production needs is checked again at each step and at completion."""
    c = governed()
    start(c)
    c.append("ValidationCompleted", "ops", {"version": "v2", "passed": False, "gates": {"acc": 0.4}}, M)
    step(c, 0)
    refused(c, "policy", "rollout ro-1's candidate no longer holds what production needs: sentiment v2's latest")
    c.events.pop()
    c.append("ValidationCompleted", "ops", {"version": "v2", "passed": True, "gates": {"acc": 0.9}}, M)
    step(c, 0)
    step(c, 1)
    c.append("ApprovalRejected", "bob", {"version": "v2", "stage": "production"}, M)
    complete(c)
    refused(c, "policy", "sentiment v2 needs 1 distinct approvers for production, has 0")
    c.events.pop()
    abort(c)  # an abort stays open
    reg = state(c)
    assert reg.production(M) == "v1" and (reg.last_rollout(M) or {}).get("status") == "aborted"


def test_a_plan_written_before_a_field_was_added_still_verifies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding 11: a RolloutPlan of a later day writes one more field (with a default); a RolloutStarted of an
    older day lacks it and must still verify on replay. Unknown fields and invalid values stay refused."""
    from evostream.consumers.governance.rollouts import REQUIRED_PLAN_FIELDS

    old = {k: v for k, v in PLAN.items() if k in REQUIRED_PLAN_FIELDS}  # the plan as the first RolloutPlan wrote it
    today = RolloutPlan.to_json
    monkeypatch.setattr(RolloutPlan, "to_json", lambda self: {**today(self), "max_window_s": 10 * self.step_s})
    c = governed()
    start(c, plan=old)
    r = state(c).active_rollout(M)
    assert r is not None and r["plan"] == old
    c.events.pop()
    start(c, plan={**old, "later_field": 1})
    refused(c, "policy", "the plan is refused: unknown rollout plan field(s) ['later_field']")
    c.events.pop()
    start(c, plan={**old, "min_samples": 0})
    refused(c, "policy", "the plan is refused: min_samples must be at least 1")
    c.events.pop()
    start(c, plan={k: v for k, v in old.items() if k != "confidence"})  # a field every plan carried from the first
    refused(c, "policy", "write the plan in full, as RolloutPlan.to_json() does (it lacks ['confidence'])")


def test_a_plan_written_before_max_window_s_still_verifies_and_runs_with_its_default() -> None:
    c = governed()
    old = {k: v for k, v in PLAN.items() if k != "max_window_s"}  # a RolloutStarted of before the field
    start(c, plan=old)
    step(c, 0)
    folded, found = replay(c.log())
    assert found == []
    r = folded.active_rollout(M)
    assert r is not None and "max_window_s" not in r["plan"] and r["step"] == 0
    assert RolloutPlan.from_json(r["plan"]).window_limit_s == 30.0  # 10 x step_s 3
    c.events.pop()
    c.events.pop()
    start(c, plan={**PLAN, "max_window_s": 2.0})  # written, it is checked like any field
    refused(c, "policy", "max_window_s must be a number of seconds at least step_s")
