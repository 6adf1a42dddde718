"""bench.block_sizes at CI size: the default model served through the real broker, its step blocks read back, with
and without the block window."""

from __future__ import annotations

import re

import pytest

from bench.block_sizes import main

pytestmark = pytest.mark.integration


def test_a_block_window_puts_more_of_a_traces_steps_in_a_block(kafka: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--requests", "16", "--concurrency", "8", "--windows-ms", "0,200", "--batching", "static", "--reps", "1"]
    main([*args, "--bootstrap", kafka])
    out = capsys.readouterr().out
    line = r"^rep 1 \(static, window (\d+) ms\): \d+ blocks of \d+ steps: ([\d.]+) steps"
    mean = {int(w): float(m) for w, m in re.findall(line, out, re.M)}
    assert set(mean) == {0, 200}, out
    assert mean[200] > mean[0] >= 1.0, mean
    waits = [int(p99) for p99 in re.findall(r"wait for its block p50 \d+ ms, p99 (\d+) ms", out)]
    assert len(waits) == 2 and max(waits) <= 200 + 250, waits  # the window at most, and what two busy cores add
