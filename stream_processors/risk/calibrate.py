"""Calibrate a RiskPolicy from a reference run: the step records of a healthy model on known-good traffic.

What is fitted, and how (each fitted value's note in the policy says the same with the run's numbers):
- ``heads`` / ``norm_ratio``: per decoding position, the mean and sd of the log head signal and of the log hidden
  norm ratio to layer 0.
- ``entropy_bits``: the per-step threshold at which ``flag_rate`` of the reference traces would raise
  high_entropy (at any prefix, with the policy's share and min_steps rules), so the flag means "unlike this model
  on healthy traffic" whatever the family's natural entropy level is.
- ``collapse_z`` / ``blowup_z``: the reference tail of the very z the flags test (per trace, the most extreme
  value that would have fired it), at ``flag_rate``, pushed out by ``z_margin``.
- ``alert_score`` / ``critical_score``: just above the (1 - ``alert_rate``) and (1 - ``critical_rate``) quantiles
  of each reference trace's highest score at any step, folded through the real ``TraceRisk`` with the thresholds
  above: so at most those shares of healthy traces alert, early or final. The notes of ``alert_score`` and
  ``entropy_weight`` then say from which mean entropy the continuous entropy term alone (no flag) alerts: where
  alert_score is fitted below entropy_weight, an unflagged trace's alert is a mean-entropy threshold.

Quantiles are taken on the conservative side (numpy's "higher"/"lower" methods, no interpolation): on n traces at
most floor(rate * n) of them lie beyond a fitted threshold, so a small reference run errs towards fewer flags.

Everything else (the rates and margin themselves, weights, loop rules, buckets) is hand-set: it comes from the
``base`` policy (the code defaults, or the previous policy file) unchanged, with its note.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from evostream.core.errors import CalibrationError
from evostream.schemas.tensors import step_heads, step_layers
from evostream.stream_processors.risk.policy import F64, Baseline, RiskPolicy, family_of, log_magnitude
from evostream.stream_processors.risk.score import TraceRisk

CROSSOVER = "; with this policy's alert_score: "
"""Joins a note and what the fitted alert_score means for the entropy term (replaced on each calibration)."""
MIN_STEPS = 50
MIN_PER_BUCKET = 5
"""A position bucket with fewer reference steps than this borrows the pooled mean and sd of all steps."""


def calibrate(steps: Iterable[Mapping[str, Any]], model_version: str, base: RiskPolicy | None = None) -> RiskPolicy:
    """A policy for ``model_version``'s family fitted on ``steps`` (healthy traffic, any order); the hand-set
    fields, the target rates and the margin come from ``base`` (default: the uncalibrated fallback)."""
    base = base or RiskPolicy()
    traces: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for s in steps:
        if any(s["layer_nonfinite"]):
            raise CalibrationError(f"reference step {s['trace_id']}/{s['step']} has non-finite hidden states")
        traces[str(s["trace_id"])].append(s)
    n_steps = sum(len(v) for v in traces.values())
    if n_steps < MIN_STEPS:
        raise CalibrationError(f"a reference run needs at least {MIN_STEPS} steps, got {n_steps}")
    for v in traces.values():
        v.sort(key=lambda s: int(s["step"]))

    family = family_of(model_version)
    policy = replace(
        base,
        name=f"{family}-calibrated@1",
        family=family,
        heads=_baseline(base, traces, lambda s: log_magnitude(step_heads(s))),
        norm_ratio=_baseline(base, traces, _norm_ratio),
    )
    n = len(traces)
    notes = dict(base.notes)
    buckets = len(base.position_buckets)
    notes["heads"] = f"fitted: per-position mean and sd of log head signal over {n_steps:,} reference steps"
    notes["norm_ratio"] = f"fitted: per-position mean and sd of log(L2 layer l / L2 layer 0) over {n_steps:,} steps"
    if buckets > 1:
        notes["heads"] += f" ({buckets} position buckets; fewer than {MIN_PER_BUCKET} steps: pooled)"
        notes["norm_ratio"] += f" ({buckets} position buckets; fewer than {MIN_PER_BUCKET} steps: pooled)"

    for name, what in (
        ("collapse_z", "head statistics"),
        ("blowup_z", "hidden norms of 2+ layers"),
        ("entropy_bits", "trace with min_steps steps"),
    ):
        notes[name] = f"hand-set: kept from the base policy: the reference run has no {what}"
    fitted: dict[str, Any] = {}
    rate = base.flag_rate
    collapse, blowup = _z_tails(policy, traces)
    if len(collapse):
        q = float(np.quantile(collapse, rate, method="lower"))
        if q < 0:
            fitted["collapse_z"] = round(base.z_margin * q, 3)
            notes["collapse_z"] = (
                f"fitted: z_margin x the {rate:.2%} quantile ({q:.2f}) over {len(collapse)} "
                "reference traces of the highest z at which each would have raised "
                "attention_collapse"
            )
        else:
            notes["collapse_z"] = f"hand-set: kept from the base policy: the reference tail ({q:.2f}) is not below 0"
    if len(blowup):
        q = float(np.quantile(blowup, 1 - rate, method="higher"))
        if q > 0:
            fitted["blowup_z"] = round(base.z_margin * q, 3)
            notes["blowup_z"] = (
                f"fitted: z_margin x the {1 - rate:.2%} quantile ({q:.2f}) over {len(blowup)} "
                "reference traces of each trace's highest layer-norm z"
            )
        else:
            notes["blowup_z"] = f"hand-set: kept from the base policy: the reference tail ({q:.2f}) is not above 0"
    crit = _entropy_criticals(base, traces)
    if len(crit):
        fitted["entropy_bits"] = _just_above(float(np.quantile(crit, 1 - rate, method="higher")))
        notes["entropy_bits"] = (
            f"fitted: per-step threshold at which {rate:.2%} of {len(crit)} reference traces "
            "(those with >= min_steps steps) would raise high_entropy at some prefix: the "
            f"{1 - rate:.2%} quantile of each trace's critical entropy"
        )
    policy = replace(policy, **fitted)

    peaks = np.array([_peak_score(policy, v) for v in traces.values()])
    alert = _just_above(float(np.quantile(peaks, 1 - base.alert_rate, method="higher")))
    critical = max(alert, _just_above(float(np.quantile(peaks, 1 - base.critical_rate, method="higher"))))
    notes["alert_score"] = (
        f"fitted: just above the {1 - base.alert_rate:.2%} quantile of the highest score each "
        f"of {n} reference traces reaches at any step (<= alert_rate of them alert)"
    )
    notes["critical_score"] = (
        f"fitted: just above the {1 - base.critical_rate:.2%} quantile of the same "
        f"{n} peak scores (so <= critical_rate of them are CRITICAL)"
    )
    policy = replace(policy, alert_score=alert, critical_score=critical)
    crossover = policy.entropy_alone_alerts_at()
    alone = (
        f"with no flag raised, the entropy term alone alerts when mean entropy >= {crossover:.4g} bits "
        f"(alert_score x entropy_bits / (entropy_weight - alert_score))"
        if crossover is not None
        else "the entropy term alone never alerts (alert_score >= entropy_weight)"
    )
    notes["entropy_weight"] = f"{notes['entropy_weight'].split(CROSSOVER)[0]}{CROSSOVER}{alone}"
    notes["alert_score"] += f"{CROSSOVER}{alone}"
    return replace(
        policy,
        notes=notes,
        calibration={
            "model_version": model_version,
            "traces": n,
            "steps": n_steps,
            "reference_peak_score": {"median": round(float(np.median(peaks)), 6), "max": round(float(peaks.max()), 6)},
            "date": dt.date.today().isoformat(),
        },
    )


def _norm_ratio(s: Mapping[str, Any]) -> F64:
    l2 = step_layers(s, "layer_hidden_l2")
    if len(l2) < 2:
        return np.empty(0)
    out: F64 = log_magnitude(l2[1:]) - log_magnitude(l2[:1])
    return out


def _baseline(base: RiskPolicy, traces: Mapping[str, list[Mapping[str, Any]]], stat: Any) -> Baseline:
    groups: dict[int, list[F64]] = defaultdict(list)
    for v in traces.values():
        for s in v:
            x = stat(s)
            if x.size:
                groups[base.bucket(int(s["step"]))].append(x)
    if not groups:
        return Baseline([], [])
    pooled = np.concatenate([np.stack(v) for v in groups.values()])
    mean, std = [], []
    for b in range(len(base.position_buckets)):
        x = np.stack(groups[b]) if len(groups.get(b, [])) >= MIN_PER_BUCKET else pooled
        mean.append(np.round(x.mean(0), 5).tolist())
        std.append(np.round(x.std(0), 5).tolist())
    return Baseline(mean, std)


def _z_tails(policy: RiskPolicy, traces: Mapping[str, list[Mapping[str, Any]]]) -> tuple[F64, F64]:
    """Per trace: the highest collapse_z that would have fired attention_collapse on some step (the k-th lowest
    head z, k = the share's head count), and the highest layer-norm z of any step."""
    collapse, blowup = [], []
    for v in traces.values():
        lo, hi = math.inf, -math.inf
        for s in v:
            heads = step_heads(s).astype(np.float64)
            z = policy.head_z(int(s["step"]), heads) if heads.size else None
            if z is not None:
                k = max(1, math.ceil(policy.collapse_head_share * z.size))
                lo = min(lo, float(np.sort(z, axis=None)[k - 1]))
            z = policy.norm_z(int(s["step"]), step_layers(s, "layer_hidden_l2").astype(np.float64))
            if z is not None and z.size:
                hi = max(hi, float(z.max()))
        if math.isfinite(lo):
            collapse.append(lo)
        if math.isfinite(hi):
            blowup.append(hi)
    return np.asarray(collapse), np.asarray(blowup)


def _entropy_criticals(base: RiskPolicy, traces: Mapping[str, list[Mapping[str, Any]]]) -> F64:
    """Per trace (with at least min_steps steps): the highest per-step threshold at which it would raise
    high_entropy at some prefix, i.e. max over prefixes of the k-th largest entropy, k = max(min_steps,
    ceil(share * prefix length))."""
    out = []
    for v in traces.values():
        h = [float(s["entropy_bits"]) for s in v]
        best = -math.inf
        for n in range(base.min_steps, len(h) + 1):
            k = max(base.min_steps, math.ceil(base.high_entropy_share * n))
            best = max(best, sorted(h[:n], reverse=True)[k - 1])
        if math.isfinite(best):
            out.append(best)
    return np.asarray(out)


def _peak_score(policy: RiskPolicy, steps: list[Mapping[str, Any]]) -> float:
    risk = TraceRisk(policy)
    return max(risk.update(s).score for s in steps)


def _just_above(x: float) -> float:
    """The next value on a 1e-6 grid strictly above ``x`` (scores are rounded to 6 decimals, a flag or alert
    fires at >= / >, so a reference value exactly at the quantile stays below)."""
    return math.floor(x * 1e6 + 1) / 1e6
