"""The chaos suite's short form: the broker killed and paused under the whole pipeline, every record accounted for
(``bench/chaos.py`` is the long form; its figures are in docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import run

pytestmark = pytest.mark.integration


def test_a_killed_and_a_paused_broker_lose_nothing_and_double_nothing(kafka: str, tmp_path: Path) -> None:
    # ``kafka`` only marks the test as needing a broker: the faults go to a private one, the shared one is untouched
    figures = run(tmp_path, requests=16, rounds=1, pause_s=4.0)
    assert (figures.service_kills, figures.kills, figures.pauses) == (1, 1, 1)
    assert figures.requests == 17  # and a warm-up before the faults
    assert figures.lost == 0 and figures.answered == 17, figures
    assert figures.sqlite_rows == figures.completions, figures  # the sink: nothing lost, nothing doubled
    assert figures.sqlite_requests == 17, figures  # a duplicate generation is recognised by its request id
    assert figures.final_reports == figures.completions, figures  # every completed trace, duplicates too
    assert figures.chain_verified and figures.governance_appends == 1 and figures.governance_events == 1, figures
