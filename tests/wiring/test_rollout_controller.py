"""The rollout controller on the real broker: a governance log with a running rollout, the rollout's traffic written to
evo.completions / evo.alerts / evo.outcomes as the service and the processors would write it, and the controller
judging the windows and writing the rollout's events, signed as its own actor.

A healthy candidate goes through its plan (shadow, 50%, 100%) to RolloutCompleted and becomes production; a
candidate whose every answer is alerted is aborted automatically within its first step and production stays with
the incumbent; a controller started afresh mid-window rebuilds the window from the topics (by time, not by its
group's commits) and takes the step the first one would have."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.service import Governance, init
from evostream.core.bus.admin import group_lags
from evostream.core.bus.producer import EventProducer
from evostream.core.clock import now_us
from evostream.core.errors import GovernanceError
from evostream.core.settings import Settings, load_settings
from evostream.rollout.plan import RolloutPlan
from evostream.schemas.catalog import ALERTS, COMPLETIONS, OUTCOMES
from evostream.schemas.codec import RecordCodec
from evostream.schemas.records import Completion, Outcome, RiskAlert
from evostream.views.governance import GovernanceView, anchor_file, checkpoints_path
from evostream.wiring.rollout import Action, RolloutController, controller_actor
from tests.rollout.traffic import alert, completion, outcome

CLI = [sys.executable, "-m", "evostream.cli"]


class Traffic:
    """Requests answered at ``per_s`` a second: the candidate answers ``weight`` percent of them (by request number),
    the incumbent the rest, and in the shadow phase a tenth are mirrored to the candidate (SHADOW answers). Every
    20th answer of a version is alerted, every 3rd labelled (4 of 5 of those right); ``broken``: every candidate
    answer is alerted."""

    def __init__(self, server: str, incumbent: str, candidate: str, per_s: float = 40.0, broken: bool = False):
        self.producer = EventProducer(server)
        self.codecs = {
            COMPLETIONS: RecordCodec.of(Completion),
            ALERTS: RecordCodec.of(RiskAlert),
            OUTCOMES: RecordCodec.of(Outcome),
        }
        self.versions = (incumbent, candidate)
        self.per_s = per_s
        self.broken = broken
        self.weight = 0
        self.shadow = True
        self.sent = {incumbent: 0, candidate: 0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rollout-traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.producer.flush(30)

    def _run(self) -> None:
        i = 0
        while not self.stop.wait(1.0 / self.per_s):
            i += 1
            to_candidate = i * self.weight // 100 > (i - 1) * self.weight // 100  # weight in every 100, spread
            self.answer(self.versions[to_candidate], "ANSWER")
            if not to_candidate and self.shadow and i % 10 == 0:
                self.answer(self.versions[1], "SHADOW")
            self.producer.poll()

    def answer(self, version: str, role: str, at: int | None = None) -> None:
        """One answer of ``version`` (now, or at ``at``), its alert and its label as the rates say."""
        n = self.sent[version] = self.sent[version] + 1
        trace, at = f"{version}-{n}-{uuid.uuid4().hex[:6]}", now_us() if at is None else at
        candidate = version == self.versions[1]
        self._send(COMPLETIONS, trace, completion(trace, version, at, role=role, latency_ms=80.0 + n % 7))
        if n % 20 == 0 or (candidate and self.broken):
            self._send(ALERTS, trace, alert(trace, version, at + 500))
        if n % 3 == 0:
            self._send(OUTCOMES, trace, outcome(trace, version, n % 5 != 0, at + 800))

    def _send(self, topic: str, key: str, rec: Any) -> None:
        self.producer.send(topic, key, self.codecs[topic].encode(rec))


@dataclass
class Governed:
    settings: Settings
    admin: Governance
    model: str
    v1: str
    v2: str


def governed(kafka: str, tmp_path: Path, plan: RolloutPlan) -> Governed:
    """A governance log where the model's v1 is production and v2, approved, is being rolled out under ``plan``."""
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        bootstrap_servers=kafka,
        governance_dir=tmp_path / "gov",
        governance_topic=f"test-rollout-control-{run}",
        artifacts_dir=tmp_path / "a",
    )
    keys = settings.governance_dir / "keys"
    glog = GovernanceLog(kafka, topic=settings.governance_topic)
    admin, _ = init(glog, keys, "admin", checkpoints=checkpoints_path(settings), anchor=anchor_file(settings))
    view = GovernanceView(kafka, settings)
    from evostream.consumers.governance.keys import ActorKey
    from evostream.consumers.governance.service import key_path

    bob_key = ActorKey.generate()
    bob_key.save(key_path(keys, "bob"))
    admin.enroll("bob", bob_key.public_hex, bob_key.key_id, ["approver"], reason="reviewer")
    bob = view.actor("bob")
    model = f"m-{run}"
    v1, v2 = f"{model}@1", f"{model}@2"
    for v in (v1, v2):
        admin.register(model, v, artifact_uri=f"file:///{v}", artifact_sha256="ab" * 32, reason="built")
        admin.validated(model, v, True, {"acc": 0.9}, reason="suite")
        bob.approve(model, v, reason="fine")
    admin.promote(model, v1, stage="production", reason="first")
    admin.start_rollout(model, v2, plan.to_json(), {"compare": "clean"}, reason="try v2", rollout_id=f"ro-{run}")
    return Governed(settings, admin, model, v1, v2)


