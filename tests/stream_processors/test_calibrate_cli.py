"""`evostream calibrate` as users run it: the default model's reference run, fitted numbers written with their
notes, hand-set numbers kept from the policy file it replaces."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from evostream.stream_processors.risk.policy import RiskPolicy, tunable_fields

CLI = [sys.executable, "-m", "evostream.cli"]  # the CLI of the checkout under test, not the one on PATH


def test_calibrate_fits_the_default_model_and_keeps_the_files_hand_set_numbers(tmp_path: Path) -> None:
    out = tmp_path / "policy.json"
    hand = replace(RiskPolicy(), min_steps=2, z_margin=2.0, notes={**RiskPolicy().notes, "min_steps": "hand-set: two"})
    out.write_text(hand.to_json(), encoding="utf-8")
    done = subprocess.run(
        [*CLI, "calibrate", "--per-task", "4", "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"hand-set numbers from {out}" in done.stderr
    policy = RiskPolicy.from_json(out.read_text(encoding="utf-8"))
    assert policy.family == "evostream/t5-tiny-suite"
    assert policy.calibration["traces"] == 24 and policy.calibration["per_task"] == 4
    assert (policy.min_steps, policy.z_margin, policy.notes["min_steps"]) == (2, 2.0, "hand-set: two")
    assert set(tunable_fields()) <= set(policy.notes)
    for name in ("entropy_bits", "collapse_z", "blowup_z", "alert_score", "critical_score"):
        assert policy.notes[name].startswith("fitted: "), policy.notes[name]
        assert getattr(policy, name) != getattr(hand, name), name
    assert "24 reference traces" in policy.notes["alert_score"]
