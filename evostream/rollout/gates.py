"""A rollout window judged: the candidate's and the incumbent's statistics over the same window, one one-sided test
per gate (``stats``), and the verdict that moves the rollout (ADVANCE), keeps it where it is (WAIT) or stops it
(ABORT).

The gates (each at the plan's ``confidence``, each with a relative ``tolerance``):

- ``alert_rate``, ``error_rate``: H0 "candidate rate <= incumbent rate * (1 + tolerance)"; the gate breaks when H0 is
  rejected (``stats.ratio_test``, alternative "greater").
- ``accuracy`` (on labelled answers): H0 "candidate accuracy >= incumbent accuracy * (1 - tolerance)"; breaks when
  rejected (alternative "less").
- ``p95_latency``: the threshold is a distribution-free upper confidence bound (at ``confidence``) on the
  incumbent's p95, times (1 + tolerance); H0 "at most 5% of the candidate's answers are slower than it"; breaks when
  rejected (``stats.exceedance_test``). Taking the incumbent's measured p95 as exact broke healthy candidates: from
  15 samples it is close to their maximum. With fewer than ``MIN_LATENCY_SAMPLES`` incumbent samples the gate passes
  with a note. Only answers count (``views.rollout``): a shadow answer is generated after its batch's production
  answers, under other load, so in the shadow phase the gate has no candidate sample.

A gate with no sample on either side (no labelled answer yet, say) passes with the note "no data": it cannot hold a
rollout back, and it cannot break it. The verdict (``judge``, a window judged once): any broken gate -> ABORT, however
young the window; else ADVANCE once the window is ``window_s`` old and has at least ``min_samples`` candidate answers;
else WAIT. A window judged again and again as it grows (the controller, on every tick: ``judge_window``) breaks only
at fixed looks, at its 5th, 10th, 20th, ... 640th candidate answer, each at a confidence that splits the plan's alpha
over the eight looks, and over all of it at its end."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from evostream.core.errors import EvoError
from evostream.rollout.stats import TestResult, exceedance_test, percentile, quantile_upper_bound, ratio_test

GATE_NAMES = ("alert_rate", "accuracy", "p95_latency", "error_rate")
EXCEEDANCE_SHARE = 0.05
"""The share of samples above a p95, by definition: what the latency gate tests the candidate's share against."""
MIN_LATENCY_SAMPLES = 20
"""Incumbent generation times the latency gate needs before it judges (fewer: it passes, saying so)."""


class GateError(EvoError, ValueError):
    """A gate that is not one (a name outside ``GATE_NAMES``, a negative tolerance)."""


class Verdict(StrEnum):
    ADVANCE = "ADVANCE"
    WAIT = "WAIT"
    ABORT = "ABORT"


@dataclass(frozen=True)
class WindowStats:
    """One version's answers over a window: how many, how many failed, how many a RiskAlert flagged, how many were
    labelled and how many of those right, and each answer's generation time (prefill + decode, ms; answers without
    error)."""

    answers: int = 0
    errors: int = 0
    alerted: int = 0
    labelled: int = 0
    correct: int = 0
    latency_ms: tuple[float, ...] = ()

    @property
    def error_rate(self) -> float | None:
        return None if self.answers == 0 else self.errors / self.answers

    @property
    def alert_rate(self) -> float | None:
        return None if self.answers == 0 else self.alerted / self.answers

    @property
    def accuracy(self) -> float | None:
        return None if self.labelled == 0 else self.correct / self.labelled

    def latency(self, q: float) -> float | None:
        """The q-th percentile of the generation times (ms); None without any."""
        return percentile(self.latency_ms, q)

    def doc(self) -> dict[str, Any]:
        """As people and the evidence read it (no raw samples)."""
        return {
            "answers": self.answers,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "alerted": self.alerted,
            "alert_rate": self.alert_rate,
            "labelled": self.labelled,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "latency_samples": len(self.latency_ms),
            "p50_ms": self.latency(50),
            "p95_ms": self.latency(95),
        }


def _evidence(
    candidate: float | None,
    incumbent: float | None,
    n_candidate: int,
    n_incumbent: int,
    tolerance: float,
    confidence: float,
    test: TestResult,
) -> dict[str, Any]:
    if n_candidate == 0 or n_incumbent == 0:
        verdict, p_value, note = "pass", None, "no data"
    else:
        verdict, p_value, note = ("break" if test.rejects(confidence) else "pass"), test.p_value, None
    out: dict[str, Any] = {
        "candidate": candidate,
        "incumbent": incumbent,
        "n_candidate": n_candidate,
        "n_incumbent": n_incumbent,
        "tolerance": tolerance,
        "p_value": p_value,
        "confidence": confidence,
        "verdict": verdict,
        "test": test.method,
    }
    if note is not None:
        out["note"] = note
    return out


