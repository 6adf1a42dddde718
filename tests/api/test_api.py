"""The HTTP API over real HTTP, against the governed deployment on the real broker (tests/api/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from evostream.core.bus.producer import EventProducer
from evostream.core.clock import now_us
from evostream.schemas.catalog import ALERTS
from evostream.schemas.codec import RecordCodec
from tests.api.conftest import Deployment

pytestmark = pytest.mark.integration


def get(d: Deployment, path: str, **params: Any) -> httpx.Response:
    return httpx.get(d.url + path, params=params, timeout=60)


def post(d: Deployment, path: str, body: Any, token: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(d.url + path, json=body, headers=headers, timeout=120, **kw)


def infer(d: Deployment, prompt: str, **kw: Any) -> dict[str, Any]:
    r = post(d, "/infer", {"prompt": prompt, "max_new_tokens": 16, "risk_wait_s": 20, **kw})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_health_names_the_broker_the_active_version_and_the_lags(deployment: Deployment) -> None:
    infer(deployment, "upper: abc")  # the serving group has committed something
    r = get(deployment, "/health")
    assert r.status_code == 200, r.text
    h = r.json()
    assert h["status"] == "ok" and h["broker"]["reachable"] is True, h
    assert h["active_versions"][deployment.model] == deployment.v2
    lags = h["consumer_lags"]
    assert set(lags) >= {"evostream-inference", deployment.settings.processors_app_id}
    assert "evo.requests" in lags["evostream-inference"] and lags["evostream-inference"]["evo.requests"] >= 0


def test_infer_answers_with_its_trace_version_and_risk_and_the_trace_holds_every_step(deployment: Deployment) -> None:
    out = infer(deployment, "reverse: hello")
    assert out["error"] is None and out["model_version"] == deployment.v2
    assert out["answer"] and out["token_count"] >= 1
    assert out["risk"] is not None and out["risk"]["stage"] == "FINAL" and 0.0 <= out["risk"]["score"] <= 1.0
    trace = get(deployment, f"/traces/{out['trace_id']}").json()
    assert [s["step"] for s in trace["steps"]] == list(range(out["token_count"]))
    assert "".join(s["token_text"] for s in trace["steps"]).strip() != ""
    assert trace["completion"]["output_text"] == out["answer"]
    assert trace["risk"]["score"] == out["risk"]["score"]
    listed = get(deployment, "/traces", last=50).json()
    assert out["trace_id"] in [t["trace_id"] for t in listed]
    prov = get(deployment, f"/provenance/{out['trace_id']}").json()
    assert prov["model_version"] == deployment.v2
    assert prov["version"]["lineage"] == [deployment.v2, deployment.v1]
    assert [e["type"] for e in prov["events"]][:1] == ["ModelRegistered"]


def test_registry_version_and_audit(deployment: Deployment) -> None:
    reg = get(deployment, "/registry").json()
    m = reg["models"][deployment.model]
    assert m["production"] == deployment.v2 and set(m["versions"]) == {deployment.v1, deployment.v2}
    assert m["versions"][deployment.v2]["lineage"] == [deployment.v2, deployment.v1]
    assert reg["findings"] == []
    one = get(deployment, f"/registry/{deployment.v1}").json()
    assert one["model_name"] == deployment.model and one["metrics"]["parameters"] == deployment.parameters
    audit = get(deployment, "/governance/audit", actor="alice").json()
    assert [e["type"] for e in audit["events"]] == ["ApprovalGranted", "ApprovalGranted"]
    assert all(e["actor"] == "alice" for e in audit["events"])


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/traces/no-such-trace", "no trace 'no-such-trace'"),
        ("/registry/nope@1", "no model has a version 'nope@1'"),
        ("/provenance/no-such-trace", "no completion of trace"),
    ],
)
def test_unknown_things_are_404_with_a_clear_message(deployment: Deployment, path: str, needle: str) -> None:
    r = get(deployment, path)
    assert r.status_code == 404 and needle in r.json()["detail"], r.text


def test_bad_input_is_4xx_with_a_clear_message(deployment: Deployment) -> None:
    r = post(deployment, "/infer", {"prompt": "x" * 5000})
    assert r.status_code == 422 and "at most 4000 characters" in r.text
    r = post(deployment, "/infer", {"prompt": ""})
    assert r.status_code == 422 and "at least 1 character" in r.text
    r = httpx.post(
        deployment.url + "/infer",
        content=b"{" + b" " * 70_000 + b"}",
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and "limit is 65,536" in r.json()["detail"]

    def chunks() -> Any:  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b" " * 8192

    r = httpx.post(
        deployment.url + "/infer", content=chunks(), timeout=30, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    r = get(deployment, "/alerts", min_severity="LOUD")
    assert r.status_code == 422


def test_writes_need_a_valid_actor_key_and_the_right_role(deployment: Deployment) -> None:
    body = {"model": deployment.model, "to": "previous", "reason": "test"}
    r = post(deployment, "/governance/rollback", body)
    assert r.status_code == 401 and "needs an actor key" in r.json()["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = post(deployment, "/governance/rollback", body, token="admin." + "0" * 128)
    assert r.status_code == 401 and "does not match any current key" in r.json()["detail"]
    r = post(deployment, "/governance/rollback", body, token="garbage")
    assert r.status_code == 401 and "malformed token" in r.json()["detail"]
    r = post(deployment, "/governance/rollback", body, token=deployment.alice_token)  # an approver, not an admin
    assert r.status_code == 403, r.text
    for resp in (r,):
        assert deployment.alice_token.split(".")[1] not in resp.text  # a key is never repeated back
    assert get(deployment, "/registry").json()["models"][deployment.model]["production"] == deployment.v2


def test_approve_with_an_approvers_key(deployment: Deployment) -> None:
    r = post(
        deployment,
        "/governance/approve",
        {"model": deployment.model, "version": deployment.v1, "stage": "staging", "reason": "api test"},
        token=deployment.alice_token,
    )
    assert r.status_code == 200, r.text
    assert r.json()["actor"] == "alice" and r.json()["event"] == "ApprovalGranted"


def test_alerts_arrive_on_the_server_sent_event_stream_and_in_the_recent_list(deployment: Deployment) -> None:
    trace = f"sse-{uuid.uuid4().hex}"
    got: list[dict[str, Any]] = []
    connected = threading.Event()

    def listen() -> None:
        with httpx.stream(
            "GET", deployment.url + "/alerts/stream", params={"min_severity": "WARNING"}, timeout=60
        ) as r:
            event = None
            for line in r.iter_lines():
                connected.set()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "alert":
                    rec = json.loads(line[6:])
                    if rec["trace_id"] in (trace, f"{trace}-info"):
                        got.append(rec)
                    if rec["trace_id"] == trace:  # sent after the INFO one: had that come, it is in `got`
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(30)
    assert get(deployment, "/health").json()["live"]["streams"] >= 1  # counted against the cap of open streams
    alert = {
        "trace_id": trace,
        "request_id": "r",
        "model_version": deployment.v2,
        "severity": "CRITICAL",
        "stage": "EARLY",
        "score": 0.97,
        "flags": ["nonfinite_hidden"],
        "blamed_layers": [1],
        "reason": "test alert",
        "policy": "test",
        "produced_at_us": now_us(),
    }
    info = dict(alert, trace_id=f"{trace}-info", severity="INFO")
    producer = EventProducer(deployment.settings.bootstrap_servers)
    codec = RecordCodec("RiskAlert")
    producer.send(ALERTS, info["trace_id"], codec.encode(info))  # below the stream's floor: not pushed
    producer.send(ALERTS, trace, codec.encode(alert))
    producer.flush(10)
    listener.join(30)
    assert [(a["trace_id"], a["severity"], a["flags"]) for a in got] == [(trace, "CRITICAL", ["nonfinite_hidden"])]
    deadline = time.monotonic() + 10
    while trace not in [a["trace_id"] for a in get(deployment, "/alerts", last=1000).json()]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    crit = [a["trace_id"] for a in get(deployment, "/alerts", last=1000, min_severity="CRITICAL").json()]
    assert trace in crit and f"{trace}-info" not in crit


def test_a_rollback_through_the_api_changes_which_model_serves(deployment: Deployment) -> None:
    before = infer(deployment, "sort: dcba")
    assert before["model_version"] == deployment.v2
    try:
        body = {"model": deployment.model, "to": "previous", "reason": "api test"}
        r = post(deployment, "/governance/rollback", body, token=deployment.admin_token)
        assert r.status_code == 200, r.text
        assert (r.json()["from_version"], r.json()["version"]) == (deployment.v2, deployment.v1)
        assert get(deployment, "/health").json()["active_versions"][deployment.model] == deployment.v1
        deployment.wait_serving(deployment.v1)
        after = infer(deployment, "sort: dcba")
        assert after["model_version"] == deployment.v1  # another model answers now
    finally:
        deployment.restore()


def test_evolve_needs_an_admin_and_runs_one_cycle_that_registers_a_smaller_candidate(deployment: Deployment) -> None:
    body = {"model": deployment.model, "recipes": ["ffn=0.99"], "steps": 0, "held_out": 4, "reps": 1}
    assert post(deployment, "/evolve", body).status_code == 401
    r = post(deployment, "/evolve", body, token=deployment.alice_token)
    assert r.status_code == 403 and "is not an admin" in r.json()["detail"]
    r = post(deployment, "/evolve", body, token=deployment.admin_token)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "running" and job["actor"] == "admin"
    again = post(deployment, "/evolve", body, token=deployment.admin_token)
    assert again.status_code == 409 and job["job_id"] in again.json()["detail"]
    deadline = time.monotonic() + 600
    while (job := get(deployment, f"/evolve/{job['job_id']}").json())["state"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(1)
    assert job["state"] == "done", job
    assert job["version"] and len(job["candidates"]) == 1 and job["candidates"][0].startswith("ffn0.99:")
    shown = get(deployment, f"/registry/{job['version']}").json()
    assert (shown["parent"], shown["operator"]) == (deployment.v2, "evolve")
    assert shown["operator_params"]["trigger"] == f"api:admin:{job['job_id']}"
    assert 0 < shown["metrics"]["parameters"] < deployment.parameters  # really smaller: FFN neurons removed
    assert get(deployment, "/evolve/nope").status_code == 404


def test_the_api_token_command_prints_the_key_the_api_accepts(deployment: Deployment) -> None:
    env = {**os.environ, "EVOSTREAM_GOVERNANCE_DIR": str(deployment.settings.governance_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "evostream.cli", "governance", "api-token", "--actor", "alice"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == deployment.alice_token


def test_a_host_header_other_than_this_machines_is_refused(deployment: Deployment) -> None:
    assert httpx.get(deployment.url + "/health", headers={"Host": "rebinding.example"}, timeout=30).status_code == 400
    assert get(deployment, "/health").status_code == 200


def test_profiles_show_token_paths_as_the_versions_text(deployment: Deployment) -> None:
    deadline = time.monotonic() + 90
    paths: list[dict[str, Any]] = []
    while not paths:  # a window with a repeated n-gram: the same answer several times
        assert time.monotonic() < deadline, "no profile of the served version with token paths"
        for _ in range(3):
            infer(deployment, "reverse: profile", risk_wait_s=0)
        time.sleep(2.5)  # the processors' profile window here is 2 s
        profiles = get(deployment, "/profiles", model=deployment.v2).json()
        paths = profiles[0]["top_token_paths"] if profiles else []
    assert all(len(p["pieces"]) == len(p["token_ids"]) for p in paths)
    assert not any(piece.startswith("#") for p in paths for piece in p["pieces"])  # the tokenizer was found
    assert all(p["text"] == '"' + "·".join(p["pieces"]) + '"' for p in paths)


def test_overview_counts_the_last_minutes_answers(deployment: Deployment) -> None:
    infer(deployment, "upper: overview")
    o = get(deployment, "/overview").json()
    assert o["requests_per_s"] > 0 and o["tokens_per_s"] > 0
    assert deployment.v2 in o["versions_answering"]
