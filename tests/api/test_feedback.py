"""``POST /feedback`` over real HTTP: a label on evo.outcomes, once per retry, refused when it is not one."""

from __future__ import annotations

import uuid

import httpx

from evostream.stream_processors.risk.outcomes import OutcomeBook
from evostream.views.outcomes import read_outcomes
from tests.api.conftest import Deployment
from tests.api.test_api import infer, post


def outcomes_of(kafka: str, trace_id: str) -> OutcomeBook:
    return read_outcomes(kafka, lambda rec: rec["trace_id"] == trace_id, timeout_s=60)


def test_a_label_given_twice_with_one_key_is_recorded_once(kafka: str, deployment: Deployment) -> None:
    answered = infer(deployment, "reverse: feedback")
    trace = answered["trace_id"]
    key = uuid.uuid4().hex
    body = {"trace_id": trace, "label": "WRONG", "note": "not reversed"}
    headers = {"Authorization": f"Bearer {deployment.alice_token}", "Idempotency-Key": key}
    first = httpx.post(deployment.url + "/feedback", json=body, headers=headers, timeout=60)
    again = httpx.post(deployment.url + "/feedback", json=body, headers=headers, timeout=60)
    assert first.status_code == again.status_code == 200, first.text
    got = first.json()
    assert got["outcome_id"] == key and got["actor"] == "alice" and got["score"] == 0.0
    assert got["model_version"] == answered["model_version"]
    changed = post(deployment, "/feedback", {**body, "label": "RIGHT"}, token=deployment.alice_token)
    assert changed.status_code == 200
    book = outcomes_of(kafka, trace)
    assert book.retries == 1
    assert [(s.actor, s.label) for s in book.labels(trace)] == [("alice", "RIGHT")]  # her latest label stands


def test_feedback_needs_a_key_a_known_trace_and_a_label_in_the_set(deployment: Deployment) -> None:
    trace = infer(deployment, "upper: feedback")["trace_id"]
    body = {"trace_id": trace, "label": "WRONG"}
    assert httpx.post(deployment.url + "/feedback", json=body, timeout=30).status_code == 401
    for bad in ({**body, "label": "MAYBE"}, {**body, "label": "GRADED"}, {**body, "label": "RIGHT", "score": 0.2}):
        r = post(deployment, "/feedback", bad, token=deployment.alice_token)
        assert r.status_code == 422, (bad, r.text)
    r = post(deployment, "/feedback", {**body, "trace_id": "no-such-trace"}, token=deployment.alice_token)
    assert r.status_code == 404 and "no trace no-such-trace" in r.json()["detail"]