def gate(
    name: str, tolerance: float, confidence: float, candidate: WindowStats, incumbent: WindowStats
) -> dict[str, Any]:
    """One gate's evidence: both sides' figure, their sample sizes, the tolerance, the test's p-value, the confidence
    and the gate's verdict ("pass" or "break"; "pass" with ``note: no data`` when a side has no sample)."""
    if tolerance < 0.0:
        raise GateError(f"gate {name}: a tolerance is not negative, got {tolerance}")
    c, i = candidate, incumbent
    if name in ("alert_rate", "error_rate"):
        xc, xi = (c.alerted, i.alerted) if name == "alert_rate" else (c.errors, i.errors)
        test = ratio_test(xc, c.answers, xi, i.answers, 1.0 + tolerance, "greater", confidence)
        rate_c, rate_i = (c.alert_rate, i.alert_rate) if name == "alert_rate" else (c.error_rate, i.error_rate)
        return _evidence(rate_c, rate_i, c.answers, i.answers, tolerance, confidence, test)
    if name == "accuracy":
        if tolerance >= 1.0:  # "worse by all of it or more": no accuracy is below that, the gate cannot break
            test = TestResult(1.0, "none")
        else:
            test = ratio_test(c.correct, c.labelled, i.correct, i.labelled, 1.0 - tolerance, "less", confidence)
        return _evidence(c.accuracy, i.accuracy, c.labelled, i.labelled, tolerance, confidence, test)
    if name == "p95_latency":
        bound = quantile_upper_bound(i.latency_ms, 1.0 - EXCEEDANCE_SHARE, confidence)
        enough = bound is not None and len(i.latency_ms) >= MIN_LATENCY_SAMPLES
        threshold = bound[0] * (1.0 + tolerance) if bound is not None and enough else None
        above = 0 if threshold is None else sum(1 for x in c.latency_ms if x > threshold)
        test = exceedance_test(above, len(c.latency_ms), EXCEEDANCE_SHARE) if enough else TestResult(1.0, "none")
        out = _evidence(c.latency(95), i.latency(95), len(c.latency_ms), len(i.latency_ms), tolerance, confidence, test)
        out["threshold_ms"] = threshold
        out["above_threshold"] = above
        out["incumbent_bound_ms"] = None if bound is None else bound[0]
        out["bound_coverage"] = None if bound is None else bound[1]
        if not enough and "note" not in out:
            out["note"] = f"fewer than {MIN_LATENCY_SAMPLES} incumbent samples: no p95 bound"
        return out
    raise GateError(f"no gate {name!r}: the gates are {', '.join(GATE_NAMES)}")


@dataclass(frozen=True)
class Judgement:
    """A window's verdict, why, and each gate's evidence."""

    verdict: Verdict
    reason: str
    gates: dict[str, dict[str, Any]]
    look: dict[str, Any] | None = None
    """The look of a growing window that broke (``judge_window``): its index, and its candidate answers."""

    def evidence(self) -> dict[str, Any]:
        """What a governance event cites: the verdict, the reason and the gates (and the look that broke)."""
        out = {"verdict": str(self.verdict), "reason": self.reason, "gates": self.gates}
        return out if self.look is None else out | {"look": self.look}