def drive(controller: RolloutController, traffic: Traffic, plan: RolloutPlan, timeout_s: float) -> list[Action]:
    """Tick until the rollout is over (or ``timeout_s``), keeping the traffic's split at the rollout's weight; the
    actions that wrote an event."""
    acted: list[Action] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        a = controller.tick()
        if a is None:
            return acted
        if a.kind != "wait":
            acted.append(a)
        if a.kind == "step" and a.step is not None:
            traffic.weight, traffic.shadow = plan.steps[a.step], False
        elif a.kind == "abort":
            traffic.weight = 0
        time.sleep(0.3)
    raise AssertionError(f"the rollout did not end within {timeout_s} s: {controller.last}")


def test_a_healthy_candidate_goes_through_its_steps_to_production(kafka: str, tmp_path: Path) -> None:
    plan = RolloutPlan(steps=(50, 100), step_s=2, min_samples=5, shadow_s=2, clean_cycles=1)
    g = governed(kafka, tmp_path, plan)
    settings, admin, model, v1, v2 = g.settings, g.admin, g.model, g.v1, g.v2
    said: list[str] = []
    ctl = controller_actor(settings, kafka, said.append)
    assert said and "enrolled controller as controller" in said[0]
    controller = RolloutController(kafka, ctl, model)
    try:
        with Traffic(kafka, v1, v2) as traffic:
            acted = drive(controller, traffic, plan, timeout_s=90)
    finally:
        controller.close()
    assert [(a.kind, a.step) for a in acted] == [("step", 0), ("step", 1), ("complete", None)]
    registry = admin.state().registry
    assert registry.production(model) == v2
    done = registry.last_rollout(model)
    assert done is not None and done["status"] == "completed"
    history = done["history"]
    assert [(h["type"], h["actor"]) for h in history] == [
        ("RolloutStarted", "admin"),
        ("RolloutStepped", "controller"),
        ("RolloutStepped", "controller"),
        ("RolloutCompleted", "controller"),
    ]
    shadow_window = history[1]["evidence"]
    assert shadow_window["verdict"] == "ADVANCE" and shadow_window["step"] == -1
    assert shadow_window["candidate"]["answers"] >= 5 and shadow_window["incumbent"]["baseline"] == "window"
    assert {g["verdict"] for g in shadow_window["gates"].values()} == {"pass"}
    canary = history[2]["evidence"]
    assert canary["weight"] == 50 and canary["candidate"]["answers"] >= 5 and canary["window"]["age_s"] >= 2
    cycles = history[3]["evidence"]["cycles"]
    assert len(cycles) == 1 and cycles[0]["incumbent"]["baseline"] == "rollout"
    assert history[3]["reason"].startswith("controller: 1 clean cycle(s) at 100%")

    env = {
        **os.environ,
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
        "EVOSTREAM_GOVERNANCE_DIR": str(settings.governance_dir),
        "EVOSTREAM_GOVERNANCE_TOPIC": settings.governance_topic,
    }
    audit = subprocess.run([*CLI, "audit"], env=env, capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stderr
    lines = [line for line in audit.stdout.splitlines() if f"[{model}]" in line and "controller" in line]
    assert len(lines) == 3, audit.stdout
    assert "all 4 gates pass" in lines[0] and "all 4 gates pass" in lines[1], lines


def test_a_candidate_whose_answers_are_all_alerted_is_aborted_within_its_first_step(kafka: str, tmp_path: Path) -> None:
    plan = RolloutPlan(steps=(50, 100), step_s=2, min_samples=5, shadow_s=0, clean_cycles=1)
    g = governed(kafka, tmp_path, plan)
    settings, admin, model, v1, v2 = g.settings, g.admin, g.model, g.v1, g.v2
    controller = RolloutController(kafka, controller_actor(settings, kafka, lambda _: None), model)
    try:
        with Traffic(kafka, v1, v2, broken=True) as traffic:
            acted = drive(controller, traffic, plan, timeout_s=60)
    finally:
        controller.close()
    assert [(a.kind, a.step) for a in acted] == [("step", 0), ("abort", None)]
    registry = admin.state().registry
    assert registry.production(model) == v1
    r = registry.last_rollout(model)
    assert r is not None and (r["status"], r["weight"]) == ("aborted", 0)
    aborted = r["history"][-1]
    assert (aborted["type"], aborted["actor"], aborted["step"]) == ("RolloutAborted", "controller", 0)
    gate = aborted["evidence"]["gates"]["alert_rate"]
    assert gate["verdict"] == "break" and gate["candidate"] == 1.0 and gate["p_value"] < 0.01
    # within one step: judged before the step's window was even over
    assert aborted["at_us"] - r["history"][-2]["at_us"] < plan.step_s * 1e6 + 5e6
    events = GovernanceView(kafka, settings).replayed().events
    (abort_ev,) = [ev for _, ev in events if ev.type == "RolloutAborted"]
    assert abort_ev.payload["automatic"] is True


def test_a_restarted_controller_rebuilds_the_window_from_the_topics(kafka: str, tmp_path: Path) -> None:
    """The first controller reads the window and its group commits past it; a second one, started afresh with the
    same group, still finds every answer of the window (read by time) and takes the step. Their clocks are set, so
    the window's age is what the test says."""
    plan = RolloutPlan(steps=(50, 100), step_s=2, min_samples=5, shadow_s=0, clean_cycles=1)
    g = governed(kafka, tmp_path, plan)
    first = RolloutController(kafka, controller_actor(g.settings, kafka, lambda _: None), g.model)
    try:
        assert (a := first.tick()) is not None and (a.kind, a.step) == ("step", 0)
        running = g.admin.state().registry.active_rollout(g.model)
        assert running is not None
        at = int(running["history"][-1]["at_us"])
        traffic = Traffic(kafka, g.v1, g.v2)
        for k in range(10):
            traffic.answer(g.v2, "ANSWER", at + 1000 * k)
            traffic.answer(g.v1, "ANSWER", at + 1000 * k + 500)
        traffic.producer.flush(30)
        first.clock = lambda: at + 1_000_000
        seen = first.tick()
        assert seen is not None and seen.kind == "wait", seen
        assert seen.evidence["candidate"]["answers"] == 10 and "1.0 s old of 2 s" in seen.reason
    finally:
        first.close()
    lags = group_lags(kafka, [first.group])[first.group]
    assert lags.get(COMPLETIONS) == 0, lags  # the group's commits are past every answer of the window
    again = RolloutController(
        kafka, controller_actor(g.settings, kafka, lambda _: None), g.model, clock=lambda: at + 3_000_000
    )
    try:
        b = again.tick()
    finally:
        again.close()
    assert b is not None and (b.kind, b.step) == ("step", 1), b
    assert b.evidence["candidate"]["answers"] == 10 and b.evidence["incumbent"]["answers"] == 10


def test_the_controller_actor_is_refused_with_a_clear_error_without_an_admin_key(kafka: str, tmp_path: Path) -> None:
    plan = RolloutPlan(steps=(50, 100), step_s=2, min_samples=5, shadow_s=0, clean_cycles=1)
    settings = governed(kafka, tmp_path, plan).settings
    (settings.governance_dir / "keys" / "admin.key").unlink()
    with pytest.raises(GovernanceError, match="evostream governance enroll controller --roles controller"):
        controller_actor(settings, kafka, lambda _: None)
