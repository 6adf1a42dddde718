"""A risk probe learned from the log: the steps of a trace pooled into one feature vector, and a logistic regression
from those features to "this answer is wrong", fitted on labelled outcomes.

Pure numpy: the processors can serve it, ``evostream risk train`` fits it and ``bench.risk_quality`` measures it, all
with this one module. The fit is Newton's method on the L2-penalized log-likelihood from zero weights, in a fixed
order, so the same labelled traces give the same probe; ``to_bytes`` writes it as canonical JSON (sorted keys,
numbers rounded to 12 significant digits), the bytes the artifact store hashes."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from evostream.core.errors import EvoError
from evostream.schemas.tensors import step_heads, step_layers, unpack_f16

F64 = npt.NDArray[np.float64]
FORMAT = "evostream.risk-probe/1"
_TOKEN_FEATURES = (
    "entropy_mean",
    "entropy_max",
    "entropy_std",
    "entropy_first",
    "entropy_last",
    "margin_mean",
    "margin_min",
    "topk_mass_mean",
    "topk_mass_min",
    "surprisal_mean",
    "surprisal_max",
    "log_steps",
    "nonfinite_steps",
)
_LAYER_FEATURES = ("hidden_l2", "hidden_maxabs", "ffn_sparsity", "head_entropy_mean", "head_entropy_std")


class ProbeError(EvoError):
    """A probe that cannot be built, read or applied (no labels of one class, another model's layer count)."""


def feature_names(num_layers: int, sketch_dim: int = 0) -> list[str]:
    """The features of a model with ``num_layers`` layers and ``sketch_dim`` numbers of hidden-state sketch per step
    (``GenerationStep.hidden_sketch``; 0: none), in the order ``trace_features`` returns them."""
    per_layer = [f"{name}_l{i}" for name in _LAYER_FEATURES for i in range(num_layers)]
    sketch = [f"sketch_{kind}_{i}" for kind in ("mean", "last") for i in range(sketch_dim)]
    return [*_TOKEN_FEATURES, *per_layer, *sketch]


def sketch_dim_of(step: Mapping[str, Any]) -> int:
    """How many numbers of hidden-state sketch a step carries (0 for none, and for steps written before it)."""
    return len(step.get("hidden_sketch") or b"") // 2


def _clean(x: float) -> float:
    """A logged statistic as the probe reads it: NaN as 0, an infinity as +-1e6 (a fault is its own signal)."""
    return 0.0 if math.isnan(x) else max(-1e6, min(1e6, x))


class FeatureSums:
    """The running sums a trace's features are computed from, step by step, so the processors keep a few numbers per
    trace instead of its steps; ``to_state`` / ``from_state`` round-trip them through a JSON changelog."""

    def __init__(self, num_layers: int, state: Mapping[str, Any] | None = None, sketch_dim: int = 0) -> None:
        self.num_layers = num_layers
        self.sketch_dim = sketch_dim
        s = state or {}
        self.sketch_sum = list(map(float, s.get("sketch_sum", [0.0] * sketch_dim)))
        self.sketch_last = list(map(float, s.get("sketch_last", [0.0] * sketch_dim)))
        self.sketch_n = int(s.get("sketch_n", 0))
        self.n = int(s.get("n", 0))
        self.token = list(map(float, s.get("token", [0.0] * 12)))
        """entropy sum, sum of squares, max, first, last; margin sum, min; top-k mass sum, min; surprisal sum, max;
        steps with a non-finite hidden state"""
        self.layer = [list(map(float, row)) for row in s.get("layer", [[0.0] * num_layers] * len(_LAYER_FEATURES))]
        self.layer_n = list(map(int, s.get("layer_n", [0] * len(_LAYER_FEATURES))))

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"n": self.n, "token": self.token, "layer": self.layer, "layer_n": self.layer_n}
        if self.sketch_dim:
            state.update(sketch_sum=self.sketch_sum, sketch_last=self.sketch_last, sketch_n=self.sketch_n)
        return state

    def update(self, step: Mapping[str, Any]) -> None:
        h, m = _clean(float(step["entropy_bits"])), _clean(float(step["top1_top2_margin"]))
        k, s = _clean(float(step["topk_mass"])), _clean(float(step["surprisal_bits"]))
        t = self.token
        if self.n == 0:
            t[2], t[3], t[6], t[8], t[10] = h, h, m, k, s
        t[0] += h
        t[1] += h * h
        t[2] = max(t[2], h)
        t[4] = h
        t[5] += m
        t[6] = min(t[6], m)
        t[7] += k
        t[8] = min(t[8], k)
        t[9] += s
        t[10] = max(t[10], s)
        t[11] += 1.0 if any(step["layer_nonfinite"]) else 0.0
        self.n += 1
        heads = step_heads(step)
        rows = [step_layers(step, f) for f in ("layer_hidden_l2", "layer_hidden_maxabs", "ffn_sparsity")]
        if heads.shape[0] == self.num_layers and heads.size:
            rows += [heads.mean(axis=1), heads.std(axis=1)]
        if self.sketch_dim and sketch_dim_of(step) == self.sketch_dim:
            sketch = np.nan_to_num(
                unpack_f16(step["hidden_sketch"]).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0
            )
            self.sketch_sum = [a + float(b) for a, b in zip(self.sketch_sum, sketch, strict=True)]
            self.sketch_last = [float(b) for b in sketch]
            self.sketch_n += 1
        for i, row in enumerate(rows):
            if row.size == self.num_layers:
                clean = np.nan_to_num(row.astype(np.float64), nan=0.0, posinf=1e6, neginf=-1e6)
                self.layer[i] = [a + float(b) for a, b in zip(self.layer[i], clean, strict=True)]
                self.layer_n[i] += 1

    def features(self) -> F64:
        """The feature vector, in ``feature_names(num_layers)`` order."""
        if not self.n:
            raise ProbeError("a trace with no steps has no features")
        t, n = self.token, self.n
        mean_h = t[0] / n
        tokens = [
            mean_h,
            t[2],
            math.sqrt(max(0.0, t[1] / n - mean_h * mean_h)),
            t[3],
            t[4],
            t[5] / n,
            t[6],
            t[7] / n,
            t[8],
            t[9] / n,
            t[10],
            math.log1p(n),
            t[11],
        ]
        layer = np.array(
            [
                [v / c for v in row] if c else [0.0] * self.num_layers
                for row, c in zip(self.layer, self.layer_n, strict=True)
            ]
        )
        layer[0:2] = np.log1p(np.abs(layer[0:2]))
        mean = [v / self.sketch_n for v in self.sketch_sum] if self.sketch_n else [0.0] * self.sketch_dim
        return np.concatenate([np.array(tokens), layer.reshape(-1), np.array(mean), np.array(self.sketch_last)])


