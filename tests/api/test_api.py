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
from evostream.schemas.fingerprints import default_index
from evostream.views.governance import GovernanceView, finding_doc, registry_doc, version_doc
from tests.api.conftest import TASK_ACCURACY, Deployment

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


def test_health_names_each_service_by_its_consumer_groups_members(deployment: Deployment) -> None:
    h = get(deployment, "/health").json()
    parts = h["components"]
    assert parts["processors"]["group"] == deployment.settings.processors_app_id
    assert parts["inference"]["group"] == "evostream-inference"
    for name in ("processors", "inference"):  # both run in the deployment
        assert parts[name]["members"] >= 1 and parts[name]["running"] is True and parts[name]["notice"] is None, h
    assert parts["evolution"]["running"] is False and parts["evolution"]["notice"] is None  # optional: not warned of
    assert h["notices"] == []


def test_health_says_the_stream_processors_are_not_running_when_their_group_is_empty(unprocessed: str) -> None:
    r = httpx.get(unprocessed + "/health", timeout=60)
    assert r.status_code == 200, r.text
    h = r.json()
    assert h["status"] == "ok", h  # the API itself works: what is missing is said, not a failure of the API
    processors = h["components"]["processors"]
    assert (processors["members"], processors["running"]) == (0, False)
    assert h["components"]["inference"]["running"] is True
    assert h["notices"] == [processors["notice"]]
    assert "the stream processors are not running (evostream process)" in processors["notice"]


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
    assert one["metrics"]["task_accuracy"] == TASK_ACCURACY  # nested metrics pass as they were registered
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
    assert r.status_code == 401 and "old form" in r.json()["detail"]
    forged = deployment.alice_token.split(".", 1)[1].rsplit(".", 1)[0]  # this log, a valid expiry, no signature
    r = post(deployment, "/governance/rollback", body, token=f"admin.{forged}." + "0" * 128)
    assert r.status_code == 401 and "does not match the current key" in r.json()["detail"]
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
    s = deployment.settings
    env = {
        **os.environ,
        "EVOSTREAM_GOVERNANCE_DIR": str(s.governance_dir),
        "EVOSTREAM_GOVERNANCE_TOPIC": s.governance_topic,
        "EVOSTREAM_BOOTSTRAP_SERVERS": str(s.bootstrap_servers),
    }
    done = subprocess.run(
        [sys.executable, "-m", "evostream.cli", "governance", "api-token", "--actor", "alice", "--ttl-days", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    actor, log, exp, _ = token.rsplit(".", 3)
    assert (actor, log) == ("alice", deployment.alice_token.split(".")[1])
    assert 0 < int(exp) - time.time() <= 86400
    # the approver's key is accepted, and its role decides: an approver may not roll back (403, not 401)
    body = {"model": deployment.model, "to": deployment.v1, "reason": "x"}
    r = post(deployment, "/governance/rollback", body, token=token)
    assert r.status_code == 403, r.text


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


def test_the_answers_hold_everything_the_views_give(kafka: str, deployment: Deployment) -> None:
    """The response models leave nothing out: the registry and a version are the views' documents as they are, and a
    trace's records have every field of the contract but the packed bytes."""
    view = GovernanceView(kafka, deployment.settings).replayed()
    expected = {**registry_doc(view.registry), "findings": [finding_doc(f) for f in view.findings]}
    assert get(deployment, "/registry").json() == json.loads(json.dumps(expected))
    one = get(deployment, f"/registry/{deployment.v2}").json()
    assert one == json.loads(json.dumps(version_doc(view.registry, deployment.v2)))
    out = infer(deployment, "copy: fields")
    trace = get(deployment, f"/traces/{out['trace_id']}").json()

    def fields(record: str) -> set[str]:
        return {f["name"] for f in default_index().latest(record).parsed["fields"] if f["type"] != "bytes"}

    assert set(trace["steps"][0]) == fields("GenerationStep")
    assert set(trace["completion"]) == fields("Completion") - {"prompt_embedding"}
    assert set(trace["risk"]) == set(out["risk"]) == fields("RiskReport")


def test_every_operation_documents_the_shape_of_its_answer(deployment: Deployment) -> None:
    schema = get(deployment, "/openapi.json").json()
    shapes = schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            ok = next(r for code, r in op["responses"].items() if code.startswith("2"))
            if path.endswith("stream"):
                assert "text/event-stream" in ok["content"], (method, path)
                continue
            shown = ok["content"]["application/json"]["schema"]
            ref = shown.get("$ref") or shown.get("items", {}).get("$ref")  # a model, or a list of one
            assert ref, (method, path, shown)
            assert shapes[ref.rsplit("/", 1)[-1]]["properties"], (method, path)
            refusals = {code for code in op["responses"] if code.startswith("4") and code != "422"}
            shape = "/OpenAIRefusal" if path.startswith("/v1/") else "/Refusal"  # OpenAI's shape under /v1/
            for code in refusals:  # a refusal's shape is documented too
                assert op["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith(shape)
            assert "401" in refusals, (method, path)  # each needs a key from elsewhere


def test_a_non_finite_number_is_answered_as_null(kafka: str, deployment: Deployment) -> None:
    trace = f"nan-{uuid.uuid4().hex}"
    alert = {
        "trace_id": trace,
        "request_id": "r",
        "model_version": deployment.v2,
        "severity": "WARNING",
        "stage": "FINAL",
        "score": float("nan"),
        "flags": ["nonfinite_hidden"],
        "blamed_layers": [],
        "reason": "test alert",
        "policy": "test",
        "produced_at_us": now_us(),
    }
    producer = EventProducer(kafka)
    producer.send(ALERTS, trace, RecordCodec("RiskAlert").encode(alert))
    producer.flush(10)
    deadline = time.monotonic() + 10
    while not (mine := [a for a in get(deployment, "/alerts", last=1000).json() if a["trace_id"] == trace]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert mine[0]["score"] is None and mine[0]["flags"] == ["nonfinite_hidden"]


def test_the_page_carries_its_icon_so_the_browser_asks_for_no_favicon(deployment: Deployment) -> None:
    page = get(deployment, "/").text
    assert '<link rel="icon" type="image/svg+xml" href="data:image/svg+xml,' in page  # inline: no file to ship
