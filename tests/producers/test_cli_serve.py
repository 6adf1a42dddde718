"""`evostream serve` and `evostream publish --wait` as a user runs them, against the real broker."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evostream.core.clock import now_us
from evostream.producers.client import InferenceClient
from evostream.routing.policy import RoutePolicy
from evostream.schemas.catalog import ROUTES
from tests.producers.openai_server import openai_server
from tests.producers.replies import read

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
        ([*route[:2], "--reference", "http://gpu:8000/v1"], "--route-policy FILE --route-level N"),
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
    answers, the answer is priced, and the decision is on evo.routes."""
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
            assert "routing 'default' to external:big-model at level 0" in line
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
    assert decision["policy_version"] == hashlib.sha256(policy.read_bytes()).hexdigest()