def trace_features(steps: Sequence[Mapping[str, Any]], num_layers: int, sketch_dim: int = 0) -> F64:
    """One trace's steps (GenerationStep records, in order) pooled into the probe's feature vector."""
    sums = FeatureSums(num_layers, sketch_dim=sketch_dim)
    for step in steps:
        sums.update(step)
    return sums.features()


def _round(x: float) -> float:
    return float(f"{x:.12g}")


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    """A learned model's canonical bytes (sorted keys, no spaces, no NaN): what the artifact store hashes."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def standard_logistic(
    x: F64, center: Sequence[float], scale: Sequence[float], weights: Sequence[float], bias: float
) -> F64:
    """sigmoid(bias + weights . (x - center) / scale) for each row of ``x``: a logistic model on standardized
    features, as the risk probe and the routing prompt model apply theirs."""
    z = (x - np.array(center)) / np.array(scale) @ np.array(weights) + bias
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))), dtype=np.float64)


@dataclass(frozen=True)
class RiskProbe:
    """P(wrong) = sigmoid(bias + weights . (features - center) / scale), for one model family's layer count."""

    family: str
    num_layers: int
    features: tuple[str, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    l2: float
    trained_on: Mapping[str, Any]
    """Where its labels came from (log ranges, split names, counts): the lineage that rebuilds it."""
    sketch_dim: int = 0
    """Numbers of hidden-state sketch per step among its features (0: it reads none)."""
    alert_at: float = 0.5
    """P(wrong) from which a FINAL report alerts (WARNING): more likely wrong than right."""
    critical_at: float = 0.8
    """P(wrong) from which the alert is CRITICAL."""

    def severity(self, p_wrong: float) -> str | None:
        if p_wrong >= self.critical_at:
            return "CRITICAL"
        return "WARNING" if p_wrong >= self.alert_at else None

    def probability(self, x: F64) -> F64:
        """P(wrong) for each row of ``x`` (features in ``self.features`` order)."""
        x = np.atleast_2d(x)
        if x.shape[1] != len(self.features):
            raise ProbeError(f"the probe takes {len(self.features)} features, got {x.shape[1]}")
        return standard_logistic(x, self.center, self.scale, self.weights, self.bias)

    def score(self, steps: Sequence[Mapping[str, Any]]) -> float:
        """P(wrong) of one trace from its steps."""
        return float(self.probability(trace_features(steps, self.num_layers, self.sketch_dim))[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "family": self.family,
            "num_layers": self.num_layers,
            "features": list(self.features),
            "center": [_round(v) for v in self.center],
            "scale": [_round(v) for v in self.scale],
            "weights": [_round(v) for v in self.weights],
            "bias": _round(self.bias),
            "l2": self.l2,
            "trained_on": dict(self.trained_on),
            "sketch_dim": self.sketch_dim,
            "alert_at": self.alert_at,
            "critical_at": self.critical_at,
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON: the same probe gives the same bytes (and the same artifact hash)."""
        return canonical_json(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> RiskProbe:
        try:
            d = json.loads(data)
            if d.get("format") != FORMAT:
                raise ProbeError(f"not a risk probe of format {FORMAT} (got {d.get('format')!r})")
            probe = cls(
                family=str(d["family"]),
                num_layers=int(d["num_layers"]),
                features=tuple(str(f) for f in d["features"]),
                center=tuple(float(v) for v in d["center"]),
                scale=tuple(float(v) for v in d["scale"]),
                weights=tuple(float(v) for v in d["weights"]),
                bias=float(d["bias"]),
                l2=float(d["l2"]),
                trained_on=dict(d["trained_on"]),
                sketch_dim=int(d.get("sketch_dim", 0)),
                alert_at=float(d.get("alert_at", 0.5)),
                critical_at=float(d.get("critical_at", 0.8)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ProbeError(f"not a readable risk probe: {e}") from e
        n = len(probe.features)
        if not (len(probe.center) == len(probe.scale) == len(probe.weights) == n):
            raise ProbeError(f"a probe of {n} features needs {n} centers, scales and weights")
        return probe


def fit_probe(
    x: F64,
    wrong: npt.NDArray[np.bool_],
    family: str,
    num_layers: int,
    l2: float = 1.0,
    trained_on: Mapping[str, Any] | None = None,
    groups: Sequence[str] | None = None,
    iterations: int = 100,
    sketch_dim: int = 0,
) -> RiskProbe:
    """Logistic regression of ``wrong`` on the standardized rows of ``x`` (L2 penalty ``l2`` on the weights, none on
    the bias), by Newton's method from zero until the step is below 1e-10.

    With ``groups`` (each trace's task), the fit gives each group an intercept of its own, so the weights learn what
    tells wrong from right within a group rather than which group is which; the probe keeps the weights, and its bias
    is refitted on all traces with the weights fixed."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(wrong, dtype=np.float64)
    names = feature_names(num_layers, sketch_dim)
    if x.ndim != 2 or x.shape != (len(y), len(names)):
        raise ProbeError(f"expected {len(y)} rows of {len(names)} features, got {x.shape}")
    if y.min() == y.max():
        raise ProbeError("the labels must hold both right and wrong answers")
    center = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0  # a constant feature stays 0 after centering and gets no weight
    standard = (x - center) / scale
    if groups is None:
        intercepts = np.ones((len(y), 1))
    else:
        labels = np.asarray(groups)
        intercepts = (labels[:, None] == np.unique(labels)[None, :]).astype(np.float64)
    k = intercepts.shape[1]
    w = logistic_newton(np.hstack([intercepts, standard]), y, np.r_[np.zeros(k), np.full(len(names), l2)], iterations)
    weights = w[k:]
    bias = (
        w[0]
        if groups is None
        else logistic_newton(np.ones((len(y), 1)), y, np.zeros(1), iterations, standard @ weights)[0]
    )
    return RiskProbe(
        family=family,
        num_layers=num_layers,
        features=tuple(names),
        center=tuple(float(v) for v in center),
        scale=tuple(float(v) for v in scale),
        weights=tuple(float(v) for v in weights),
        bias=float(bias),
        l2=l2,
        trained_on=dict(trained_on or {}),
        sketch_dim=sketch_dim,
    )


def logistic_newton(z: F64, y: F64, penalty: F64, iterations: int = 100, offset: F64 | None = None) -> F64:
    """Penalized logistic regression coefficients of ``y`` on the columns of ``z`` (plus a fixed ``offset``): Newton's
    method from zero until the step is below 1e-10; ``penalty`` is the L2 weight of each column (0: none)."""
    w = np.zeros(z.shape[1])
    base = np.zeros(len(y)) if offset is None else offset
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w + base, -50, 50)))
        grad = z.T @ (p - y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    return w
