"""The fold the CLI and the HTTP API read from: traces gathered by id, bounded memory, alerts by severity, the latest
drift windows and profiles, the last minute's rates."""

from __future__ import annotations

from typing import Any

from evostream.schemas.catalog import ALERTS, COMPLETIONS, DRIFT, PROFILES, RISK, STEPS
from evostream.views.recent import Recent


def step(trace: str, i: int, text: str) -> dict[str, Any]:
    return {
        "trace_id": trace,
        "request_id": f"r-{trace}",
        "model_version": "m@1",
        "step": i,
        "token_text": text,
        "layer_hidden_l2": b"\x00\x00\x80\x3f",
    }


def test_a_trace_gathers_its_steps_in_order_once_with_its_completion_and_latest_risk() -> None:
    r = Recent()
    for i, t in [(2, "c"), (0, "a"), (1, "b"), (1, "b")]:  # out of order, and one delivered twice
        r.add(STEPS, step("t1", i, t))
    r.add(RISK, {"trace_id": "t1", "stage": "EARLY", "score": 0.2})
    r.add(RISK, {"trace_id": "t1", "stage": "FINAL", "score": 0.7})
    done = {
        "trace_id": "t1",
        "request_id": "r-t1",
        "model_version": "m@1",
        "output_text": "abc",
        "token_count": 3,
        "finish_reason": "STOP",
        "completed_at_us": 10,
        "prompt_embedding": [0.1],
    }
    r.add(COMPLETIONS, done)
    doc = r.trace("t1").doc()  # type: ignore[union-attr]
    assert [s["token_text"] for s in doc["steps"]] == ["a", "b", "c"]
    assert all("layer_hidden_l2" not in s for s in doc["steps"])  # packed bytes stay out of JSON
    assert doc["risk"]["score"] == 0.7 and doc["completion"]["output_text"] == "abc"
    assert "prompt_embedding" not in doc["completion"]
    assert r.traces(5)[0].summary() == {
        "trace_id": "t1",
        "request_id": "r-t1",
        "model_version": "m@1",
        "steps": 3,
        "answer": "abc",
        "finish_reason": "STOP",
        "role": "ANSWER",
        "risk_score": 0.7,
        "risk_stage": "FINAL",
        "alerts": 0,
    }
    assert r.seen == {STEPS: 4, RISK: 2, COMPLETIONS: 1}


def test_memory_is_bounded_oldest_traces_leave_first() -> None:
    r = Recent(max_traces=3, max_records=2)
    for n in range(5):
        r.add(STEPS, step(f"t{n}", 0, "x"))
    assert [t.trace_id for t in r.traces(10)] == ["t4", "t3", "t2"]
    assert r.trace("t0") is None
    for n in range(4):
        r.add(DRIFT, {"model_version": "m@1", "window_end_us": n})
    assert [w["window_end_us"] for w in r.drift(10)] == [2, 3]


def test_alerts_by_severity_and_model_drift_and_profiles_per_version_and_the_last_minutes_rates() -> None:
    r = Recent()
    r.add(STEPS, step("t3", 0, "x"))  # a trace kept: its alerts attach to it; the others' make no empty trace
    for sev, model, at in [("INFO", "a", 1), ("WARNING", "a", 2), ("CRITICAL", "b", 3), ("WARNING", "b", 4)]:
        r.add(ALERTS, {"trace_id": f"t{at}", "severity": sev, "model_version": model, "produced_at_us": at * 10**6})
    assert [a["trace_id"] for a in r.alerts(10, "WARNING")] == ["t2", "t3", "t4"]
    assert [a["trace_id"] for a in r.alerts(10, "WARNING", model="b")] == ["t3", "t4"]
    assert [a["trace_id"] for a in r.alerts(1)] == ["t4"]
    assert r.trace("t3").alerts[0]["severity"] == "CRITICAL"  # type: ignore[union-attr]
    assert r.trace("t2") is None and [t.trace_id for t in r.traces(10)] == ["t3"]
    r.add(RISK, {"trace_id": "gone", "stage": "FINAL", "score": 0.5})
    assert r.trace("gone") is None
    for v, n in [("a", 1), ("b", 1), ("a", 2)]:
        r.add(PROFILES, {"model_version": v, "n": n})
    assert [(p["model_version"], p["n"]) for p in r.profiles()] == [("a", 2), ("b", 1)]
    for t, tokens in [(60, 5), (100, 7), (119, 3)]:  # seconds; the first is more than a minute before 121
        r.add(
            COMPLETIONS,
            {"trace_id": f"c{t}", "completed_at_us": t * 10**6, "token_count": tokens, "model_version": "a"},
        )
    o = r.overview(now_us=121 * 10**6, window_s=60)
    assert o["requests_per_s"] == 2 / 60 and o["tokens_per_s"] == 10 / 60 and o["versions_answering"] == {"a": 2}
    assert o["alerts_per_min"] == 0.0  # the alerts above were at 1..4 s


def test_a_shadow_answer_is_a_trace_of_its_own_and_no_answer_in_the_overview() -> None:
    r = Recent()
    base = {"request_id": "r1", "completed_at_us": 100 * 10**6, "token_count": 4, "finish_reason": "STOP"}
    r.add(COMPLETIONS, dict(base, trace_id="answer", model_version="m@prod", output_text="x", role="ANSWER"))
    r.add(COMPLETIONS, dict(base, trace_id="shadow", model_version="m@cand", output_text="y", role="SHADOW"))
    assert [t.summary()["role"] for t in r.traces()] == ["SHADOW", "ANSWER"]
    o = r.overview(now_us=101 * 10**6, window_s=60)
    assert o["requests_per_s"] == 1 / 60 and o["versions_answering"] == {"m@prod": 1}
