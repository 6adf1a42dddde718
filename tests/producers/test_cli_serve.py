"""`evostream serve` and `evostream publish --wait` as a user runs them, against the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from evostream.producers.client import InferenceClient

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
