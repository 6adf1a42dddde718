"""The calibrator fits what the policy says it fits, and every number of a policy says whether it was fitted or
hand-set."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evostream.core.errors import CalibrationError, PolicyError
from evostream.stream_processors.risk.calibrate import calibrate
from evostream.stream_processors.risk.policy import POLICY_DIR, RiskPolicy, load_policies, tunable_fields
from evostream.stream_processors.risk.score import TraceRisk
from tests.stream_processors.test_risk import H, L, step


def reference(
    traces: int = 200,
    *,
    entropy_hi: float = 1.5,
    outlier_every: int = 0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Healthy hand-built traffic: entropies uniform on [0.1, entropy_hi]; every ``outlier_every``-th trace (0:
    none) has one step whose layer-2 norm is 3x and whose layer-1 heads are 5x quieter (a heavier tail)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(traces):
        n = int(rng.integers(4, 16))
        odd = outlier_every and t % outlier_every == 0
        for i in range(n):
            kw: dict[str, Any] = {}
            if odd and i == n // 2:
                noise = 1 + 0.05 * rng.standard_normal(L)
                kw["l2"] = np.array([10.0, 12.0, 42.0, 16.0]) * noise
                heads = 2.0 * (1 + 0.05 * rng.standard_normal((L, H)))
                heads[1] /= 5
                kw["heads"] = heads
            out.append(
                step(i, int(rng.integers(3, 200)), trace=f"ref{t}", entropy=float(rng.uniform(0.1, entropy_hi)), **kw)
            )
    return out


def by_trace(steps: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    traces: dict[str, list[dict[str, Any]]] = {}
    for s in steps:
        traces.setdefault(s["trace_id"], []).append(s)
    return list(traces.values())


def shares(policy: RiskPolicy, steps: list[dict[str, Any]]) -> tuple[float, float]:
    """Share of the traces that alert at some step, and that raise high_entropy at some step."""
    alerted = flagged = 0
    traces = by_trace(steps)
    for trace in traces:
        risk = TraceRisk(policy)
        seen = [risk.update(s) for s in trace]
        alerted += any(a.severity(policy) is not None for a in seen)
        flagged += any("high_entropy" in a.flags for a in seen)
    return alerted / len(traces), flagged / len(traces)


def check_notes(policy: RiskPolicy) -> None:
    missing = [f for f in tunable_fields() if f not in policy.notes]
    assert not missing, f"{policy.name}: no note for {missing}"
    bad = {f: n for f, n in policy.notes.items() if not n.startswith(("fitted: ", "hand-set: "))}
    assert not bad, f"{policy.name}: notes must start 'fitted: ' or 'hand-set: ': {bad}"


@pytest.mark.parametrize("path", sorted(POLICY_DIR.glob("*.json")), ids=lambda p: p.name)
def test_every_tunable_number_of_a_shipped_policy_says_fitted_or_hand_set(path: Path) -> None:
    policy = RiskPolicy.from_json(path.read_text(encoding="utf-8"))
    check_notes(policy)
    # what the calibrator fits must say so in the shipped file (not a stale fallback note)
    for name in ("entropy_bits", "collapse_z", "blowup_z", "alert_score", "critical_score", "heads", "norm_ratio"):
        assert policy.notes[name].startswith("fitted: "), (name, policy.notes[name])


def test_the_policy_folder_holds_at_least_the_default_models_policy() -> None:
    assert "evostream/t5-tiny-suite" in load_policies()


def test_the_fallback_and_a_calibrated_policy_note_every_number() -> None:
    check_notes(RiskPolicy())
    check_notes(calibrate(reference(60), "toy@1"))
    assert {"name", "family", "notes", "calibration"}.isdisjoint(tunable_fields())
    assert {"weights", "entropy_weight", "z_std_floor", "position_buckets", "alert_rate"} <= set(tunable_fields())


def test_a_wider_entropy_spread_moves_the_entropy_threshold() -> None:
    narrow = calibrate(reference(entropy_hi=1.5), "toy@1")
    wide = calibrate(reference(entropy_hi=3.0), "toy@1")
    # same uniform draws stretched: the fitted threshold stretches with them
    assert 1.0 < narrow.entropy_bits < 1.5
    assert wide.entropy_bits == pytest.approx(0.1 + (narrow.entropy_bits - 0.1) * 2.9 / 1.4, rel=1e-3)


def test_heavier_reference_tails_move_the_z_thresholds() -> None:
    plain = calibrate(reference(), "toy@1")
    heavy = calibrate(reference(outlier_every=10), "toy@1")
    assert heavy.blowup_z > 2 * plain.blowup_z > 0
    assert heavy.collapse_z < 2 * plain.collapse_z < 0


def test_fitted_thresholds_hold_their_target_share_of_reference_traces_and_are_tight() -> None:
    steps = reference(400)
    policy = calibrate(steps, "toy@1")
    alerted, flagged = shares(policy, steps)
    assert alerted <= policy.alert_rate and flagged <= policy.flag_rate
    # a hair lower and more reference traces cross: the numbers sit on the reference, not on a round default
    looser = replace(policy, alert_score=policy.alert_score - 2e-6, entropy_bits=policy.entropy_bits - 2e-6)
    alerted2, flagged2 = shares(looser, steps)
    assert alerted2 > alerted and flagged2 > flagged
    assert policy.critical_score >= policy.alert_score


def test_hand_set_numbers_come_from_the_base_policy_unchanged() -> None:
    base = replace(
        RiskPolicy(),
        min_steps=5,
        weights={**RiskPolicy().weights, "high_entropy": 0.4},
        alert_rate=0.05,
        notes={**RiskPolicy().notes, "min_steps": "hand-set: five, for this test"},
    )
    policy = calibrate(reference(), "toy@1", base)
    assert policy.min_steps == 5 and policy.weights["high_entropy"] == 0.4
    assert policy.notes["min_steps"] == "hand-set: five, for this test"
    default = calibrate(reference(), "toy@1")
    assert policy.alert_score < default.alert_score  # a 5% target alerts on more of the reference than 0.5%


def test_the_policy_loader_ignores_subfolders(tmp_path: Path) -> None:
    (tmp_path / "toy.json").write_text(RiskPolicy(family="toy").to_json())
    (tmp_path / "drift").mkdir()
    (tmp_path / "drift" / "other.json").write_text('{"not": "a risk policy"}')
    assert list(load_policies(tmp_path)) == ["toy"]


def test_a_policy_file_without_a_flags_weight_is_refused_when_loaded() -> None:
    text = RiskPolicy().to_json().replace('"high_entropy": 0.5', '"high_entropy_typo": 0.5')
    with pytest.raises(PolicyError, match=re.escape("no weight for ['high_entropy']")):
        RiskPolicy.from_json(text)


def test_a_reference_run_too_short_to_calibrate_is_a_calibration_error() -> None:
    steps = reference(traces=3)
    assert len(steps) < 50
    with pytest.raises(CalibrationError, match=f"at least 50 steps, got {len(steps)}"):
        calibrate(steps, "toy@1")


def test_a_malformed_policy_file_is_a_policy_error_that_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "good.json").write_text(RiskPolicy().to_json(), encoding="utf-8")
    bad = tmp_path / "typo.json"
    bad.write_text(RiskPolicy().to_json().replace('"alert_score"', '"alert_scor"'), encoding="utf-8")
    with pytest.raises(PolicyError, match=re.escape(f"{bad}: unknown risk policy fields ['alert_scor']")):
        load_policies(tmp_path)
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(PolicyError, match=re.escape(f"{bad}: not a risk policy")):
        load_policies(tmp_path)


@pytest.mark.parametrize("dropped", [["entropy_bits"], ["weights", "heads"], ["notes"], ["family"]])
def test_a_policy_file_missing_a_field_is_refused_not_filled_with_the_code_default(
    tmp_path: Path, dropped: list[str]
) -> None:
    raw = json.loads(RiskPolicy(name="toy@1", family="toy", entropy_bits=1.25).to_json())
    for name in dropped:
        del raw[name]
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(PolicyError, match=re.escape(f"{path}: risk policy toy@1 lacks {dropped}")):
        load_policies(tmp_path)


def test_a_policy_file_with_every_field_but_calibration_loads_as_written(tmp_path: Path) -> None:
    policy = RiskPolicy(name="toy@1", family="toy", entropy_bits=1.25)
    raw = json.loads(policy.to_json())
    del raw["calibration"]  # bookkeeping, not a number anything is judged by
    (tmp_path / "toy.json").write_text(json.dumps(raw), encoding="utf-8")
    assert load_policies(tmp_path) == {"toy": policy}


@pytest.mark.parametrize("entropy_weight", [0.9, 0.0])  # 0: no entropy term, it cannot alert
def test_calibrate_writes_from_which_mean_entropy_the_entropy_term_alone_alerts(entropy_weight: float) -> None:
    base = replace(RiskPolicy(), entropy_weight=entropy_weight)
    policy = calibrate(reference(), "toy@1", base)
    a, w, e = policy.alert_score, policy.entropy_weight, policy.entropy_bits
    if a < w:
        x = a * e / (w - a)  # entropy_weight * m / (m + entropy_bits) = alert_score, solved for m
        assert policy.entropy_alone_alerts_at() == pytest.approx(x, rel=1e-12)
        said = (
            f"with no flag raised, the entropy term alone alerts when mean entropy >= {x:.4g} bits "
            "(alert_score x entropy_bits / (entropy_weight - alert_score))"
        )
    else:
        assert policy.entropy_alone_alerts_at() is None
        said = "the entropy term alone never alerts (alert_score >= entropy_weight)"
    assert policy.notes["alert_score"].startswith("fitted: ")
    assert policy.notes["alert_score"].endswith(f"; with this policy's alert_score: {said}")
    assert policy.notes["entropy_weight"] == f"{base.notes['entropy_weight']}; with this policy's alert_score: {said}"
    # calibrating again from the written policy replaces the clause instead of adding a second one
    again = calibrate(reference(), "toy@1", policy)
    assert again.notes["entropy_weight"].count("with this policy's alert_score") == 1
    assert (a < w) == (entropy_weight == 0.9)  # both branches are exercised


def test_an_unflagged_trace_alerts_exactly_from_the_crossover_mean_entropy() -> None:
    # no baselines (no z flags) and high_entropy out of reach: only the continuous term can move the score
    policy = replace(RiskPolicy(), entropy_weight=0.3, alert_score=0.2, entropy_bits=4.0, min_steps=1000)
    x = policy.entropy_alone_alerts_at()
    assert x == pytest.approx(8.0)
    for m, alerts in ((x * 1.001, True), (x * 0.999, False)):
        risk = TraceRisk(policy)
        seen = [risk.update(step(i, 10 + i, trace="c", entropy=m)) for i in range(6)]
        assert seen[-1].flags == ()
        assert (seen[-1].severity(policy) == "WARNING") is alerts
