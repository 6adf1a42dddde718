"""Issue 28 end to end, on the real broker, as a user runs it: `evostream serve --governed` following production and
the running rollout, `evostream process` scoring every trace, `evostream rollout control` judging each window, steady
traffic through Kafka and a grader labelling every answer on evo.outcomes.

A healthy candidate (a new version answering as the incumbent) is rolled out through the CLI: its shadow phase logs
comparisons on evo.shadow, the canary advances through its steps and, after a clean cycle at 100%, the candidate is
production, with nobody but the controller deciding after the start. A candidate with an injected regression is
rolled out next: the controller aborts it within its first canary step, production answers again without a person,
and `evostream audit` shows every step with its evidence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from bench.rollout import Grader, Traffic
from bench.variants import FAULTED_NOISE, HEALTHY_NOISE, build, register
from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.service import Governance, load_actor
from evostream.core.artifacts import ArtifactStore
from evostream.core.bus.consumer import EventConsumer
from evostream.core.settings import load_settings
from evostream.models.default_model import MODEL_ID
from evostream.schemas.catalog import SHADOW
from evostream.schemas.codec import RecordCodec
from evostream.views.governance import anchor_file, checkpoints_path
from evostream.wiring.governed import ensure_genesis

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "evostream.cli"]


def _started(
    cmd: list[str], env: dict[str, str], ready: str, log: Path, timeout_s: float = 240
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while ready.encode() not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{' '.join(cmd[3:])} did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc


@contextmanager
def _running(cmd: list[str], env: dict[str, str], ready: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = _started(cmd, env, ready, log)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def _ended(admin: Governance, rollout_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = admin.state().registry.rollouts[rollout_id]
        if r["status"] != "running":
            return dict(r)
        time.sleep(0.5)
    raise AssertionError(f"rollout {rollout_id} still running after {timeout_s} s: {r['history'][-1]}")


def _shadow_comparisons(bootstrap: str, rollout_id: str) -> list[dict[str, Any]]:
    codec = RecordCodec("ShadowComparison")
    consumer = EventConsumer(bootstrap, f"test-shadow-{uuid.uuid4().hex[:8]}", [SHADOW])
    found: list[dict[str, Any]] = []
    try:
        idle = 0
        while idle < 3:
            msgs = consumer.poll_batch(1000, timeout_s=1.0)
            idle = 0 if msgs else idle + 1
            for m in msgs:
                rec = dict(codec.decode(m.value() or b""))
                if rec["rollout_id"] == rollout_id:
                    found.append(rec)
    finally:
        consumer.close()
    return found


def test_a_canary_advances_and_an_injected_regression_rolls_back_without_a_person(kafka: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
        "EVOSTREAM_GOVERNANCE_DIR": str(tmp_path / "gov"),
        "EVOSTREAM_ARTIFACTS_DIR": str(tmp_path / "art"),
        "EVOSTREAM_GOVERNANCE_TOPIC": f"test-e2e-rollout-{run}",
        "EVOSTREAM_PROCESSORS_APP_ID": f"test-e2e-rollout-{run}",
    }
    settings = load_settings(
        bootstrap_servers=kafka,
        governance_dir=tmp_path / "gov",
        artifacts_dir=tmp_path / "art",
        governance_topic=env["EVOSTREAM_GOVERNANCE_TOPIC"],
    )
    incumbent = ensure_genesis(settings, kafka, lambda _m: None)
    glog = GovernanceLog(kafka, topic=settings.governance_topic)
    admin = load_actor(
        glog,
        settings.governance_dir / "keys",
        "admin",
        checkpoints=checkpoints_path(settings),
        anchor=anchor_file(settings),
    )
    key = ActorKey.generate()
    admin.enroll("carol", key.public_hex, key.key_id, ["approver"], reason="the second pair of eyes")
    carol = Governance(glog, key, "carol")
    store = ArtifactStore(settings.artifacts_dir)
    healthy = build(tmp_path / "healthy", HEALTHY_NOISE, seed=11)
    faulted = build(tmp_path / "faulted", FAULTED_NOISE, seed=12)
    register(admin, carol, store, healthy, MODEL_ID)
    register(admin, carol, store, faulted, MODEL_ID)

    with ExitStack() as stack:
        stack.callback(glog.close)
        serve = [*CLI, "serve", "--governed", MODEL_ID, "--max-wait-ms", "20", "--log-level", "INFO"]
        stack.enter_context(_running(serve, env, "serving", tmp_path / "serve.log"))
        process = [*CLI, "process", "--loglevel", "INFO"]
        stack.enter_context(_running(process, env, "Worker]: Ready", tmp_path / "process.log"))
        control = [*CLI, "rollout", "control", "--model", MODEL_ID, "--tick-s", "0.5"]
        stack.enter_context(_running(control, env, "following the rollouts", tmp_path / "control.log"))
        traffic = Traffic(kafka, rate=12.0)
        grader = Grader(kafka, traffic.expected)
        grader.start()
        stack.callback(grader.join, 30)
        stack.callback(grader.halt.set)
        traffic.start()
        stack.callback(traffic.stop)
        time.sleep(5)

        # 1. a healthy candidate: shadow, 20%, 100%, one clean cycle, production
        out = _cli(
            env,
            "rollout",
            "start",
            MODEL_ID,
            healthy.version,
            "--steps",
            "20,100",
            "--step-s",
            "4",
            "--min-samples",
            "8",
            "--shadow-share",
            "0.5",
            "--shadow-s",
            "4",
            "--clean-cycles",
            "1",
            "--reason",
            "a healthy candidate",
        )
        rid = admin.state().registry.active_rollout(MODEL_ID)
        assert rid is not None, out
        done = _ended(admin, rid["rollout_id"], timeout_s=150)
        assert done["status"] == "completed", done["history"][-1]
        assert admin.state().registry.production(MODEL_ID) == healthy.version
        kinds = [(h["type"], h["actor"]) for h in done["history"]]
        assert kinds == [
            ("RolloutStarted", "admin"),
            ("RolloutStepped", "controller"),
            ("RolloutStepped", "controller"),
            ("RolloutCompleted", "controller"),
        ]
        compared = _shadow_comparisons(kafka, rid["rollout_id"])
        assert compared and all(c["candidate_version"] == healthy.version for c in compared)
        assert sum(c["agree"] for c in compared) / len(compared) >= 0.8  # answers as the incumbent does
        summary = json.loads(_cli(env, "compare", incumbent, healthy.version, "--since", "10m", "--json"))
        assert summary  # what an approval or a rollout start can cite

        # 2. an injected regression: aborted by the controller within its first canary step
        sent_before = len(traffic.sent)
        _cli(
            env,
            "rollout",
            "start",
            MODEL_ID,
            faulted.version,
            "--steps",
            "20,100",
            "--step-s",
            "20",
            "--min-samples",
            "8",
            "--shadow-s",
            "0",
            "--clean-cycles",
            "1",
            "--reason",
            "a candidate with an injected regression",
        )
        bad = admin.state().registry.active_rollout(MODEL_ID)
        assert bad is not None
        aborted = _ended(admin, bad["rollout_id"], timeout_s=60)
        assert aborted["status"] == "aborted"
        last = aborted["history"][-1]
        assert last["type"] == "RolloutAborted" and last["actor"] == "controller"
        assert (last["at_us"] - aborted["started_us"]) / 1e6 < 20  # within its first step's window
        assert admin.state().registry.production(MODEL_ID) == healthy.version
        time.sleep(4)
        after = [s for s in traffic.sent[sent_before:] if s.sent_us > last["at_us"] + 2_000_000]
        answered = [s for s in after if s.version]
        assert answered and {s.version for s in answered} == {healthy.version}

        audit = _cli(env, "audit")
        lines = [line for line in audit.splitlines() if "rollout ro-" in line]
        said = [
            f"started rollout {rid['rollout_id']}",
            f"rollout {rid['rollout_id']} step 0",
            f"rollout {rid['rollout_id']} step 1",
            f"rollout {rid['rollout_id']} completed",
            f"started rollout {bad['rollout_id']}",
            f"rollout {bad['rollout_id']} ABORTED automatically",
        ]
        for what in said:
            assert any(what in line for line in lines), (what, lines)
        judged = [line for line in lines if any(w in line for w in said[1:4] + said[5:])]
        assert len(judged) == 4 and all("verdict" in line and "alert_rate" in line for line in judged), judged
