"""The main job as `make run` runs it: `evostream demo` against the real broker, with the stream processors."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from evostream.views.outcomes import read_outcomes

CLI = [sys.executable, "-m", "evostream.cli"]  # the CLI of the checkout under test, not the one on PATH

pytestmark = pytest.mark.integration


def test_demo_answers_every_task_with_its_step_events_and_risk(kafka: str, tmp_path: Path) -> None:
    """On an empty governance log (its own topic), the demo's genesis registers, validates, approves and promotes
    the embedded model, and the answers come from that governed version; the log then verifies."""
    run_id = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "EVOSTREAM_PROCESSORS_DIR": str(tmp_path / "processors"),
        "EVOSTREAM_PROCESSORS_APP_ID": f"test-demo-{run_id}",
        "HF_HUB_OFFLINE": "1",
        "EVOSTREAM_GOVERNANCE_DIR": str(tmp_path / "governance"),
        "EVOSTREAM_ARTIFACTS_DIR": str(tmp_path / "art"),
        "EVOSTREAM_GOVERNANCE_TOPIC": f"test-demo-governance-{run_id}",
    }
    run = subprocess.run([*CLI, "demo", "--bootstrap", kafka], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith(("ok ", "BAD"))]
    assert len(lines) == 6
    assert all(line.startswith("ok ") for line in lines), run.stdout
    assert all("· risk " in line and "not reported" not in line for line in lines), run.stdout
    assert "6/6 tasks answered right; every token has its GenerationStep on evo.steps" in run.stdout
    # the suite knew each answer: one SUITE label per trace on evo.outcomes
    traces = {line.split(" trace ")[1].split()[0] for line in lines}
    book = read_outcomes(kafka, lambda rec: rec["trace_id"] in traces, timeout_s=60)
    assert {t: [(s.source, s.label) for s in book.labels(t)] for t in traces} == {
        t: [("SUITE", "RIGHT")] for t in traces
    }
    assert "governance: empty log, genesis" in run.stderr and "promoted to production" in run.stderr, run.stderr
    version = next(line.split()[1].rstrip(",") for line in run.stderr.splitlines() if line.startswith("serving "))
    assert version.startswith("evostream/t5-tiny-suite@")
    audit = subprocess.run([*CLI, "audit", "--bootstrap", kafka], env=env, capture_output=True, text=True, timeout=60)
    assert audit.returncode == 0, audit.stderr[-2000:]
    kinds = [line.split(maxsplit=4)[4] for line in audit.stdout.splitlines()]
    assert [k.split(":")[0].split(" (")[0] for k in kinds] == [
        "admin      enrolled admin as admin",
        'admin      policy {"auto_promote_production"',
        f"admin      [evostream/t5-tiny-suite] registered {version}",
        f"admin      [evostream/t5-tiny-suite] validation of {version}",
        f"admin      [evostream/t5-tiny-suite] promoted {version} to staging",
        'admin      policy {"four_eyes"',  # the first admin approves alone, and the log says so
        f"admin      [evostream/t5-tiny-suite] approved {version} for production",
        'admin      policy {"four_eyes"',
        f"admin      [evostream/t5-tiny-suite] promoted {version} to production",
    ], audit.stdout
    verify = subprocess.run(
        [*CLI, "replay", "--verify", "--bootstrap", kafka], env=env, capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and "9 events" in verify.stdout and "0 finding(s)" in verify.stdout, verify.stdout
