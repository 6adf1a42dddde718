"""The kill switch of the processors' kill -9 test: off by default, and it fires only mid-batch after a FINAL."""

from __future__ import annotations

import pytest

from evostream.core.settings import load_settings
from evostream.stream_processors.faults import KillSwitch


def test_it_is_off_unless_the_settings_arm_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVOSTREAM_FAULT_KILL_AFTER", raising=False)
    settings = load_settings()
    assert not KillSwitch(settings.fault_kill_after, settings.fault_kill_model).watches("")
    monkeypatch.setenv("EVOSTREAM_FAULT_KILL_AFTER", "5")
    monkeypatch.setenv("EVOSTREAM_FAULT_KILL_MODEL", "tiny@1")
    settings = load_settings()
    switch = KillSwitch(settings.fault_kill_after, settings.fault_kill_model)
    assert switch.watches("tiny@1") and not switch.watches("tiny@2")


def test_it_fires_from_the_nth_step_mid_batch_once_a_final_was_sent() -> None:
    switch = KillSwitch(after=4, model="m")
    switch.start_batch()
    assert not switch.should_kill([("t1", "EARLY")], folded=3, done=3, batch=10)  # too early
    assert not switch.should_kill([("t1", "EARLY")], folded=2, done=5, batch=10)  # no FINAL sent yet
    assert not switch.should_kill([("t2", "FINAL")], folded=5, done=10, batch=10)  # the batch is done: not mid-batch
    switch.start_batch()
    assert switch.should_kill([("t3", "FINAL")], folded=1, done=2, batch=10)
    assert switch.sent == [["t3", "FINAL"]]
    assert switch.folded == 11
