"""The processors as built and started, without a broker: what they check at build time and what they leave in the
process once stopped."""

from __future__ import annotations

import asyncio
import gc
import re
from dataclasses import replace
from pathlib import Path

import pytest

from evostream.core.errors import PolicyError
from evostream.core.settings import Settings
from evostream.stream_processors.app import Processors, processors_from_settings
from evostream.stream_processors.drift.policy import load_drift_policies
from evostream.stream_processors.drift.tracker import DriftTracker, DriftWindows
from evostream.stream_processors.profiling.tracker import ProfileTracker
from evostream.stream_processors.profiling.window import ProfilePolicy
from evostream.stream_processors.risk.policy import RiskPolicy


def test_the_gc_watch_is_on_from_start_to_shutdown_only(tmp_path: Path) -> None:
    procs = processors_from_settings(Settings(processors_dir=tmp_path), "127.0.0.1:1")  # connects to nothing
    assert procs._time_gc not in gc.callbacks  # built, not started: nothing registered
    asyncio.run(procs._watch_gc())
    assert procs._time_gc in gc.callbacks
    gc.collect()
    assert procs.stats["gc_full"] >= 1
    asyncio.run(procs._log_stats_at_shutdown(None, signal=None))
    assert procs._time_gc not in gc.callbacks  # stopped: it neither counts nor keeps the processors alive


def test_a_risk_policy_that_keeps_fewer_tokens_than_profiling_reaches_back_is_refused(tmp_path: Path) -> None:
    short = replace(RiskPolicy(), name="short@1", repeat_window=1)

    def build(ngram: int) -> Processors:
        return Processors(
            "127.0.0.1:1",
            tmp_path,
            {"*": RiskPolicy(), "short": short},
            app_id="setup-test",
            drift=DriftTracker(load_drift_policies(), DriftWindows(20, 20)),
            profile=ProfileTracker(ProfilePolicy(window_s=60, ngram=ngram)),
        )

    with pytest.raises(PolicyError, match=re.escape("short@1 (1) keep fewer tokens") + ".*3-grams reach back \\(2\\)"):
        build(3)
    assert build(2).tracker.policies["short"].repeat_window == 1  # bigrams reach one token back: enough
