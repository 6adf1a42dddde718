"""How well a risk score tells wrong answers: AUROC, recall at a precision, calibration error. Pure numpy, shared
by the validation of a learned probe (``evostream risk train``), ``evostream rescore`` and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]


def _ranks(x: F64) -> F64:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def auroc(scores: Sequence[float] | F64, positive: Sequence[bool] | BOOL) -> float:
    """Probability that a random positive scores above a random negative (ties count half); NaN without both."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if not n1 or not n0:
        return float("nan")
    return float((_ranks(s)[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def recall_at_precision(scores: F64, wrong: BOOL, target: float) -> float:
    """The best recall of wrong answers among cut-offs (alert when score >= cut-off) whose precision reaches
    ``target``; 0 where none does."""
    order = np.argsort(-scores, kind="stable")
    s, w = scores[order], wrong[order].astype(np.float64)
    if not w.sum():
        return float("nan")
    hits = np.cumsum(w)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # a cut-off takes every trace tied with it
    precision = hits[last] / (last + 1)
    ok = precision >= target
    return float(hits[last][ok].max() / w.sum()) if ok.any() else 0.0


def ece(p: F64, wrong: BOOL, bins: int = 10) -> float:
    """Expected calibration error: |mean P(wrong) - share wrong| per equal-width bin, weighted by its traces."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(float(p[m].mean()) - float(wrong[m].mean()))
    return total / len(p)
