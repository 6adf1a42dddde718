"""The controller's decision on a rollout's window, pure: a rollout's state as governance folds it, the records of its
traffic folded, and a time."""

from __future__ import annotations

from typing import Any

from evostream.consumers.governance.shapes import RolloutState
from evostream.rollout.plan import RolloutPlan
from evostream.views.rollout import RolloutFold
from evostream.wiring.rollout import cycle_end, decide
from tests.rollout.traffic import Traffic

INC, CAND = "m@1", "m@2"
T0 = 1_800_000_000_000_000
S = 1_000_000
PLAN = RolloutPlan(steps=(50, 100), step_s=2, min_samples=5, shadow_s=2, clean_cycles=2)


def rollout(step: int, at_us: int, plan: RolloutPlan = PLAN) -> RolloutState:
    """A running rollout started at T0 whose last event (the start, or the step ``step``) came at ``at_us``."""
    history: list[Any] = [{"type": "RolloutStarted", "at_us": T0, "step": -1, "weight": 0}]
    if step >= 0:
        history.append({"type": "RolloutStepped", "at_us": at_us, "step": step, "weight": plan.steps[step]})
    return {
        "rollout_id": "ro-1",
        "model_name": "m",
        "version": CAND,
        "incumbent": INC,
        "plan": plan.to_json(),
        "evidence": {},
        "status": "running",
        "step": step,
        "weight": 0 if step < 0 else plan.steps[step],
        "started_seq": 1,
        "started_us": T0,
        "history": history,
    }


def fold(t: Traffic) -> RolloutFold:
    f = RolloutFold()
    for topic, rec in t.records:
        f.add(topic, rec)
    return f


def test_the_shadow_phase_steps_to_the_first_weight_once_its_window_passes() -> None:
    t = Traffic()
    t.answers(INC, 200, T0, alerted=10, spacing_us=10_000)
    t.answers(CAND, 8, T0, role="SHADOW", spacing_us=100_000)
    r, f = rollout(-1, T0), fold(t)
    young = decide(r, f, T0 + S)
    assert young.kind == "wait" and "1.0 s old of 2 s" in young.reason
    go = decide(r, f, T0 + 2 * S + 1)
    assert go.kind == "step" and go.step == 0
    ev = go.evidence
    assert ev["verdict"] == "ADVANCE" and ev["candidate"]["answers"] == 8 and ev["incumbent"]["answers"] == 200
    assert ev["incumbent"]["baseline"] == "window" and ev["window"]["window_s"] == 2
    assert set(ev["gates"]) == set(PLAN.gates)


def test_without_a_shadow_phase_the_first_step_is_taken_at_once() -> None:
    plan = RolloutPlan(steps=(50, 100), step_s=2, min_samples=5, shadow_s=0, clean_cycles=1)
    a = decide(rollout(-1, T0, plan), RolloutFold(), T0)
    assert (a.kind, a.step) == ("step", 0)


def test_a_step_waits_for_its_samples_however_old() -> None:
    t = Traffic()
    t.answers(INC, 100, T0, spacing_us=10_000)
    t.answers(CAND, 3, T0 + 1)
    a = decide(rollout(0, T0), fold(t), T0 + 19 * S)  # short of max_window_s (10 x step_s)
    assert a.kind == "wait" and "3 of 5 candidate answers" in a.reason


