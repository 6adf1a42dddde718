"""The drift policy is config: the shipped file says where each number comes from, and the worker judges with it."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from evostream.core.errors import PolicyError
from evostream.core.settings import Settings
from evostream.stream_processors.app import Processors, processors_from_settings
from evostream.stream_processors.drift.policy import (
    DRIFT_POLICY_DIR,
    DriftPolicy,
    drift_policy_for,
    load_drift_policies,
)
from evostream.stream_processors.drift.tracker import DriftTracker, DriftWindows


def test_every_tunable_number_of_the_shipped_drift_policy_says_whether_it_is_fitted_or_hand_set() -> None:
    files = sorted(DRIFT_POLICY_DIR.glob("*.json"))
    assert [f.name for f in files] == ["default.json"]
    raw = json.loads(files[0].read_text(encoding="utf-8"))
    assert set(raw) == {"name", "family", "notes", *DriftPolicy.tunable()}  # every number is in the file
    assert sorted(raw["notes"]) == sorted(DriftPolicy.tunable())
    for name, note in raw["notes"].items():
        assert note.startswith(("fitted: ", "hand-set: ")), name
        assert len(note) > len("hand-set: ") + 20, name  # a reason, not just the label


def test_the_shipped_file_is_the_default_and_the_code_defaults_only_the_fallback(tmp_path: Path) -> None:
    shipped = load_drift_policies()
    assert list(shipped) == ["*"] and shipped["*"].name == "drift-default@1"
    assert drift_policy_for(shipped, "evostream/t5-tiny-suite@abc").name == "drift-default@1"
    assert load_drift_policies(tmp_path) == {"*": DriftPolicy()}  # no file: the code defaults
    assert DriftTracker(load_drift_policies(), DriftWindows(200, 50)).policies == shipped


def test_a_family_file_overrides_the_fallback_and_its_numbers_change_what_is_judged(tmp_path: Path) -> None:
    base = load_drift_policies()["*"]
    strict = replace(base, name="strict@1", family="acme/model", min_samples=60)
    (tmp_path / "default.json").write_text(json.dumps(asdict(base)), encoding="utf-8")
    (tmp_path / "acme.json").write_text(json.dumps(asdict(strict)), encoding="utf-8")
    policies = load_drift_policies(tmp_path)
    assert drift_policy_for(policies, "acme/model@7") == strict
    assert drift_policy_for(policies, "other@1") == base
    # windows of 50 completions are judged under the shipped policy, but refused by one that needs 60
    DriftTracker({"*": base}, DriftWindows(reference_size=100, window_size=50))
    with pytest.raises(PolicyError, match="min_samples 60 of drift policy strict@1"):
        DriftTracker(policies, DriftWindows(reference_size=100, window_size=50))


def test_an_unknown_field_in_a_drift_policy_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"name": "x@1", "mmd_alhpa": 0.01}), encoding="utf-8")
    with pytest.raises(PolicyError, match=r"unknown drift policy fields \['mmd_alhpa'\]"):
        load_drift_policies(tmp_path)


def test_the_worker_is_built_with_the_shipped_drift_policy(tmp_path: Path) -> None:
    settings = Settings(processors_dir=tmp_path, drift_reference_size=120, drift_window_size=40)
    procs: Processors = processors_from_settings(settings, "127.0.0.1:1")  # builds the app; connects to nothing
    assert procs.drift_tracker.policies == load_drift_policies()
    assert procs.drift_tracker.windows == DriftWindows(120, 40)


def test_a_drift_policy_file_that_is_not_json_is_a_policy_error_that_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('{"name": "x@1",', encoding="utf-8")
    with pytest.raises(PolicyError, match=re.escape(f"{bad}: not a drift policy")):
        load_drift_policies(tmp_path)


@pytest.mark.parametrize("dropped", [["mmd_alpha"], ["psi_shift", "min_samples"], ["family"]])
def test_a_drift_policy_file_missing_a_field_is_refused_not_filled_with_the_code_default(
    tmp_path: Path, dropped: list[str]
) -> None:
    raw = json.loads(DRIFT_POLICY_DIR.joinpath("default.json").read_text(encoding="utf-8"))
    for name in dropped:
        del raw[name]
    path = tmp_path / "default.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(PolicyError, match=re.escape(f"{path}: drift policy drift-default@1 lacks {dropped}")):
        load_drift_policies(tmp_path)
