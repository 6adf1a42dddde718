"""A growing window judged on every tick, as the controller judges it: a healthy candidate is not stopped by the
repeated testing (``gates.judge_window``: breaks count only at fixed looks, with the alpha split over them), and a
broken one is still stopped at its first look.

The simulation draws one window at a time: the incumbent's 600 answers and the candidate's 60 over 60 s (a shadow
phase at 10 requests a second, 10% mirrored), 5% of each side's answers alerted and 1% failed, and judges it on every
tick as ``wiring.rollout.window_evidence`` does: the whole window so far, and each look reached, cut at the time of
its n-th candidate answer (the incumbent too), with the incumbent's rollout baseline (its 600 answers before the
window) while the window holds fewer than ``min_samples`` of its answers. Ticks: every second for the first 15 s,
where re-testing a young window bit (two alerted answers of two "broke" the alert gate), then every 5 s; the rate gates
only (the latency and accuracy gates cost more to judge and peek the same way)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from evostream.rollout import gates
from evostream.rollout.gates import Judgement, Verdict, WindowStats, judge_window, look_sizes
from evostream.views.rollout import RolloutFold
from evostream.wiring.rollout import decide
from tests.rollout.test_decide import CAND, INC, T0, S, fold, rollout
from tests.rollout.traffic import Traffic

TOLERANCES = {"alert_rate": 0.10, "error_rate": 0.02}
MIN_SAMPLES = 30
WINDOW_S = 60
TICKS = (*range(1, 16), *range(20, WINDOW_S + 1, 5))
Answer = tuple[float, bool, bool]  # (time in the window, s; alerted; failed)


def draw(rng: random.Random, n: int, alert: float, start: float = 0.0) -> list[Answer]:
    return sorted((start + rng.random() * WINDOW_S, rng.random() < alert, rng.random() < 0.01) for _ in range(n))


def stats(answers: list[Answer]) -> WindowStats:
    return WindowStats(
        answers=len(answers), errors=sum(e for _, _, e in answers), alerted=sum(a for _, a, _ in answers)
    )


def incumbent(window: list[Answer], baseline: list[Answer], until: float) -> WindowStats:
    mine = [a for a in window if a[0] < until]
    return stats(mine) if len(mine) >= MIN_SAMPLES else stats([*baseline, *mine])


@pytest.fixture
def memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """``gates.judge`` remembered by its arguments: a look reached stays the same judgement on every later tick, so
    the simulation need not pay for it again (the verdicts are the same, only faster)."""
    real: Callable[..., Judgement] = gates.judge
    seen: dict[Any, Judgement] = {}

    def judge(candidate: WindowStats, incumbent: WindowStats, **kw: Any) -> Judgement:
        key = (candidate, incumbent, kw["confidence"], kw["age_s"])
        if key not in seen:
            seen[key] = real(candidate, incumbent, **kw)
        return seen[key]

    monkeypatch.setattr(gates, "judge", judge)


def first_verdict(rng: random.Random, alert: float) -> tuple[Verdict, int, int | None]:
    """One window judged tick by tick until it is decided (or over): the verdict, the candidate answers at that tick,
    and the look that broke (1-based; None: no look broke)."""
    baseline = draw(rng, 600, 0.05, start=-WINDOW_S)
    inc, cand = draw(rng, 600, 0.05), draw(rng, 60, alert)
    for tick in TICKS:
        c = [a for a in cand if a[0] < tick]
        looks = [(stats(c[:n]), incumbent(inc, baseline, c[n - 1][0] + 1e-6)) for n in look_sizes(len(c))]
        j = judge_window(
            stats(c),
            incumbent(inc, baseline, tick),
            looks,
            tolerances=TOLERANCES,
            confidence=0.99,
            min_samples=MIN_SAMPLES,
            age_s=tick,
            window_s=WINDOW_S,
        )
        if j.verdict is not Verdict.WAIT:
            return j.verdict, len(c), None if j.look is None else j.look["index"]
    return Verdict.WAIT, len(cand), None


@pytest.mark.usefixtures("memo")
def test_a_healthy_candidate_judged_on_every_tick_is_falsely_stopped_in_well_under_one_window_in_a_hundred() -> None:
    rng = random.Random(28)
    verdicts = [first_verdict(rng, 0.05)[0] for _ in range(600)]
    aborted = verdicts.count(Verdict.ABORT)
    assert aborted <= 1, f"{aborted} of {len(verdicts)} healthy windows aborted"  # at most 1 in 600: < 0.2%
    assert verdicts.count(Verdict.ADVANCE) >= 590  # and the healthy windows do pass


@pytest.mark.usefixtures("memo")
def test_a_candidate_whose_every_answer_is_alerted_is_stopped_at_its_first_looks() -> None:
    rng = random.Random(5)
    decided = [first_verdict(rng, 1.0) for _ in range(50)]
    assert all(verdict is Verdict.ABORT for verdict, _, _ in decided)
    # at the tick its fifth answer is read: look 1, against the incumbent's rollout baseline (1000 answers) or its
    # window's (50 of them, 5% alerted, whose exact upper bound at 0.99875 can be 25%: then look 2, 10 answers)
    assert all(look in (1, 2) for _, _, look in decided)
    firsts = [n for _, n, look in decided if look == 1]
    assert len(firsts) >= 20 and all(5 <= n < 10 for n in firsts)


def test_two_alerted_answers_of_two_do_not_stop_a_window_five_do() -> None:
    """The review's case, through the controller's decision: 2 of 2 alerted against the incumbent's 5% of 1000 was
    an ABORT (p = 0.0078 < 0.01) on an early tick of a healthy candidate's window."""
    t = Traffic()
    t.answers(INC, 1000, T0, alerted=50, spacing_us=500)  # the shadow phase: the incumbent's rollout baseline
    step_at = T0 + S
    t.answers(CAND, 2, step_at + 1, alerted=2, spacing_us=100_000)
    r, f = rollout(0, step_at), fold(t)
    two = decide(r, f, step_at + S // 2)
    assert two.kind == "wait" and two.evidence["gates"]["alert_rate"]["verdict"] == "break"
    assert "alert_rate not passing yet" in two.reason
    t.answers(CAND, 3, step_at + 200_000, alerted=3, spacing_us=100_000)
    five = decide(r, fold(t), step_at + S // 2)
    assert five.kind == "abort" and five.evidence["look"] == {"index": 1, "of": 8, "n_candidate": 5}


def test_look_sizes_and_their_confidence() -> None:
    assert look_sizes(4) == () and look_sizes(5) == (5,) and look_sizes(39) == (5, 10, 20)
    assert look_sizes(10_000) == (5, 10, 20, 40, 80, 160, 320, 640)
    assert gates.look_confidence(0.99) == pytest.approx(0.99875)


def test_an_empty_fold_has_no_look() -> None:
    assert decide(rollout(0, T0), RolloutFold(), T0 + S).evidence.get("look") is None
