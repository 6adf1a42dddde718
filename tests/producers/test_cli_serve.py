"""`evostream serve` and `evostream publish --wait` as a user runs them, against the real broker."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from evostream.core.artifacts import ArtifactStore
from evostream.core.clock import now_us
from evostream.core.settings import load_settings
from evostream.producers.client import InferenceClient
from evostream.routing.policy import LevelGate, RoutePolicy
from evostream.schemas.catalog import COMPLETIONS, ROUTES
from evostream.wiring.governed import default_version, ensure_genesis
from evostream.wiring.risk import ARTIFACT_FILE as PROBE_FILE
from tests.producers.openai_server import openai_server
from tests.producers.replies import read
from tests.producers.routes import digit_prompts, length_probe

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "evostream.cli"]


def test_publish_wait_returns_the_answer_with_its_trace_and_one_step_per_token(kafka: str) -> None:
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    serve = subprocess.Popen(
        [*CLI, "serve", "--bootstrap", kafka, "--max-wait-ms", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "serving" not in line and time.monotonic() < deadline:
            line = serve.stderr.readline() if serve.stderr else ""
            if serve.poll() is not None:
                pytest.fail(f"serve exited: {serve.stderr.read() if serve.stderr else ''}")
        done = subprocess.run(
            [*CLI, "publish", "reverse: hello", "--wait", "--bootstrap", kafka],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "olleh\n"
        info = done.stderr.split()
        trace = info[info.index("trace") + 1]
        tokens = int(info[info.index("tokens") - 1])
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(60)
    assert code == 0, "serve must shut down gracefully on SIGTERM"

    steps = InferenceClient(kafka).trace_steps({trace}, tokens)
    assert sorted(s["step"] for s in steps) == list(range(tokens))
    assert "".join(s["token_text"] for s in sorted(steps, key=lambda s: s["step"])).startswith("olleh")


def test_publish_refuses_an_empty_prompt_with_a_clear_error(kafka: str) -> None:
    done = subprocess.run(
        [*CLI, "publish", "", "--wait", "--bootstrap", kafka], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1
    assert done.stderr == "error: the prompt is empty: there is nothing to answer\n"
    assert done.stdout == ""


def test_serve_refuses_bad_route_flags_with_the_reason(kafka: str, tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_bytes(RoutePolicy("default", None, "", ()).to_bytes())
    route = ["--route", "default", "--route-policy", str(policy), "--route-level", "0"]
    for flags, why in [
        ([*route, "--reference", "governed:"], "names no version"),
        ([*route, "--reference", "ftp://host/v1"], "neither governed"),
        ([*route[:4], "--reference", "http://gpu:8000/v1"], "give both --route-policy FILE --route-level N"),
        ([*route[:2], "--reference", "http://127.0.0.1:9/v1"], "did not list its models"),
        (["--reference", "http://gpu:8000/v1"], "need --route NAME"),
        ([*route, "--reference", "http://gpu:8000/v1", "--batching", "continuous"], "batches statically"),
    ]:
        done = subprocess.run(
            [*CLI, "serve", "--bootstrap", kafka, *flags], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode != 0, flags
        assert why in " ".join(done.stderr.replace("│", " ").split()), (flags, done.stderr)


def test_a_routed_serve_answers_through_an_http_reference(kafka: str, tmp_path: Path) -> None:
    """`evostream serve --route ... --reference http://.../v1#model` at level 0 of a fixed policy: the reference
    answers, the answer is priced, and the decision is on evo.routes, its policy version saying it is ungoverned."""
    policy = tmp_path / "policy.json"
    policy.write_bytes(RoutePolicy("default", None, "", ()).to_bytes())
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"external:*": {"prompt_per_1k": 1.0, "output_per_1k": 2.0}}))
    env = os.environ | {"HF_HUB_OFFLINE": "1", "EVOSTREAM_ROUTE_PRICES": str(prices)}
    since = now_us()
    with openai_server() as (url, backend):
        reference = ["--reference", f"{url}#big-model", "--route-policy", str(policy), "--route-level", "0"]
        serve = subprocess.Popen(
            [*CLI, "serve", "--bootstrap", kafka, "--max-wait-ms", "1", "--route", "default", *reference],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = ""
            deadline = time.monotonic() + 120
            while "serving" not in line and time.monotonic() < deadline:
                line = serve.stderr.readline() if serve.stderr else ""
                if serve.poll() is not None:
                    pytest.fail(f"serve exited: {serve.stderr.read() if serve.stderr else ''}")
            assert "routing 'default' to external:big-model at level 0 of a fixed policy (ungoverned: file:" in line
            with InferenceClient(kafka) as client:
                reply = client.infer("upper: ab", timeout_s=120, max_new_tokens=8)
        finally:
            serve.send_signal(signal.SIGTERM)
            code = serve.wait(60)
    assert code == 0, "serve must shut down gracefully on SIGTERM"
    assert (reply["model_version"], reply["output_text"]) == ("external:big-model", backend.text)
    assert reply["cost_usd"] == pytest.approx((7 * 1.0 + 5 * 2.0) / 1000)
    assert backend.bodies[-1]["model"] == "big-model" and backend.bodies[-1]["max_tokens"] == 8
    (decision,) = read(kafka, ROUTES, "RouteDecision", {reply["request_id"]}, since, 1)
    assert (decision["chosen"], decision["level"]) == ("reference", 0)
    # made by an ungoverned fixed policy, and the decision says so
    assert decision["policy_version"] == "file:" + hashlib.sha256(policy.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def governed_home(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A governance log of its own with the embedded model registered and in production (the genesis)."""
    root = tmp_path_factory.mktemp("route-governed")
    env = {
        "EVOSTREAM_GOVERNANCE_DIR": str(root / "gov"),
        "EVOSTREAM_GOVERNANCE_TOPIC": f"test-route-{uuid.uuid4().hex[:8]}",
        "EVOSTREAM_ARTIFACTS_DIR": str(root / "artifacts"),
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
        "HF_HUB_OFFLINE": "1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ensure_genesis(load_settings(), kafka, lambda _: None)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return env


def test_a_routed_serve_with_a_governed_reference_and_a_stored_probe(
    kafka: str, governed_home: dict[str, str], tmp_path: Path
) -> None:
    """The reference is a version from the governance log (the embedded model, loaded a second time from its stored
    artifact), the policy's risk probe comes from the artifact store: digits go to the reference before generation,
    a long answer moves there at its 6th token, a short one stays on the self model."""
    store = ArtifactStore(Path(governed_home["EVOSTREAM_ARTIFACTS_DIR"]))
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    (probe_dir / PROBE_FILE).write_bytes(length_probe(3).to_bytes())
    sha = store.put_dir(probe_dir).sha256
    policy = tmp_path / "policy.json"
    gate = LevelGate(3, 0.8, prompt_gate=0.5, token_gate=0.5)
    policy.write_bytes(RoutePolicy("default", digit_prompts(384), sha, (gate,)).to_bytes())
    version = default_version()
    fixed = ["--route-policy", str(policy), "--route-level", "3"]
    env = os.environ | governed_home
    since = now_us()
    serve = subprocess.Popen(
        [*CLI, "serve", "--max-wait-ms", "50", "--route", "default", "--reference", f"governed:{version}", *fixed],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = ""
        deadline = time.monotonic() + 180
        while "serving" not in line and time.monotonic() < deadline:
            line = serve.stderr.readline() if serve.stderr else ""
            if serve.poll() is not None:
                pytest.fail(f"serve exited: {serve.stderr.read() if serve.stderr else ''}")
        assert f"routing 'default' to {version} at level 3" in line
        with InferenceClient(kafka) as client:
            short, digits, long = client.infer_many(
                ["upper: ab", "add: 12+34", "reverse: abcdefghijkl"], timeout_s=120, max_new_tokens=32
            )
        bad = subprocess.run(
            [*CLI, "serve", "--route", "default", "--reference", "governed:nobody@000000000000", *fixed],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(60)
    assert code == 0
    assert bad.returncode == 1 and "no model in the governance log has a version 'nobody@000000000000'" in bad.stderr
    assert (short["output_text"], digits["output_text"]) == ("AB", "46")
    assert all(r["model_version"] == version and r["finish_reason"] == "STOP" for r in (short, digits, long))
    ids = {r["request_id"] for r in (short, digits, long)}
    decisions = read(kafka, ROUTES, "RouteDecision", ids, since, 4)
    seen = sorted((d["request_id"], d["stage"], d["chosen"]) for d in decisions)
    assert seen == sorted(
        [
            (short["request_id"], "PROMPT", "self"),
            (digits["request_id"], "PROMPT", "reference"),
            (long["request_id"], "PROMPT", "self"),
            (long["request_id"], "GENERATION", "reference"),
        ]
    )
    answers = read(kafka, COMPLETIONS, "Completion", {long["request_id"]}, since, 2)
    assert sorted(c["finish_reason"] for c in answers) == ["ESCALATED", "STOP"]


def test_a_route_the_governance_log_has_no_level_for_is_served_unrouted(
    kafka: str, governed_home: dict[str, str]
) -> None:
    """Without --route-policy, serve follows route/NAME in the governance log; with no level approved there is no
    routing yet: the ready line says so and the served model answers."""
    env = os.environ | governed_home
    with openai_server() as (url, backend):
        serve = subprocess.Popen(
            [*CLI, "serve", "--max-wait-ms", "1", "--route", "not-yet", "--reference", f"{url}#big-model"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = ""
            deadline = time.monotonic() + 180
            while "serving" not in line and time.monotonic() < deadline:
                line = serve.stderr.readline() if serve.stderr else ""
                if serve.poll() is not None:
                    pytest.fail(f"serve exited: {serve.stderr.read() if serve.stderr else ''}")
            assert "route 'not-yet' to external:big-model has no level approved yet" in line
            with InferenceClient(kafka) as client:
                reply = client.infer("upper: ab", timeout_s=120, max_new_tokens=8)
        finally:
            serve.send_signal(signal.SIGTERM)
            code = serve.wait(60)
    assert code == 0
    assert (reply["output_text"], backend.bodies) == ("AB", [])
