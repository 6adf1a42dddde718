"""The few summaries every benchmark prints: a percentile, and min / median / max over repeats."""

from __future__ import annotations

import statistics


def pct(xs: list[float], q: int) -> float:
    """The q-th percentile (inclusive method; the value itself for one sample)."""
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


def spread(xs: list[float], fmt: str) -> str:
    """``min / median / max`` of repeats, each formatted with ``fmt``."""
    return " / ".join(format(v, fmt) for v in (min(xs), statistics.median(xs), max(xs)))
