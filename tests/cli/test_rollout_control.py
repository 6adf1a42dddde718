"""`evostream compare` and `evostream rollout control` as a user runs them (real processes, real broker): compare two
versions' logged traffic, cite the JSON when starting a rollout, and let the controller take its first step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evostream.cli.rollout_control import since_us
from evostream.core.clock import now_us
from evostream.core.errors import GovernanceError
from evostream.schemas.catalog import SHADOW
from evostream.views.governance import parse_time
from tests.rollout.live import Traffic, governed
from tests.rollout.traffic import comparison

CLI = [sys.executable, "-m", "evostream.cli"]


def test_since_takes_a_duration_or_a_time() -> None:
    now = 1_800_000_000_000_000
    assert since_us("90s", now) == now - 90_000_000
    assert since_us("2h", now) == now - 7_200_000_000
    assert since_us("1.5m", now) == now - 90_000_000
    assert since_us("2026-11-23T14:03", now) == parse_time("2026-11-23T14:03")
    with pytest.raises(GovernanceError, match="a duration"):
        since_us("yesterday", now)


def test_compare_then_start_a_rollout_citing_it_then_control_steps_it(kafka: str, tmp_path: Path) -> None:
    g = governed(kafka, tmp_path, None)
    env = {
        **os.environ,
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
        "EVOSTREAM_GOVERNANCE_DIR": str(g.settings.governance_dir),
        "EVOSTREAM_GOVERNANCE_TOPIC": g.settings.governance_topic,
        "EVOSTREAM_ARTIFACTS_DIR": str(g.settings.artifacts_dir),
    }

    def cli(*args: str, ok: bool = True, **over: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*CLI, *args], env=env | over, capture_output=True, text=True, timeout=120)
        assert (done.returncode == 0) == ok, (args, done.stdout, done.stderr)
        return done

    # v2 staged in shadow: 40 production answers, 20 of them mirrored to v2 (18 agree)
    traffic = Traffic(kafka, g.v1, g.v2)
    t0 = now_us() - 30_000_000
    for k in range(40):
        prod = traffic.answer(g.v1, "ANSWER", t0 + k * 100_000)
        if k % 2 == 0:
            mirrored = traffic.answer(g.v2, "SHADOW", t0 + k * 100_000 + 10)
            traffic.send(SHADOW, prod, comparison(prod, mirrored, g.v1, g.v2, t0 + k * 100_000 + 20, k not in (4, 8)))
    traffic.producer.flush(30)

    doc = json.loads(cli("compare", g.v1, g.v2, "--since", "2m", "--json").stdout)
    assert (doc["production"], doc["candidate"]) == (g.v1, g.v2)
    assert doc["shadow"]["comparisons"] == 20 and doc["shadow"]["agreement_rate"] == pytest.approx(0.9)
    assert doc["production_stats"]["answers"] == 40 and doc["candidate_stats"]["answers"] == 20
    assert doc["production_stats"]["alerted"] == 2 and doc["candidate_stats"]["alerted"] == 1  # every 20th
    assert doc["candidate_stats"]["labelled"] == 6 and doc["production_stats"]["p95_ms"] is not None
    assert set(doc["gates"]) == {"alert_rate", "accuracy", "p95_latency", "error_rate"}
    assert {gate["verdict"] for gate in doc["gates"].values()} == {"pass"}
    assert doc["verdict"] == "WAIT" and "20 of 30 candidate answers" in doc["reason"]  # the default plan's 30
    text = cli("compare", g.v1, g.v2, "--since", "2m").stdout
    assert "shadow: 20 comparisons, agreement 90.0%" in text and "gates at the default plan" in text, text
    assert "alert rate   5.0%" in text, text

    cited = tmp_path / "compare.json"
    cited.write_text(json.dumps(doc))
    plan = ["--steps", "50,100", "--step-s", "2", "--min-samples", "5", "--shadow-s", "0", "--clean-cycles", "1"]
    cli("rollout", "start", g.model, g.v2, *plan, "--evidence", str(cited), "--reason", "compare is clean")

    first = cli("rollout", "control", "--model", g.model, "--once")
    assert "enrolled controller as controller" in first.stderr, first.stderr
    assert f"of {g.model}: stepped to step 0: no shadow phase" in first.stdout, first.stdout
    again = cli("rollout", "control", "--model", g.model, "--once")
    assert "waiting" in again.stdout and "enrolled" not in again.stderr, (again.stdout, again.stderr)
    status = cli("rollout", "status", g.model).stdout
    assert "RUNNING at step 0 of 2, candidate weight 50%" in status, status
    assert "alert_rate pass" in status, status  # the compare the person cited, shown with the start

    # on a machine with neither the controller's key nor an admin's, the controller says what to do
    refused = cli("rollout", "control", "--model", g.model, "--once", ok=False, EVOSTREAM_GOVERNANCE_DIR=str(tmp_path))
    assert refused.stderr.startswith("error: no key for the rollout controller 'controller'"), refused.stderr
    assert "evostream governance enroll controller --roles controller" in refused.stderr
