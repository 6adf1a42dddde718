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
import time
from pathlib import Path

import pytest

from evostream.core.bus.admin import group_lags
from evostream.core.errors import GovernanceError
from evostream.rollout.plan import RolloutPlan
from evostream.schemas.catalog import COMPLETIONS
from evostream.views.governance import GovernanceView
from evostream.wiring import rollout as controller_module
from evostream.wiring.rollout import SETTLE_S, Action, RolloutController, controller_actor
from tests.rollout.live import Traffic, governed

CLI = [sys.executable, "-m", "evostream.cli"]
SETTLE_US = int(SETTLE_S * 1e6)


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
    lines = [line for line in audit.stdout.splitlines() if f"[{model}]" in line and " controller " in line]
    assert len(lines) == 3, audit.stdout
    assert "step 0: candidate at 50%" in lines[0] and "step 1: candidate at 100%" in lines[1], lines
    assert "completed: the candidate is production" in lines[2], lines
    for line in lines:  # each with its evidence: the verdict, each gate's figures and p-value, and the reason
        assert "alert_rate pass" in line and "p95_latency pass" in line and "p=" in line, line
    assert "verdict ADVANCE" in lines[0] and "verdict COMPLETE" in lines[2], lines


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
    # every candidate answer is alerted; the alerts of the last few may not have been read when it was judged
    assert gate["verdict"] == "break" and gate["candidate"] > 0.8 and gate["p_value"] < 0.01
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
        first.clock = lambda: at + 1_000_000 + SETTLE_US  # judged up to SETTLE_S before its clock
        seen = first.tick()
        assert seen is not None and seen.kind == "wait", seen
        assert seen.evidence["candidate"]["answers"] == 10 and "1.0 s old of 2 s" in seen.reason
    finally:
        first.close()
    lags = group_lags(kafka, [first.group])[first.group]
    assert lags.get(COMPLETIONS) == 0, lags  # the group's commits are past every answer of the window
    again = RolloutController(
        kafka, controller_actor(g.settings, kafka, lambda _: None), g.model, clock=lambda: at + 3_000_000 + SETTLE_US
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


def test_a_candidate_that_fails_validation_mid_rollout_is_aborted_not_retried(kafka: str, tmp_path: Path) -> None:
    """Review finding 1: the step the window asks for is refused (the candidate's latest validation failed), so the
    controller aborts the rollout, automatic, with the refusal as its reason, instead of retrying every tick."""
    plan = RolloutPlan(steps=(50, 100), step_s=2, min_samples=5, shadow_s=0, clean_cycles=1)
    g = governed(kafka, tmp_path, plan)
    g.admin.validated(g.model, g.v2, False, {"acc": 0.2}, reason="a later suite run fails")
    controller = RolloutController(kafka, controller_actor(g.settings, kafka, lambda _: None), g.model)
    try:
        a = controller.tick()  # no shadow phase: step 0 at once, refused
        assert a is not None and a.kind == "step"
        assert controller.tick() is None  # nothing runs any more
    finally:
        controller.close()
    registry = g.admin.state().registry
    r = registry.last_rollout(g.model)
    assert r is not None and (r["status"], r["weight"]) == ("aborted", 0)
    aborted = r["history"][-1]
    assert (aborted["type"], aborted["actor"]) == ("RolloutAborted", "controller")
    assert (
        "no longer holds what production needs" in aborted["reason"] and "validation did not pass" in aborted["reason"]
    )
    assert registry.production(g.model) == g.v1
    events = GovernanceView(kafka, g.settings).replayed().events
    (abort_ev,) = [ev for _, ev in events if ev.type == "RolloutAborted"]
    assert abort_ev.payload["automatic"] is True


def test_a_tick_that_has_not_read_to_the_topics_ends_waits_and_writes_nothing(
    kafka: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick reads at most MAX_READ_S; one cut short (here: no time to read at all, as a controller far behind)
    must not act on the part it read: it waits, "still reading", and the next tick reads on and acts."""
    plan = RolloutPlan(steps=(50, 100), step_s=2, min_samples=5, shadow_s=0, clean_cycles=1)
    g = governed(kafka, tmp_path, plan)
    running = g.admin.state().registry.active_rollout(g.model)
    assert running is not None
    traffic = Traffic(kafka, g.v1, g.v2)
    for k in range(10):
        traffic.answer(g.v1, "ANSWER", int(running["started_us"]) + 1000 * k)
    traffic.producer.flush(30)
    controller = RolloutController(kafka, controller_actor(g.settings, kafka, lambda _: None), g.model)
    try:
        monkeypatch.setattr(controller_module, "MAX_READ_S", 0.0)
        behind = controller.tick()
        assert behind is not None and behind.kind == "wait" and behind.reason.startswith("still reading: "), behind
        r = g.admin.state().registry.active_rollout(g.model)
        assert r is not None and [h["type"] for h in r["history"]] == ["RolloutStarted"]  # nothing written
        monkeypatch.setattr(controller_module, "MAX_READ_S", 10.0)
        caught_up = controller.tick()
    finally:
        controller.close()
    assert caught_up is not None and (caught_up.kind, caught_up.step) == ("step", 0), caught_up
