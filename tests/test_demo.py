"""The main job as `make run` runs it: `evostream demo` against the real broker, with the stream processors."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "evostream.cli"]  # the CLI of the checkout under test, not the one on PATH

pytestmark = pytest.mark.integration


def test_demo_answers_every_task_with_its_step_events_and_risk(kafka: str, tmp_path: Path) -> None:
    env = {**os.environ, "EVOSTREAM_PROCESSORS_DIR": str(tmp_path),
           "EVOSTREAM_PROCESSORS_APP_ID": f"test-demo-{uuid.uuid4().hex[:8]}", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    run = subprocess.run([*CLI, "demo", "--bootstrap", kafka], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith(("ok ", "BAD"))]
    assert len(lines) == 6
    assert all(line.startswith("ok ") for line in lines), run.stdout
    assert all("· risk " in line and "not reported" not in line for line in lines), run.stdout
    assert "6/6 tasks answered right; every token has its GenerationStep on evo.steps" in run.stdout
