from __future__ import annotations

import random

import numpy as np
import pytest

from evostream.rollout.gates import GATE_NAMES, GateError, Verdict, WindowStats, gate, judge
from evostream.rollout.stats import quantile_upper_bound

TOLERANCES = {"alert_rate": 0.10, "accuracy": 0.05, "p95_latency": 0.20, "error_rate": 0.02}
"""The default plan's gates (issue28.md)."""


def window(
    rng: np.random.Generator,
    n: int,
    *,
    alert: float = 0.05,
    error: float = 0.01,
    accuracy: float = 0.8,
    labelled: float = 0.3,
    latency_ms: float = 80.0,
    spread: float = 0.3,
) -> WindowStats:
    """A version's window of ``n`` answers drawn at these rates; latency lognormal around ``latency_ms``."""
    errors = int(rng.binomial(n, error))
    labels = int(rng.binomial(n, labelled))
    ok = n - errors
    return WindowStats(
        answers=n,
        errors=errors,
        alerted=int(rng.binomial(n, alert)),
        labelled=labels,
        correct=int(rng.binomial(labels, accuracy)),
        latency_ms=tuple(float(x) for x in rng.lognormal(np.log(latency_ms), spread, ok)),
    )


def verdict(candidate: WindowStats, incumbent: WindowStats, age_s: float = 61.0, min_samples: int = 30) -> Verdict:
    return judge(
        candidate,
        incumbent,
        tolerances=TOLERANCES,
        confidence=0.99,
        min_samples=min_samples,
        age_s=age_s,
        window_s=60.0,
    ).verdict


def test_a_healthy_candidate_advances_with_every_gate_passing() -> None:
    rng = np.random.default_rng(0)
    j = judge(
        window(rng, 60),
        window(rng, 3000),
        tolerances=TOLERANCES,
        confidence=0.99,
        min_samples=30,
        age_s=61.0,
        window_s=60.0,
    )
    assert j.verdict is Verdict.ADVANCE
    assert set(j.gates) == set(GATE_NAMES)
    for g in j.gates.values():
        assert g["verdict"] == "pass"
        assert 0.0 < g["p_value"] <= 1.0
        assert g["confidence"] == 0.99
        assert {"candidate", "incumbent", "n_candidate", "n_incumbent", "tolerance"} <= set(g)
    assert j.evidence()["verdict"] == "ADVANCE"


def test_a_healthy_window_waits_until_it_is_old_enough_and_large_enough() -> None:
    rng = np.random.default_rng(1)
    cand, inc = window(rng, 60), window(rng, 3000)
    assert verdict(cand, inc, age_s=30.0) is Verdict.WAIT
    assert verdict(cand, inc, min_samples=100) is Verdict.WAIT
    j = judge(cand, inc, tolerances=TOLERANCES, confidence=0.99, min_samples=100, age_s=30, window_s=60)
    assert "30.0 s old of 60 s" in j.reason and "60 of 100 candidate answers" in j.reason


def test_a_gate_without_data_on_a_side_passes_with_a_note() -> None:
    rng = np.random.default_rng(2)
    cand = window(rng, 40, labelled=0.0)
    j = judge(cand, window(rng, 2000), tolerances=TOLERANCES, confidence=0.99, min_samples=30, age_s=61, window_s=60)
    acc = j.gates["accuracy"]
    assert acc["verdict"] == "pass" and acc["note"] == "no data" and acc["p_value"] is None
    assert j.verdict is Verdict.ADVANCE
    assert "accuracy: no data" in j.reason


def test_only_the_plans_gates_are_judged() -> None:
    rng = np.random.default_rng(3)
    j = judge(
        window(rng, 40),
        window(rng, 500),
        tolerances={"alert_rate": 0.1},
        confidence=0.99,
        min_samples=30,
        age_s=61,
        window_s=60,
    )
    assert list(j.gates) == ["alert_rate"]
    with pytest.raises(GateError):
        gate("throughput", 0.1, 0.99, WindowStats(), WindowStats())
    with pytest.raises(GateError):
        gate("alert_rate", -0.1, 0.99, WindowStats(), WindowStats())


def test_an_accuracy_tolerance_of_one_or_more_cannot_break() -> None:
    awful = WindowStats(answers=50, labelled=50, correct=0)
    fine = WindowStats(answers=500, labelled=500, correct=450)
    assert gate("accuracy", 0.05, 0.99, awful, fine)["verdict"] == "break"
    assert gate("accuracy", 1.0, 0.99, awful, fine)["verdict"] == "pass"


def test_ten_answers_all_alerted_against_five_percent_abort_at_once() -> None:
    """The issue's regression: 10 candidate answers, every one alerted, against 500 incumbent answers at 5%. The
    window is 3 s old of 60 and far from min_samples: a significant regression does not wait for either."""
    rng = np.random.default_rng(4)
    inc = window(rng, 500)
    inc = WindowStats(inc.answers, inc.errors, 25, inc.labelled, inc.correct, inc.latency_ms)
    cand = WindowStats(10, 0, 10, 0, 0, tuple(inc.latency_ms[:10]))
    j = judge(cand, inc, tolerances=TOLERANCES, confidence=0.99, min_samples=30, age_s=3.0, window_s=60.0)
    assert j.verdict is Verdict.ABORT
    g = j.gates["alert_rate"]
    assert g["verdict"] == "break" and g["candidate"] == 1.0 and g["incumbent"] == 0.05
    assert g["p_value"] < 0.01
    assert "alert_rate broke" in j.reason


