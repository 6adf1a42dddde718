"""Rollouts as a user drives them (real processes, real broker): `rollout start` of an approved candidate, the
controller's steps and completion make it production; `rollout abort` leaves the incumbent in production; `audit`,
`rollout status` and `registry show` show each rollout event with the evidence it cites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from evostream.core.settings import load_settings
from evostream.views.governance import GovernanceView

CLI = [sys.executable, "-m", "evostream.cli"]


def window(verdict: str, alert: float) -> dict[str, Any]:
    """A window's analysis as the controller writes it (one gate)."""
    gate = {
        "candidate": alert,
        "incumbent": 0.01,
        "n_candidate": 40,
        "n_incumbent": 160,
        "tolerance": 0.2,
        "p_value": 0.41,
        "confidence": 0.99,
        "verdict": "pass" if verdict == "ADVANCE" else "break",
    }
    return {"verdict": verdict, "gates": {"alert_rate": gate}}


def test_rollout_commands_on_the_real_broker(kafka: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "EVOSTREAM_GOVERNANCE_DIR": str(tmp_path / "gov"),
        "EVOSTREAM_GOVERNANCE_TOPIC": f"test-rollout-cli-{run}",
        "EVOSTREAM_ARTIFACTS_DIR": str(tmp_path / "a"),
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
    }

    def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)
        assert (done.returncode == 0) == ok, (args, done.stdout, done.stderr)
        return done

    settings = load_settings(
        bootstrap_servers=kafka,
        governance_dir=tmp_path / "gov",
        governance_topic=f"test-rollout-cli-{run}",
        artifacts_dir=tmp_path / "a",
    )

    def acting(name: str) -> Any:
        return GovernanceView(kafka, settings).actor(name)

    model = f"m-{run}"
    v1, v2, v3 = (f"{model}@{i}" for i in (1, 2, 3))
    cli("governance", "init")
    cli("governance", "enroll", "bob", "--roles", "approver")
    cli("governance", "enroll", "ctl", "--roles", "controller", "--reason", "the rollout controller")
    admin, bob = acting("admin"), acting("bob")
    for v in (v1, v2, v3):
        admin.register(model, v, artifact_uri=f"file:///{v}", artifact_sha256="ab" * 32, reason="built")
        admin.validated(model, v, True, {"acc": 0.9}, reason="suite")
    bob.approve(model, v1, reason="first")
    admin.promote(model, v1, stage="production", reason="first")
    compare = tmp_path / "compare.json"
    compare.write_text(json.dumps({"agree": 0.97, "n": 400, "candidate": v2, "production": v1}))
    cli("approve", model, v2, "--actor", "bob", "--evidence", str(compare), "--reason", "shadow compare is clean")

    # a controller may not start a rollout; a candidate without approvals may not be rolled out
    refused = cli("rollout", "start", model, v2, "--reason", "x", "--actor", "ctl", ok=False)
    assert "RolloutStarted needs role admin" in refused.stderr, refused.stderr
    refused = cli("rollout", "start", model, v3, "--reason", "x", ok=False)
    assert "needs 1 distinct approvers for production, has 0" in refused.stderr, refused.stderr
    refused = cli("rollout", "start", model, v2, "--steps", "10,50", "--reason", "x", ok=False)
    assert "the last step must be 100" in refused.stderr, refused.stderr
    started = cli(
        "rollout",
        "start",
        model,
        v2,
        "--steps",
        "20,100",
        "--step-s",
        "3",
        "--min-samples",
        "5",
        "--shadow-s",
        "0",
        "--clean-cycles",
        "1",
        "--gate",
        "alert_rate=0.2",
        "--gate",
        "accuracy=off",
        "--evidence",
        str(compare),
        "--rollout-id",
        f"ro-{run}",
        "--reason",
        "compare is clean",
    )
    assert f"started rollout ro-{run} of {model}: {v1} -> {v2}" in started.stderr, started.stderr

    ctl = acting("ctl")
    ctl.step_rollout(model, f"ro-{run}", 0, window("ADVANCE", 0.012), reason="shadow window clean")
    ctl.step_rollout(model, f"ro-{run}", 1, window("ADVANCE", 0.011), reason="20% window clean")
    status = cli("rollout", "status", model).stdout
    assert f"rollout ro-{run} of {model}: {v1} -> {v2}: RUNNING at step 1 of 2, candidate weight 100%" in status
    assert "alert_rate pass 0.012 vs 0.01 p=0.41" in status, status
    assert f"{model}: production {v1}" in cli("registry").stdout  # nothing moved yet
    ctl.complete_rollout(model, f"ro-{run}", window("ADVANCE", 0.01), reason="1 clean window at 100%")
    now = cli("registry").stdout
    assert f"{model}: production {v2}" in now and f"rollout ro-{run}: {v1} -> {v2} completed" in now, now
    done = json.loads(cli("rollout", "status", model, "--json").stdout)
    assert (done["status"], done["step"], done["weight"]) == ("completed", 1, 100)
    assert done["plan"]["gates"] == {
        "alert_rate": {"tolerance": 0.2},
        "error_rate": {"tolerance": 0.02},
        "p95_latency": {"tolerance": 0.2},
    }
    assert [(h["type"], h["actor"]) for h in done["history"]] == [
        ("RolloutStarted", "admin"),
        ("RolloutStepped", "ctl"),
        ("RolloutStepped", "ctl"),
        ("RolloutCompleted", "ctl"),
    ]

    # a second rollout, aborted by hand: production stays with the incumbent
    refused = cli("rollout", "abort", model, "--reason", "x", ok=False)
    assert "has no running rollout" in refused.stderr, refused.stderr
    bob.approve(model, v3, reason="try it")
    cli("rollout", "start", model, v3, "--reason", "try v3")
    aborted = cli("rollout", "abort", model, "--reason", "support tickets are up")
    assert f"{v3} at 0%, {v2} answers every request" in aborted.stderr, aborted.stderr
    last = json.loads(cli("rollout", "status", model, "--json").stdout)
    assert (last["version"], last["status"], last["weight"]) == (v3, "aborted", 0)
    assert f"{model}: production {v2}" in cli("registry").stdout

    audit = cli("audit").stdout
    for line in (
        f"approved {v2} for production, citing agree=0.97, candidate={v2}, n=400, production={v1}",
        f"started rollout ro-{run}: {v1} -> {v2}, steps 20,100% [agree=0.97",
        f"rollout ro-{run} step 0: candidate at 20% [verdict ADVANCE; alert_rate pass 0.012 vs 0.01 p=0.41]",
        f"rollout ro-{run} step 1: candidate at 100% [verdict ADVANCE; alert_rate pass 0.011 vs 0.01 p=0.41]",
        f"rollout ro-{run} completed: the candidate is production [verdict ADVANCE",
        "ABORTED by hand: candidate at 0%, production stays: support tickets are up",
    ):
        assert line in audit, (line, audit)
    history = json.loads(cli("registry", "show", v2).stdout)["history"]
    assert any(f"rollout ro-{run} step 0" in h for h in history), history
    assert cli("replay", "--verify").stdout.endswith("0 finding(s)\n")
    for gov in (admin, bob, ctl):
        gov.log.close()