def test_an_all_alerted_candidate_aborts_at_once() -> None:
    t = Traffic()
    t.answers(INC, 500, T0, alerted=25, spacing_us=1000)  # the shadow phase: the incumbent's baseline
    step_at = T0 + S // 2
    t.answers(CAND, 10, step_at + 1, alerted=10, spacing_us=10_000)
    a = decide(rollout(0, step_at), fold(t), step_at + S // 2)  # a quarter of the window, 10 answers: no matter
    assert a.kind == "abort"
    assert a.evidence["gates"]["alert_rate"]["verdict"] == "break"
    assert a.reason.startswith("look 1 of 8 (first 5 candidate answers") and "alert_rate broke" in a.reason


def test_at_100_percent_clean_cycles_complete_the_rollout_against_the_incumbents_rollout_baseline() -> None:
    t = Traffic()
    t.answers(INC, 300, T0, alerted=15, labelled=100, right=80, spacing_us=10_000)  # before 100%: 3 s of answers
    step_at = T0 + 3 * S
    t.answers(CAND, 40, step_at, alerted=2, labelled=10, right=8, spacing_us=100_000)  # 4 s at 10 a second
    r, f = rollout(1, step_at), fold(t)
    one = decide(r, f, step_at + 3 * S)
    assert one.kind == "wait" and "1 of 2 clean cycle(s)" in one.reason
    done = decide(r, f, step_at + 4 * S + 1)
    assert done.kind == "complete"
    cycles = done.evidence["cycles"]
    assert [c["cycle"] for c in cycles] == [1, 2]
    assert [c["window"]["start_us"] for c in cycles] == [step_at, step_at + 2 * S]
    assert all(c["incumbent"]["baseline"] == "rollout" and c["incumbent"]["answers"] == 300 for c in cycles)
    assert cycle_end(f, r, RolloutPlan.from_json(r["plan"]), step_at) == step_at + 2 * S


def test_a_cycle_with_few_answers_lasts_until_its_min_samples_th() -> None:
    t = Traffic()
    t.answers(INC, 100, T0, spacing_us=10_000)
    step_at = T0 + S
    t.answers(CAND, 5, step_at, spacing_us=S)  # one a second: the fifth 4 s in, the cycle ends just after it
    r, f = rollout(1, step_at), fold(t)
    assert cycle_end(f, r, PLAN, step_at) == step_at + 4 * S + 1
    assert decide(r, f, step_at + 3 * S).kind == "wait"


def test_a_broken_cycle_at_100_percent_aborts_with_the_clean_ones_cited() -> None:
    t = Traffic()
    t.answers(INC, 300, T0, alerted=15, spacing_us=10_000)
    step_at = T0 + 3 * S
    t.answers(CAND, 20, step_at, alerted=1, spacing_us=100_000)  # cycle 1: clean
    t.answers(CAND, 20, step_at + 2 * S, alerted=20, spacing_us=50_000)  # cycle 2: every answer alerted
    a = decide(rollout(1, step_at), fold(t), step_at + 3 * S)
    assert a.kind == "abort" and a.reason.startswith("cycle 2 at 100%: look 1 of 8") and "alert_rate broke" in a.reason
    assert [c["cycle"] for c in a.evidence["clean_before"]] == [1]


def test_a_window_without_candidate_answers_aborts_at_max_window_s() -> None:
    t = Traffic()  # the candidate failed to load: production answers alone, the candidate never
    t.answers(INC, 300, T0, spacing_us=100_000)
    r, f = rollout(0, T0), fold(t)
    assert PLAN.window_limit_s == 20.0  # 10 x step_s
    assert decide(r, f, T0 + 19 * S).kind == "wait"
    a = decide(r, f, T0 + 20 * S)
    assert a.kind == "abort" and "max_window_s 20" in a.reason and "0 of 5 candidate answers" in a.reason
    assert a.evidence["verdict"] == "ABORT" and a.evidence["candidate"]["answers"] == 0


def test_a_shadow_phase_or_a_cycle_at_100_percent_without_answers_aborts_at_max_window_s_too() -> None:
    t = Traffic()
    t.answers(INC, 300, T0, spacing_us=100_000)
    t.answers(CAND, 3, T0, role="SHADOW", spacing_us=S)
    assert decide(rollout(-1, T0), fold(t), T0 + 20 * S).kind == "abort"
    step_at = T0 + S
    t.answers(CAND, 2, step_at, spacing_us=S)  # at 100%: two answers, then none
    a = decide(rollout(1, step_at), fold(t), step_at + 20 * S)
    assert a.kind == "abort" and a.reason.startswith("cycle 1 at 100%: the window is 20.0 s old")