@pytest.mark.parametrize(
    ("broken", "n", "how"),
    [
        ("alert_rate", 60, {"alert": 0.25}),  # 5x the incumbent's 5%
        ("accuracy", 150, {"accuracy": 0.4}),  # halved (150 answers, about 45 of them labelled)
        ("p95_latency", 20, {"latency_ms": 160.0}),  # 2x
        ("error_rate", 20, {"error": 0.3}),  # errors
    ],
)
def test_a_broken_candidate_aborts_with_small_samples(broken: str, n: int, how: dict[str, float]) -> None:
    """Each regression alone, over 200 windows of a few dozen candidate answers (a 1% canary step of a minute at a
    few requests a second): the broken gate aborts the rollout in at least 90% of them."""
    rng = np.random.default_rng(5)
    aborted = 0
    for _ in range(200):
        j = judge(
            window(rng, n, **how),
            window(rng, 3000),
            tolerances=TOLERANCES,
            confidence=0.99,
            min_samples=30,
            age_s=5.0,
            window_s=60.0,
        )
        aborted += j.verdict is Verdict.ABORT and j.gates[broken]["verdict"] == "break"
    assert aborted >= 0.9 * 200


@pytest.mark.parametrize(
    ("n_candidate", "n_incumbent"), [(10, 500), (30, 3000), (100, 1000), (500, 5000), (1000, 1000)]
)
def test_a_healthy_candidate_is_falsely_aborted_less_often_than_the_confidence_allows(
    n_candidate: int, n_incumbent: int
) -> None:
    """The same version on both sides, windows drawn apart, 1000 times: each gate breaks in fewer than 1% of them."""
    rng = np.random.default_rng(6)
    windows = 1000
    broke = dict.fromkeys(GATE_NAMES, 0)
    for _ in range(windows):
        j = judge(
            window(rng, n_candidate),
            window(rng, n_incumbent),
            tolerances=TOLERANCES,
            confidence=0.99,
            min_samples=30,
            age_s=61,
            window_s=60,
        )
        for name, g in j.gates.items():
            broke[name] += g["verdict"] == "break"
    assert {name: k / windows for name, k in broke.items()} == {
        name: pytest.approx(0.0, abs=0.01 - 1e-9) for name in GATE_NAMES
    }


def test_the_latency_gate_reads_the_share_above_an_upper_bound_of_the_incumbents_p95() -> None:
    inc = WindowStats(answers=200, latency_ms=tuple(float(x) for x in range(1, 201)))  # p95 = 190.05
    bound = quantile_upper_bound(inc.latency_ms, 0.95, 0.99)
    assert bound is not None and 190.05 < bound[0] <= 200.0 and bound[1] >= 0.99
    slow = WindowStats(answers=20, latency_ms=(400.0,) * 5 + (50.0,) * 15)
    g = gate("p95_latency", 0.2, 0.99, slow, inc)
    assert g["incumbent"] == pytest.approx(190.05)
    assert g["threshold_ms"] == pytest.approx(bound[0] * 1.2)
    assert g["above_threshold"] == 5
    assert g["verdict"] == "break"
    fast = WindowStats(answers=20, latency_ms=(bound[0] * 1.19,) * 20)  # under the threshold: passes
    assert gate("p95_latency", 0.2, 0.99, fast, inc)["verdict"] == "pass"


def test_the_latency_gate_does_not_judge_a_p95_it_cannot_bound() -> None:
    # the window that broke a healthy candidate in the end-to-end test: 15 incumbent samples, whose p95 is close to
    # their maximum, against 9 canary answers of which 3 were slower than 1.2 times it
    inc = WindowStats(answers=15, latency_ms=(30.0,) * 13 + (36.0, 38.4))
    cand = WindowStats(answers=9, latency_ms=(31.0,) * 6 + (50.0, 60.0, 84.2))
    g = gate("p95_latency", 0.2, 0.99, cand, inc)
    assert g["verdict"] == "pass" and "no p95 bound" in g["note"]


def test_a_healthy_candidates_latency_breaks_the_gate_rarely() -> None:
    rng = random.Random(7)
    breaks = 0
    for _ in range(400):
        inc = WindowStats(answers=40, latency_ms=tuple(rng.lognormvariate(3.6, 0.4) for _ in range(40)))
        cand = WindowStats(answers=20, latency_ms=tuple(rng.lognormvariate(3.6, 0.4) for _ in range(20)))
        breaks += gate("p95_latency", 0.2, 0.99, cand, inc)["verdict"] == "break"
    assert breaks <= 4  # 1% of 400


def test_window_stats_doc() -> None:
    s = WindowStats(answers=4, errors=1, alerted=2, labelled=2, correct=1, latency_ms=(10.0, 20.0, 30.0))
    doc = s.doc()
    assert doc["error_rate"] == 0.25 and doc["alert_rate"] == 0.5 and doc["accuracy"] == 0.5
    assert doc["p50_ms"] == 20.0 and doc["latency_samples"] == 3
    assert WindowStats().doc()["alert_rate"] is None
