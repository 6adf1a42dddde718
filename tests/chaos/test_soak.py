"""The soak suite's short form: three minutes of steady traffic with unique trace ids, and nothing that keeps growing
(``bench/soak.py`` is the long form, an hour; its curve and figures are in docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import run

pytestmark = pytest.mark.integration


def test_memory_and_changelogs_stay_flat_and_restarts_stay_short(kafka: str, tmp_path: Path) -> None:
    # a 20 s replay horizon, so that this short run sees traces evicted and their changelog segments compacted; 10 s
    # profiling windows, so that it sees many windows close: the profile state (its n-grams above all) grows through
    # each window, and with 60 s windows the quarters compared below caught different points of a window (the
    # profile changelog's peaks went from 0.7 to 1.6 MB and back within one window; the check failed once at +53%)
    env = {"EVOSTREAM_RISK_REPLAY_HORIZON_S": "20", "EVOSTREAM_PROFILE_WINDOW_S": "10"}
    soak = run(tmp_path, minutes=3.0, rate=3.0, every_s=5.0, warmup=0.4, env=env)
    assert soak.sent >= 500 and soak.answered == soak.sent + 1, (soak.sent, soak.answered)  # and the warm-up
    rss = soak.growth("rss", 0.4)
    assert set(rss) == {"serve", "process", "sinks"} and max(rss.values()) < 0.10, rss
    changelogs = soak.growth("changelog", 0.4)
    # three tables (risk, drift, profiles); without compaction each grew by 180-350% in such a run (measured on the
    # code before the changelog segments rolled); a compacted changelog is a sawtooth, hence the wider bound here
    assert len(changelogs) == 3 and max(changelogs.values()) < 0.5, changelogs
    first, last = soak.restart_s
    assert last < 2 * first + 5, soak.restart_s
