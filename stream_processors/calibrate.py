"""Calibrate a RiskPolicy from a reference run: the step records of a healthy model on known-good traffic."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from schemas.tensors import step_heads, step_layers
from stream_processors.risk import POSITION_BUCKETS, Baseline, RiskPolicy, family_of, log_magnitude, position_bucket


def calibrate(
    steps: Iterable[Mapping[str, Any]],
    model_version: str,
    entropy_quantile: float = 0.99,
    min_entropy_bits: float = 0.25,
    **overrides: Any,
) -> RiskPolicy:
    """A policy whose baselines are the per-position mean and spread of the reference steps' statistics.

    The per-step entropy threshold is the ``entropy_quantile`` of the reference entropies; flags then mean "unlike
    this model on healthy traffic", whatever the family's natural level is. A very sure model (the embedded one's
    99th percentile is 0.02 bits) would flag every slightly hesitant answer, so the threshold is at least
    ``min_entropy_bits``."""
    entropies: list[float] = []
    heads: dict[int, list[np.ndarray]] = defaultdict(list)
    ratios: dict[int, list[np.ndarray]] = defaultdict(list)
    traces: set[str] = set()
    for s in steps:
        if any(s["layer_nonfinite"]):
            raise ValueError(f"reference step {s['trace_id']}/{s['step']} has non-finite hidden states")
        traces.add(s["trace_id"])
        entropies.append(float(s["entropy_bits"]))
        b = position_bucket(int(s["step"]))
        h = step_heads(s)
        if h.size:
            heads[b].append(log_magnitude(h))
        l2 = step_layers(s, "layer_hidden_l2")
        if len(l2) > 1:
            ratios[b].append(log_magnitude(l2[1:]) - log_magnitude(l2[:1]))
    if len(entropies) < 50:
        raise ValueError(f"a reference run needs at least 50 steps, got {len(entropies)}")

    def baseline(groups: dict[int, list[np.ndarray]]) -> Baseline:
        if not groups:
            return Baseline([], [])
        mean, std = [], []
        fallback = np.concatenate([np.stack(v) for v in groups.values()])
        for b in range(len(POSITION_BUCKETS)):
            x = np.stack(groups[b]) if len(groups.get(b, [])) >= 5 else fallback
            mean.append(np.round(x.mean(0), 5).tolist())
            std.append(np.round(x.std(0), 5).tolist())
        return Baseline(mean, std)

    family = family_of(model_version)
    return RiskPolicy(
        name=f"{family}-calibrated@1",
        family=family,
        entropy_bits=round(max(min_entropy_bits, float(np.quantile(entropies, entropy_quantile))), 4),
        heads=baseline(heads),
        norm_ratio=baseline(ratios),
        calibration={
            "model_version": model_version,
            "traces": len(traces),
            "steps": len(entropies),
            "entropy_quantile": entropy_quantile,
            "date": dt.date.today().isoformat(),
        },
        **overrides,
    )
