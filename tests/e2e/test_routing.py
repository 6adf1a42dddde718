"""Issue 27 end to end, as a user runs it: two evostream deployments on two brokers. Deployment B (its own broker,
`evostream serve` and `evostream api`) serves the reference through its OpenAI-compatible endpoint; deployment A
governs a route (a routing policy reading a registered risk probe, level 3 proposed with its evidence and approved
by another actor, all through the CLI), serves it with `evostream serve --route default --reference <B>/v1`, and is
asked through its own `evostream api` by OpenAI's client library. Digits go to B before generation, a long answer
moves there mid-answer, a short one stays on A's model; every decision is on A's evo.routes, B's service really
generated the reference's answers, and `evostream provenance` tells a request's route."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.service import key_path, load_actor
from evostream.core.artifacts import ArtifactStore
from evostream.core.clock import now_us
from evostream.core.settings import Settings
from evostream.core.stack import LocalStack
from evostream.routing.policy import LevelGate, RoutePolicy
from evostream.schemas.catalog import COMPLETIONS, ROUTES
from evostream.views.governance import anchor_file, checkpoints_path
from evostream.wiring.governed import ensure_genesis
from evostream.wiring.risk import Trained, register_probe
from tests.api.conftest import free_port
from tests.conftest import stack_settings
from tests.producers.replies import read
from tests.producers.routes import MOVE_AFTER, digit_prompts, length_probe

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "evostream.cli"]
EVIDENCE = {
    "corpus": 4000,
    "accuracy": 0.9,
    "accuracy_lower": 0.88,
    "confidence": 0.95,
    "bound": 0.15,
    "self_share": 0.8,
    "certified": True,
}


def _started(cmd: list[str], env: dict[str, str], ready: str, timeout_s: float = 180) -> subprocess.Popen[str]:
    """A long-running command, once a line of its stderr says ``ready``."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline() if proc.stderr else ""
        if ready in line:  # the rest of its log is read, or a full pipe would block it
            threading.Thread(target=proc.stderr.read if proc.stderr else None, daemon=True).start()
            return proc
        if proc.poll() is not None:
            pytest.fail(f"{cmd[3]} exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
    proc.kill()
    pytest.fail(f"{' '.join(cmd[3:])} never said {ready!r}")


@contextmanager
def _running(cmd: list[str], env: dict[str, str], ready: str) -> Iterator[subprocess.Popen[str]]:
    proc = _started(cmd, env, ready)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _api(env: dict[str, str], bootstrap: str) -> tuple[list[str], str]:
    port = free_port()
    cmd = [*CLI, "api", "--bootstrap", bootstrap, "--port", str(port), "--trust-loopback"]
    return cmd, f"http://127.0.0.1:{port}"


def _healthy(url: str, timeout_s: float = 60) -> None:
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url + "/health", timeout=5)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:300]}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.3)
    pytest.fail(f"{url} never answered /health: {last}")


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def test_two_deployments_route_through_the_openai_wire_and_the_log_says_why(kafka: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    offline = {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with ExitStack() as stack:
        # deployment B: the reference, on a broker of its own
        b_stack = LocalStack(stack_settings(tmp_path / "broker-b"))
        b = b_stack.up().bootstrap
        stack.callback(b_stack.down)
        b_env = (
            os.environ
            | offline
            | {
                "EVOSTREAM_BOOTSTRAP_SERVERS": b,
                "EVOSTREAM_KAFKA_CREDENTIALS": str(b_stack.credentials_file),
                "EVOSTREAM_GOVERNANCE_DIR": str(tmp_path / "b-gov"),
                "EVOSTREAM_GOVERNANCE_TOPIC": f"test-e2e-b-{run}",
            }
        )
        _cli(b_env, "governance", "init")  # a deployment's first step (`make run` does it too)
        stack.enter_context(_running([*CLI, "serve", "--max-wait-ms", "5"], b_env, "serving"))
        b_api, b_url = _api(b_env, b)
        stack.enter_context(_running(b_api, b_env, "Uvicorn running"))
        _healthy(b_url)

        # deployment A: a governed route to B
        settings = Settings(
            bootstrap_servers=kafka,
            governance_topic=f"test-e2e-a-{run}",
            governance_dir=tmp_path / "a-gov",
            artifacts_dir=tmp_path / "a-art",
        )
        a_env = (
            os.environ
            | offline
            | {
                "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
                "EVOSTREAM_GOVERNANCE_TOPIC": settings.governance_topic,
                "EVOSTREAM_GOVERNANCE_DIR": str(settings.governance_dir),
                "EVOSTREAM_ARTIFACTS_DIR": str(settings.artifacts_dir),
            }
        )
        served = ensure_genesis(settings, kafka, lambda _: None)  # admin, policy, the embedded model in production
        keys = settings.governance_dir / "keys"
        log = GovernanceLog(kafka, topic=settings.governance_topic)
        stack.callback(log.close)
        admin = load_actor(log, keys, "admin", checkpoints=checkpoints_path(settings), anchor=anchor_file(settings))
        for name, roles in (("ops", ["proposer"]), ("alice", ["approver"])):
            key = ActorKey.generate()
            key.save(key_path(keys, name))
            admin.enroll(name, key.public_hex, key.key_id, roles)
        store = ArtifactStore(settings.artifacts_dir)
        probe = length_probe(3)  # the embedded model's three decoder layers: long answers are risky
        probe_version = register_probe(admin, store, Trained(probe, {"held_out_auroc": 1.0}, True, {}))
        probe_sha = admin.state().registry.version(f"risk/{probe.family}", probe_version)["artifact_sha256"]
        gate = LevelGate(3, 0.8, prompt_gate=0.5, token_gate=0.5, evidence=EVIDENCE)
        (tmp_path / "policy.json").write_bytes(
            RoutePolicy("default", digit_prompts(384), probe_sha, (gate,), {"self_versions": [served]}).to_bytes()
        )
        _cli(
            a_env, "route", "register", "--name", "default", "--policy", str(tmp_path / "policy.json"), "--actor", "ops"
        )
        _cli(a_env, "route", "level", "propose", "--route", "default", "--level", "3", "--actor", "ops")
        _cli(a_env, "route", "level", "approve", "--route", "default", "--level", "3", "--actor", "alice")

        since = now_us()
        serve = [*CLI, "serve", "--max-wait-ms", "50", "--route", "default", "--reference", f"{b_url}/v1#evostream"]
        stack.enter_context(_running(serve, a_env, "routing 'default' to external:evostream at level 3"))
        a_api, a_url = _api(a_env, kafka)
        stack.enter_context(_running(a_api, a_env, "Uvicorn running"))
        _healthy(a_url)

        oa = openai.OpenAI(base_url=a_url + "/v1", api_key="sk-local", max_retries=0, timeout=120)
        answers = {
            prompt: oa.chat.completions.create(
                model="evostream", messages=[{"role": "user", "content": prompt}], max_tokens=32, temperature=0
            )
            for prompt in ("upper: ab", "add: 12+34", "reverse: abcdefghijkl")
        }
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in oa.chat.completions.create(
                model="evostream",
                messages=[{"role": "user", "content": "add: 5+6"}],
                max_tokens=32,
                temperature=0,
                stream=True,
            )
            if chunk.choices
        )
        # B's own service generated the reference's answers (its traces, on its broker, as B's API shows them)
        wanted = {"46", answers["reverse: abcdefghijkl"].choices[0].message.content or ""}
        deadline, b_answers = time.monotonic() + 30, set[str]()
        while not wanted <= b_answers and time.monotonic() < deadline:
            time.sleep(0.5)
            b_traces = httpx.get(b_url + "/traces", params={"last": 50}, timeout=10).json()
            b_answers = {
                t["answer"] for t in b_traces if t["model_version"] and not t["model_version"].startswith("ext")
            }

    short, digits, long = answers.values()
    assert short.model != "external:evostream" and short.choices[0].message.content == "AB"
    assert (digits.model, digits.choices[0].message.content) == ("external:evostream", "46")
    assert long.model == "external:evostream"
    assert streamed == "11"
    assert wanted <= b_answers, (wanted, b_answers)

    ids = {a.id.split("-", 1)[1]: p for p, a in answers.items()}
    decisions = read(kafka, ROUTES, "RouteDecision", set(ids), since, 4)
    seen = sorted((ids[d["request_id"]], d["stage"], d["chosen"]) for d in decisions)
    assert seen == sorted(
        [
            ("upper: ab", "PROMPT", "self"),
            ("add: 12+34", "PROMPT", "reference"),
            ("reverse: abcdefghijkl", "PROMPT", "self"),
            ("reverse: abcdefghijkl", "GENERATION", "reference"),
        ]
    )
    assert all(d["level"] == 3 and d["policy_version"] for d in decisions)
    long_rid = long.id.split("-", 1)[1]
    done = read(kafka, COMPLETIONS, "Completion", {long_rid}, since, 2)
    partial = next(c for c in done if c["finish_reason"] == "ESCALATED")
    final = next(c for c in done if c["finish_reason"] != "ESCALATED")
    assert partial["token_count"] == MOVE_AFTER + 1 and final["model_version"] == "external:evostream"

    out = _cli(a_env, "provenance", final["trace_id"])
    assert f"trace {partial['trace_id']}" in out and "(partial: escalated)" in out, out
    assert "GENERATION at step" in out and "reference (external:evostream)" in out, out
    assert "external:evostream is not a governed version" in out, out
    assert np.isfinite(final["cost_usd"])
