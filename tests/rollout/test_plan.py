"""The rollout plan: its JSON form round-trips, omitted fields take the defaults, and a plan that could not run is
refused with each of its problems named."""

from __future__ import annotations

import re
from typing import Any

import pytest

from evostream.rollout.plan import DEFAULT_GATES, GATE_METRICS, Gate, RolloutPlan, problems


def test_the_default_plan_is_the_designs_and_round_trips() -> None:
    plan = RolloutPlan()
    assert plan.steps == (1, 5, 25, 50, 100) and plan.clean_cycles == 3 and plan.confidence == 0.99
    assert {k: g.tolerance for k, g in plan.gates.items()} == {
        "alert_rate": 0.10,
        "accuracy": 0.05,
        "p95_latency": 0.20,
        "error_rate": 0.02,
    }
    assert problems(plan) == []
    assert RolloutPlan.from_json(plan.to_json()) == plan
    assert RolloutPlan.from_json({}) == plan  # every field omitted: the defaults


def test_a_small_plan_round_trips_through_json_exactly() -> None:
    small = RolloutPlan(
        steps=(20, 100), step_s=3, min_samples=5, shadow_s=0, clean_cycles=1, gates={"alert_rate": Gate(0.3)}
    )
    d = small.to_json()
    assert d == {
        "steps": [20, 100],
        "step_s": 3.0,
        "min_samples": 5,
        "shadow_share": 0.1,
        "shadow_s": 0.0,
        "clean_cycles": 1,
        "confidence": 0.99,
        "gates": {"alert_rate": {"tolerance": 0.3}},
        "max_window_s": 30.0,  # 10 x step_s
    }
    again = RolloutPlan.from_json(d)
    assert again == small and again.to_json() == d


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"steps": ()}, "at least one step"),
        ({"steps": (5, 1, 100)}, "rise strictly"),
        ({"steps": (5, 5, 100)}, "rise strictly"),
        ({"steps": (0, 100)}, "within 1..100"),
        ({"steps": (10, 150)}, "within 1..100"),
        ({"steps": (10, 50)}, "the last step must be 100"),
        ({"step_s": 0.0}, "step_s must be a positive"),
        ({"step_s": float("inf")}, "step_s must be a positive"),
        ({"shadow_s": -1.0}, "shadow_s must be 0 or more"),
        ({"min_samples": 0}, "min_samples must be at least 1"),
        ({"clean_cycles": 0}, "clean_cycles must be at least 1"),
        ({"shadow_share": 1.5}, "shadow_share must be within [0, 1]"),
        ({"confidence": 1.0}, "confidence must be within (0, 1)"),
        ({"gates": {}}, "at least one gate"),
        ({"gates": {"latency": Gate(0.1)}}, "unknown gate 'latency'"),
        ({"gates": {"accuracy": Gate(-0.1)}}, "tolerance must be a finite number >= 0"),
        ({"gates": {"accuracy": Gate(float("nan"))}}, "tolerance must be a finite number >= 0"),
    ],
)
def test_each_problem_is_named_and_from_json_refuses_it(change: dict[str, Any], problem: str) -> None:
    plan = RolloutPlan(**change)
    found = problems(plan)
    assert any(problem in p for p in found), found
    d = {**RolloutPlan().to_json(), **{k: v for k, v in plan.to_json().items() if k in change}}
    if all(v == v for v in d.values() if isinstance(v, float)):  # nan is no JSON
        with pytest.raises(ValueError, match=re.escape(problem)):
            RolloutPlan.from_json(d)


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ([1, 100], "is a JSON object"),
        ({"stepz": [100]}, "unknown rollout plan field"),
        ({"steps": "1,100"}, "list of whole percents"),
        ({"steps": [1.5, 100]}, "list of whole percents"),
        ({"steps": [True, 100]}, "list of whole percents"),
        ({"step_s": "60"}, "step_s must be a number"),
        ({"min_samples": 2.5}, "min_samples must be a whole number"),
        ({"gates": {"accuracy": 0.05}}, "must be {'tolerance': x}"),
        ({"gates": {"accuracy": {"tolerance": 0.05, "x": 1}}}, "must be {'tolerance': x}"),
        ({"gates": [["accuracy", 0.05]]}, "metric -> "),
    ],
)
def test_from_json_refuses_what_is_no_plan(d: Any, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        RolloutPlan.from_json(d)


def test_gates_cover_the_known_metrics() -> None:
    assert set(DEFAULT_GATES) == set(GATE_METRICS)


def test_a_shadow_phase_without_a_mirror_is_refused_a_plan_without_either_is_fine() -> None:
    found = problems(RolloutPlan(shadow_share=0.0, shadow_s=60))
    assert any("shadow_share 0 mirrors nothing" in p for p in found), found
    with pytest.raises(ValueError, match="shadow_share 0 mirrors nothing"):
        RolloutPlan.from_json({"shadow_share": 0, "shadow_s": 30})
    assert problems(RolloutPlan(shadow_share=0.0, shadow_s=0)) == []


def test_max_window_s_defaults_to_ten_windows_and_may_not_be_shorter_than_one() -> None:
    assert RolloutPlan().max_window_s == 600.0 and RolloutPlan(step_s=5, shadow_s=90).max_window_s == 900.0
    assert RolloutPlan.from_json({"step_s": 3, "shadow_s": 0}).to_json()["max_window_s"] == 30.0
    assert RolloutPlan.from_json({"max_window_s": 120}).window_limit_s == 120.0
    found = problems(RolloutPlan(step_s=60, max_window_s=30))
    assert any("max_window_s must be a number of seconds at least step_s and shadow_s (60)" in p for p in found)
