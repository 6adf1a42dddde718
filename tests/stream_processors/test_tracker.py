"""The risk agent's fold: early alerts, final reports, replays, and a completion that overtakes its steps."""

from __future__ import annotations

import json
from typing import Any

from evostream.schemas.samples import generation_step
from evostream.schemas.tensors import pack_f32
from evostream.stream_processors.risk.policy import RiskPolicy
from evostream.stream_processors.risk.tracker import RiskTracker


def step(i: int, **changes: Any) -> dict[str, Any]:
    rec = generation_step(i, "t")
    rec.update({"model_version": "m@1", "entropy_bits": 0.5, "token_id": (i * 37 + 11) % 300, **changes})
    return rec


def completion(n: int) -> dict[str, Any]:
    return {
        "trace_id": "t",
        "request_id": "req-t",
        "model_version": "m@1",
        "token_count": n,
        "finish_reason": "STOP",
        "error": None,
    }


def fold(tracker: RiskTracker, events: list[tuple[str, dict[str, Any], int]]) -> tuple[Any, list[dict[str, Any]]]:
    state: Any = None
    reports = []
    for kind, rec, offset in events:
        fn = tracker.on_step if kind == "step" else tracker.on_completion
        out = fn(state, rec, offset, 0)
        state = json.loads(json.dumps(out.state))
        reports += out.reports
    return state, reports


def test_a_completion_that_overtakes_its_steps_waits_for_them() -> None:
    tracker = RiskTracker({"*": RiskPolicy()})
    events = [("step", step(0), 0), ("completion", completion(3), 0), ("step", step(1), 1), ("step", step(2), 2)]
    state, reports = fold(tracker, events)
    assert [(r["stage"], r["steps"]) for r in reports] == [("FINAL", 3)]
    assert state["final"] and "risk" not in state


def test_an_early_alert_once_per_severity_and_replays_skipped() -> None:
    tracker = RiskTracker({"*": RiskPolicy()})
    nan = step(1, layer_nonfinite=[0, 1, 1, 1], layer_hidden_l2=pack_f32([1.0, float("nan"), 1.0, 1.0]))
    events = [
        ("step", step(0), 0),
        ("step", nan, 1),
        ("step", nan, 1),
        ("step", step(2), 2),
        ("completion", completion(3), 0),
        ("completion", completion(3), 0),
    ]
    _, reports = fold(tracker, events)
    assert [(r["stage"], r["flags"]) for r in reports] == [
        ("EARLY", ["nonfinite_hidden"]),
        ("FINAL", ["nonfinite_hidden"]),
    ]


def test_a_traces_steps_folded_in_one_go_give_what_step_by_step_gives() -> None:
    """The agent folds each trace's steps of a batch at once; the outcome must be the step-by-step one with the
    state stored and reloaded between steps (as the table does): same reports, same alerts, same state."""
    tracker = RiskTracker({"*": RiskPolicy()})
    nan = {"layer_nonfinite": [0, 0, 1, 1], "layer_hidden_l2": pack_f32([1.0, 2.0, float("nan"), float("nan")])}
    # wandering tokens, then a loop of period 3 (the repetition flag fires mid-trace), a NaN step (CRITICAL) later
    recs = [step(i, **({} if i < 12 else {"token_id": 5 + i % 3}), **(nan if i == 30 else {})) for i in range(40)]
    done = completion(40)
    step_by_step = fold(tracker, [("completion", done, 0)] + [("step", r, i) for i, r in enumerate(recs)])

    state: Any = tracker.on_completion(None, done, 0, 0).state
    reports: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    duplicates = 0
    offsets = list(enumerate(recs))
    batches = [offsets[0:7], offsets[7:20], offsets[15:33], offsets[33:40], offsets[38:40]]  # two overlap: replays
    for batch in batches:
        out = tracker.on_steps(state, [(r, i) for i, r in batch], 0)
        state = json.loads(json.dumps(out.state))
        reports += out.reports
        alerts += out.alerts
        duplicates += out.duplicates
    assert (state, reports) == step_by_step
    assert duplicates == 5 + 2  # steps 15..19 and 38..39 were folded already
    assert [(r["stage"], r["flags"]) for r in reports] == [
        ("EARLY", ["repetition_loop"]),
        ("EARLY", ["nonfinite_hidden", "repetition_loop"]),
        ("FINAL", ["nonfinite_hidden", "repetition_loop"]),
    ]
    assert [a["severity"] for a in alerts] == ["WARNING", "CRITICAL", "CRITICAL"]
