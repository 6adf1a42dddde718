"""Drift statistics between a reference window and a current window of completions (pure numpy, no Faust).

Three views, each reported on its own, and a combined decision:
- embedding shift: squared maximum mean discrepancy (MMD²) of the 384-d prompt embeddings, RBF kernel with the
  median-heuristic bandwidth of the reference, fired by a permutation test;
- vocabulary change: Jensen-Shannon divergence (bits) of the generated-token distributions, and the rate of
  generated tokens never seen in the reference;
- intent variance: the population stability index (PSI) of the share of requests per intent cluster (k-means on
  the reference embeddings), reported with the usual bands 0.1 (watch) and 0.25 (shift); it fires above 0.25 or
  above its small-sample null quantile, whichever is larger.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.stats import chi2

from evostream.core.errors import FoldError
from evostream.stream_processors.drift.policy import F64, DriftPolicy


@dataclass(frozen=True)
class Statistic:
    name: str
    value: float
    threshold: float
    fired: bool
    p_value: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class DriftResult:
    statistics: tuple[Statistic, ...]
    sample_count: int

    @property
    def fired(self) -> bool:
        return any(s.fired for s in self.statistics)

    def by_name(self) -> dict[str, Statistic]:
        return {s.name: s for s in self.statistics}


def _sq_dists(a: F64, b: F64) -> F64:
    d: F64 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def median_bandwidth(x: F64) -> float:
    """Median pairwise squared distance (the usual RBF bandwidth heuristic); 1.0 for degenerate input."""
    d = _sq_dists(x, x)
    off = d[~np.eye(len(x), dtype=bool)]
    med = float(np.median(off)) if off.size else 0.0
    return med if med > 0 else 1.0


def mmd2_unbiased(kernel: F64, n: int) -> float:
    """Unbiased MMD² from the joint kernel matrix of ``n`` reference rows followed by the current rows."""
    m = kernel.shape[0] - n
    kxx, kyy, kxy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    sxx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def mmd2_null(kernel: F64, n: int, perms: npt.NDArray[np.intp], chunk: int = 256) -> F64:
    """``mmd2_unbiased(kernel[np.ix_(p, p)], n)`` for every permutation ``p`` (a row of ``perms``), as matrix products.

    A permutation only decides which rows form the first sample: with ``s`` its 0/1 membership vector, the sums
    over the first sample's pairs, over its pairs with the rest, and over the rest's pairs are ``s'Ks``,
    ``s'K1 - s'Ks`` and ``1'K1 - 2 s'K1 + s'Ks``. One product per block of permutations replaces a gathered
    matrix per permutation (the drift agent's largest cost under load: 2,000 of them per window; bench.processors,
    see docs/benchmarks.md#stream-processors)."""
    size = kernel.shape[0]
    m = size - n
    rows, diag = kernel.sum(1), np.diag(kernel).copy()
    total, trace = float(rows.sum()), float(diag.sum())
    out = np.empty(len(perms))
    for start in range(0, len(perms), chunk):
        block = perms[start : start + chunk]
        s = np.zeros((len(block), size))
        s[np.arange(len(block))[:, None], block[:, :n]] = 1.0
        xx = ((s @ kernel) * s).sum(1)
        x_all = s @ rows
        x_diag = s @ diag
        sxx = (xx - x_diag) / (n * (n - 1))
        syy = (total - 2.0 * x_all + xx - (trace - x_diag)) / (m * (m - 1))
        out[start : start + len(block)] = sxx + syy - 2.0 * (x_all - xx) / (n * m)
    return out


def mmd_test(
    reference: F64,
    current: F64,
    permutations: int,
    rng: np.random.Generator,
    bandwidth: float | None = None,
    alpha: float = 0.01,
) -> tuple[float, float, float]:
    """MMD² of the two samples, its permutation p-value, and the (1 - alpha) quantile of its permutation null."""
    if len(reference) < 2 or len(current) < 2:
        raise FoldError("MMD needs at least two samples on each side")
    z = np.concatenate([reference, current]).astype(np.float64)
    bw = bandwidth if bandwidth is not None else median_bandwidth(reference.astype(np.float64))
    kernel = np.exp(-_sq_dists(z, z) / bw)
    n = len(reference)
    stat = mmd2_unbiased(kernel, n)
    null = mmd2_null(kernel, n, np.stack([rng.permutation(len(z)) for _ in range(permutations)]))
    p_value = (1.0 + float((null >= stat).sum())) / (permutations + 1.0)
    return stat, p_value, float(np.quantile(null, 1.0 - alpha))


def js_divergence_bits(p: Mapping[int, int], q: Mapping[int, int]) -> float:
    """Jensen-Shannon divergence of two count distributions, in bits (0 = same, 1 = disjoint)."""
    keys = sorted(set(p) | set(q))
    if not keys:
        return 0.0
    a = np.array([p.get(k, 0) for k in keys], dtype=np.float64)
    b = np.array([q.get(k, 0) for k in keys], dtype=np.float64)
    if a.sum() == 0 or b.sum() == 0:
        return 1.0 if a.sum() != b.sum() else 0.0
    a /= a.sum()
    b /= b.sum()
    m = 0.5 * (a + b)

    def kl(x: F64) -> float:
        nz = x > 0
        return float((x[nz] * np.log2(x[nz] / m[nz])).sum())

    return 0.5 * kl(a) + 0.5 * kl(b)


def _js_bits_dense(a: F64, b: F64) -> float:
    p, q = a / a.sum(), b / b.sum()
    m = 0.5 * (p + q)
    out = 0.0
    for x in (p, q):
        nz = x > 0
        out += 0.5 * float((x[nz] * np.log2(x[nz] / m[nz])).sum())
    return out


def new_token_rate(reference_vocab: Iterable[int], current: Mapping[int, int]) -> float:
    """Share of the current window's generated tokens that never occurred in the reference."""
    total = sum(current.values())
    if total == 0:
        return 0.0
    vocab = set(reference_vocab)
    return sum(c for t, c in current.items() if t not in vocab) / total


def psi(reference_shares: Sequence[float] | F64, current_shares: Sequence[float] | F64, eps: float = 1e-4) -> float:
    """Population stability index: sum over bins of (cur - ref) * ln(cur / ref), with empty bins floored at eps."""
    r = np.maximum(np.asarray(reference_shares, dtype=np.float64), eps)
    c = np.maximum(np.asarray(current_shares, dtype=np.float64), eps)
    r /= r.sum()
    c /= c.sum()
    return float(((c - r) * np.log(c / r)).sum())


@dataclass
class IntentClusters:
    """k-means centroids of reference prompt embeddings (cosine geometry: rows are L2-normalised)."""

    centroids: F64

    @classmethod
    def fit(cls, embeddings: F64, k: int, rng: np.random.Generator, iterations: int = 50) -> IntentClusters:
        x = _unit(embeddings)
        k = min(k, len(x))
        # k-means++ seeding, then Lloyd iterations
        c = [x[rng.integers(len(x))]]
        for _ in range(1, k):
            d = np.min(_sq_dists(x, np.array(c)), axis=1)
            c.append(x[rng.choice(len(x), p=d / d.sum())] if d.sum() > 0 else x[rng.integers(len(x))])
        centroids = np.array(c)
        for _ in range(iterations):
            labels = np.argmin(_sq_dists(x, centroids), axis=1)
            moved = np.array([x[labels == j].mean(0) if (labels == j).any() else centroids[j] for j in range(k)])
            if np.allclose(moved, centroids):
                break
            centroids = moved
        return cls(centroids)

    def assign(self, embeddings: F64) -> npt.NDArray[np.int64]:
        labels: npt.NDArray[np.int64] = np.argmin(_sq_dists(_unit(embeddings), self.centroids), axis=1).astype(np.int64)
        return labels

    def shares(self, embeddings: F64, smoothing: float = 0.5) -> F64:
        """Share of ``embeddings`` per cluster, with ``smoothing`` pseudo-counts per cluster (an empty bin would
        otherwise dominate PSI through ln(0))."""
        counts = np.bincount(self.assign(embeddings), minlength=len(self.centroids)).astype(np.float64) + smoothing
        out: F64 = counts / counts.sum()
        return out


def _unit(x: F64) -> F64:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    out: F64 = x / np.where(n > 0, n, 1.0)
    return out


@dataclass
class Window:
    """Completions gathered for one window: prompt embeddings and generated-token counts."""

    embeddings: list[Sequence[float]] = field(default_factory=list)
    tokens: Counter[int] = field(default_factory=Counter)
    start_us: int = 0
    end_us: int = 0
    token_lists: list[list[int]] = field(default_factory=list)
    """Each completion's generated tokens (kept for the reference: its vocabulary null is resampled from them)."""

    def add(self, embedding: Sequence[float], token_ids: Iterable[int], at_us: int) -> None:
        if embedding:
            self.embeddings.append(embedding)
        ids = [int(t) for t in token_ids]
        self.token_lists.append(ids)
        self.tokens.update(ids)
        self.start_us = at_us if not self.start_us else min(self.start_us, at_us)
        self.end_us = max(self.end_us, at_us)

    def __len__(self) -> int:
        return len(self.embeddings)

    def matrix(self) -> F64:
        return np.asarray(self.embeddings, dtype=np.float64)


class DriftDetector:
    """Compares windows against one fixed reference window."""

    def __init__(self, reference: Window, policy: DriftPolicy, seed: int = 0) -> None:
        if len(reference) < max(2, policy.min_samples):
            raise FoldError(f"reference window has {len(reference)} samples; at least {policy.min_samples} needed")
        self.reference = reference
        self.policy = policy
        self.seed = seed
        ref = reference.matrix()
        self._ref = ref
        self._bandwidth = median_bandwidth(ref)
        self.intents = IntentClusters.fit(ref, policy.intent_clusters, np.random.default_rng(seed))
        self._ref_shares = self.intents.shares(ref)
        self._ref_rows = self._token_rows(reference)

    @staticmethod
    def _token_rows(reference: Window) -> F64:
        """[completions, reference vocabulary] token counts of each reference completion."""
        vocab = {t: i for i, t in enumerate(sorted(reference.tokens))}
        rows = np.zeros((len(reference.token_lists), max(1, len(vocab))), dtype=np.float64)
        for r, ids in enumerate(reference.token_lists):
            for t in ids:
                rows[r, vocab[t]] += 1
        return rows

    def _vocabulary_null(self, m: int, rng: np.random.Generator) -> tuple[float, float]:
        """The largest JS (bits) and new-token rate between resampled reference completions: n against m."""
        rows = self._ref_rows
        n = len(rows)
        if n < 2 or m < 1 or self.policy.vocabulary_resamples < 1:
            return 0.0, 0.0
        js_max = ntr_max = 0.0
        for _ in range(self.policy.vocabulary_resamples):
            ref = rows[rng.integers(n, size=n)].sum(0)
            win = rows[rng.integers(n, size=m)].sum(0)
            if ref.sum() == 0 or win.sum() == 0:
                continue
            js_max = max(js_max, _js_bits_dense(ref, win))
            ntr_max = max(ntr_max, float(win[ref == 0].sum() / win.sum()))
        return js_max, ntr_max

    def compare(self, window: Window) -> DriftResult | None:
        """The statistics of ``window`` against the reference; None while the window is too small to judge."""
        p = self.policy
        if len(window) < p.min_samples:
            return None
        rng = np.random.default_rng(self.seed)  # same permutations for every window: reproducible reports
        cur = window.matrix()
        stat, p_value, cut = mmd_test(self._ref, cur, p.mmd_permutations, rng, self._bandwidth, p.mmd_alpha)
        js = js_divergence_bits(self.reference.tokens, window.tokens)
        ntr = new_token_rate(self.reference.tokens, window.tokens)
        js_null, ntr_null = self._vocabulary_null(len(window.token_lists), rng)
        js_cut, ntr_cut = max(p.js_bits, js_null), max(p.new_token_rate, ntr_null)
        shares = self.intents.shares(cur)
        intent_psi = psi(self._ref_shares, shares)
        band = "shift" if intent_psi >= p.psi_shift else "watch" if intent_psi >= p.psi_watch else "stable"
        k = len(self.intents.centroids)
        psi_cut = max(
            p.psi_shift, float(chi2.ppf(1 - p.psi_alpha, max(1, k - 1))) * (1 / len(cur) + 1 / len(self._ref))
        )
        stats = (
            Statistic("embedding_mmd2", stat, cut, p_value < p.mmd_alpha, p_value),
            Statistic("vocabulary_js_bits", js, js_cut, js > js_cut),
            Statistic("new_token_rate", ntr, ntr_cut, ntr > ntr_cut),
            Statistic("intent_psi", intent_psi, psi_cut, intent_psi >= psi_cut, detail=band),
        )
        return DriftResult(stats, len(window))