def _broke(name: str, g: dict[str, Any]) -> str:
    figure = "p95" if name == "p95_latency" else "rate" if name.endswith("_rate") else "accuracy"
    return (
        f"{name} broke: candidate {figure} {_num(g['candidate'])} against incumbent {_num(g['incumbent'])} "
        f"(tolerance {g['tolerance']:.0%}; n {g['n_candidate']} vs {g['n_incumbent']}), p = {g['p_value']:.2g} < "
        f"{1 - g['confidence']:.2g}"
    )


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def judge(
    candidate: WindowStats,
    incumbent: WindowStats,
    *,
    tolerances: Mapping[str, float],
    confidence: float,
    min_samples: int,
    age_s: float,
    window_s: float,
) -> Judgement:
    """The verdict on a window ``age_s`` old: ABORT when any gate (one per name in ``tolerances``) breaks; ADVANCE
    when none does, the window is at least ``window_s`` old and the candidate has at least ``min_samples`` answers;
    WAIT otherwise."""
    gates = {name: gate(name, tol, confidence, candidate, incumbent) for name, tol in tolerances.items()}
    broken = [name for name, g in gates.items() if g["verdict"] == "break"]
    if broken:
        return Judgement(Verdict.ABORT, "; ".join(_broke(name, gates[name]) for name in broken), gates)
    waiting = []
    if age_s < window_s:
        waiting.append(f"the window is {age_s:.1f} s old of {window_s:g} s")
    if candidate.answers < min_samples:
        waiting.append(f"{candidate.answers} of {min_samples} candidate answers")
    if waiting:
        return Judgement(Verdict.WAIT, "waiting: " + ", ".join(waiting), gates)
    quiet = [name for name, g in gates.items() if g.get("note") == "no data"]
    passed = f"all {len(gates)} gates pass" + (f" ({', '.join(quiet)}: no data)" if quiet else "")
    return Judgement(Verdict.ADVANCE, f"{passed} over {age_s:.1f} s and {candidate.answers} candidate answers", gates)


# --- a growing window judged on every tick -------------------------------------------------------------------------
FIRST_LOOK = 5
"""The candidate answers of a window's first look; look j is at ``FIRST_LOOK * 2**j`` of them."""
LOOKS = 8
"""Looks per window (j = 0..7: at 5, 10, 20, ... 640 candidate answers); the plan's alpha is spent over them."""


def look_sizes(n_candidate: int) -> tuple[int, ...]:
    """The looks a window with ``n_candidate`` candidate answers has reached: their sizes, in order."""
    return tuple(FIRST_LOOK * 2**j for j in range(LOOKS) if FIRST_LOOK * 2**j <= n_candidate)


def look_confidence(confidence: float) -> float:
    """Each look's confidence: the plan's alpha (1 - confidence) split evenly over the ``LOOKS`` looks (Bonferroni),
    so that all the looks of a window together break a healthy candidate no more often than one test would."""
    return 1.0 - (1.0 - confidence) / LOOKS


def judge_window(
    candidate: WindowStats,
    incumbent: WindowStats,
    looks: Sequence[tuple[WindowStats, WindowStats]],
    *,
    tolerances: Mapping[str, float],
    confidence: float,
    min_samples: int,
    age_s: float,
    window_s: float,
) -> Judgement:
    """A window that grows while it is judged, on every tick: the verdict the controller acts on.

    Testing the whole window again on every tick at ``confidence`` spends its alpha many times over (two alerted
    answers of two against an incumbent's 5% already "break"). So a break before the window's end counts only at the
    fixed **looks**: ``looks[j]`` is both sides' statistics over the window cut at the time of its
    ``FIRST_LOOK * 2**j``-th candidate answer (``look_sizes``), each judged at ``look_confidence``; any look's break
    is an ABORT. The whole window is judged at ``confidence``: once it is ``window_s`` old with ``min_samples``
    candidate answers, ADVANCE when every gate passes, ABORT when one breaks; before that, a broken gate of the whole
    window only holds it back (WAIT). The looks depend only on the data, so a restarted controller finds the same."""
    tol = dict(tolerances)
    at = look_confidence(confidence)
    for j, (c, i) in enumerate(looks):
        # only a look's breaks count: its age and size do not matter (and a look judged again is the same judgement)
        look = judge(c, i, tolerances=tol, confidence=at, min_samples=min_samples, age_s=0.0, window_s=window_s)
        if look.verdict is Verdict.ABORT:
            n = FIRST_LOOK * 2**j
            why = f"look {j + 1} of {LOOKS} (first {n} candidate answers, confidence {at:.4g}): {look.reason}"
            return Judgement(Verdict.ABORT, why, look.gates, {"index": j + 1, "of": LOOKS, "n_candidate": n})
    whole = judge(
        candidate,
        incumbent,
        tolerances=tol,
        confidence=confidence,
        min_samples=min_samples,
        age_s=age_s,
        window_s=window_s,
    )
    if whole.verdict is not Verdict.ABORT:
        return whole
    if age_s >= window_s and candidate.answers >= min_samples:
        return Judgement(Verdict.ABORT, f"at the window's end: {whole.reason}", whole.gates)
    broken = ", ".join(name for name, g in whole.gates.items() if g["verdict"] == "break")
    return Judgement(Verdict.WAIT, f"waiting: {broken} not passing yet (judged at the window's end)", whole.gates)
