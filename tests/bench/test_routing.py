"""bench.routing end to end at CI size: both models, every router and every level measured on one small workload."""

from __future__ import annotations

import re

import pytest

from bench.routing import ROUTERS, main


def test_quick_run_reports_every_router_level_and_target(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--quick"])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| task (n) |"))
    assert [c.strip() for c in header.strip("|").split("|")][3:] == list(ROUTERS)
    pooled = next(line for line in out.splitlines() if line.startswith("| pooled (80) |"))
    accuracies = [float(c) for c in pooled.strip("|").split("|")[1:]]
    assert len(accuracies) == 2 + len(ROUTERS) and all(0.0 <= a <= 1.0 for a in accuracies)
    self_alone, reference_alone = accuracies[:2]
    assert reference_alone > self_alone  # the reference is the stronger model on the workload
    shares = next(line for line in out.splitlines() if line.startswith("| reference share |"))
    assert [float(c) for c in shares.strip("|").split("|")[1:3]] == [0.0, 1.0]
    levels = re.findall(r"^\| (\d) \| (0\.\d\d) \| (\d\.\d+) \|", out, re.M)
    ladder = [("1", "0.20"), ("2", "0.50"), ("3", "0.80"), ("4", "0.95")]
    assert [(lv, t) for lv, t, _ in levels] == ladder * 2  # with the gain probe (ours), then with the risk probe
    assert re.search(r"^levels certified with the gain probe .*\nlevels certified with the risk probe", out, re.M)
    for target in ("95% of the reference's accuracy", "within +-5 points", "beats prompt-only"):
        assert re.search(rf"{re.escape(target)}.*: (MET|MISSED)", out)
