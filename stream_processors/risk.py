"""Risk of one generation, step by step (pure numpy, no Faust): health flags, a score in [0, 1], blamed layers and a
one-line reason.

``TraceRisk`` folds GenerationStep records of one trace in order; its state is a plain dict (``to_state`` /
``from_state``) so a stream processor can keep it in a changelog-backed table. Thresholds come from a
``RiskPolicy`` calibrated on a reference run of the same model family (``stream_processors.calibrate``); every
number a policy holds is either fitted there or hand-set in the policy file, and its ``notes`` say which.

Flags:
- ``nonfinite_hidden``: a NaN or Inf in some layer's hidden state (blames the first such layer: later layers only
  inherit it).
- ``repetition_loop``: the last tokens repeat with a period p <= ``repeat_max_period`` for ``repeat_min_cycles``
  cycles inside a sliding window, judged on token ids, or on the per-layer hidden-state signature ([log L2, log
  max-abs] across layers) of steps p apart being far closer than the window's typical pair, while the tokens also
  repeat at least once.
- ``high_entropy``: at least ``high_entropy_share`` of the steps (and ``min_steps`` of them) above the calibrated
  per-step entropy threshold.
- ``attention_collapse``: on some step, a share of heads far below the model's own baseline for that decoding
  position (z of the log head signal < ``collapse_z``), so a seq2seq first step, whose heads always look
  different, does not fire.
- ``mid_layer_anomaly``: a layer's hidden norm relative to layer 0 far above its baseline (z > ``blowup_z``).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.tensors import step_heads, step_layers

F64 = npt.NDArray[np.float64]
EPS = 1e-6
"""Keeps log(|x| + EPS) finite for exact zeros: a numerical guard, not a tunable."""


def position_bucket(step: int, buckets: Sequence[int] = (0, 1, 2, 3, 8)) -> int:
    """Index of the last bucket start at or below ``step``."""
    b = 0
    for i, lo in enumerate(buckets):
        if step >= lo:
            b = i
    return b


@dataclass(frozen=True)
class Baseline:
    """Mean and standard deviation per position bucket of a per-layer (or per-layer-per-head) log statistic."""

    mean: list[Any]
    std: list[Any]

    def z(self, bucket: int, values: F64, std_floor: float) -> F64 | None:
        if not self.mean or bucket >= len(self.mean):
            return None
        mu, sd = np.asarray(self.mean[bucket]), np.asarray(self.std[bucket])
        if mu.shape != values.shape:
            return None
        out: F64 = (values - mu) / np.maximum(sd, std_floor)
        return out


FLAGS = ("nonfinite_hidden", "repetition_loop", "mid_layer_anomaly", "attention_collapse", "high_entropy")

HAND_SET_NOTES: dict[str, str] = {
    "position_buckets": "hand-set: decoding positions 0, 1, 2, 3-7 and 8+ get their own baselines, because a "
    "seq2seq decoder's first steps look unlike its later ones; finer buckets would starve on short answers",
    "z_std_floor": "hand-set: a statistic that never varied on the reference (sd 0) is judged against this sd "
    "instead, so one ulp of change is not an infinite z",
    "weights": "hand-set: how far each flag alone moves the score (noisy-OR); a non-finite state is certain, a "
    "loop nearly so, the statistical flags are evidence rather than proof",
    "entropy_weight": "hand-set: the most the continuous mean-entropy term adds to the score (it approaches this "
    "as mean entropy grows, half-way at entropy_bits), so scores rank unflagged traces too; whether it alone "
    "can alert depends on the fitted alert_score",
    "entropy_bits": "hand-set: uncalibrated fallback, well above the healthy entropy of small models",
    "high_entropy_share": "hand-set: high_entropy needs this share of the steps, so one hesitant token is not a flag",
    "min_steps": "hand-set: and at least this many steps, so a 1-token answer cannot be 'mostly uncertain'",
    "repeat_window": "hand-set: tokens (and hidden signatures) kept per trace for the loop test; bounds the state",
    "repeat_max_period": "hand-set: longest loop period looked for",
    "repeat_min_cycles": "hand-set: cycles before a period counts as a loop; 4 keeps doubled letters and short "
    "legitimate repeats out",
    "hidden_repeat_ratio": "hand-set: steps p apart 'repeat' when their hidden signatures are this much closer than "
    "the window's median distance between steps up to 2 * repeat_max_period apart",
    "collapse_z": "hand-set: uncalibrated fallback",
    "collapse_head_share": "hand-set: attention_collapse needs this share of all heads low on one step, so one "
    "quiet head is not a collapse",
    "blowup_z": "hand-set: uncalibrated fallback",
    "alert_score": "hand-set: uncalibrated fallback: any one flag alerts",
    "critical_score": "hand-set: uncalibrated fallback: two flags together are CRITICAL",
    "flag_rate": "hand-set: calibration target: share of healthy reference traces allowed to raise each "
    "statistical flag (high_entropy, attention_collapse, mid_layer_anomaly)",
    "alert_rate": "hand-set: calibration target: share of healthy reference traces allowed to alert (WARNING or "
    "worse, early or final)",
    "critical_rate": "hand-set: calibration target: share of healthy reference traces allowed to be CRITICAL",
    "z_margin": "hand-set: the fitted z thresholds are pushed this factor beyond the reference tail, because the "
    "baselines are fitted on the same steps (in-sample z is optimistic)",
    "heads": "hand-set: uncalibrated fallback has no baseline (attention_collapse cannot fire)",
    "norm_ratio": "hand-set: uncalibrated fallback has no baseline (mid_layer_anomaly cannot fire)",
}
"""Why each number of the uncalibrated fallback is what it is; the calibrator replaces the notes of what it fits."""


@dataclass(frozen=True)
class RiskPolicy:
    """Thresholds for one model family; ``name`` (with its version) is quoted in every alert.

    The defaults are the uncalibrated fallback. ``notes`` maps every tunable field (``tunable_fields()``) to a line
    that starts "fitted: " (how, from what) or "hand-set: " (and why)."""

    name: str = "uncalibrated@1"
    family: str = "*"
    position_buckets: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 8])
    z_std_floor: float = 0.05
    weights: dict[str, float] = field(
        default_factory=lambda: {
            "nonfinite_hidden": 1.0,
            "repetition_loop": 0.7,
            "mid_layer_anomaly": 0.6,
            "attention_collapse": 0.5,
            "high_entropy": 0.5,
        }
    )
    entropy_weight: float = 0.3
    entropy_bits: float = 4.0
    high_entropy_share: float = 0.3
    min_steps: int = 3
    repeat_window: int = 48
    repeat_max_period: int = 8
    repeat_min_cycles: int = 4
    hidden_repeat_ratio: float = 0.05
    collapse_z: float = -6.0
    collapse_head_share: float = 0.25
    blowup_z: float = 8.0
    alert_score: float = 0.5
    critical_score: float = 0.8
    flag_rate: float = 0.005
    alert_rate: float = 0.005
    critical_rate: float = 0.001
    z_margin: float = 1.25
    heads: Baseline = field(default_factory=lambda: Baseline([], []))
    """log(head signal + eps) per bucket, [layer][head]."""
    norm_ratio: Baseline = field(default_factory=lambda: Baseline([], []))
    """log(hidden L2 of layer l / hidden L2 of layer 0) per bucket, [layer]."""
    notes: dict[str, str] = field(default_factory=lambda: dict(HAND_SET_NOTES))
    calibration: dict[str, Any] = field(default_factory=dict)
    """Where the numbers came from: model version, traces, steps, date."""

    def __post_init__(self) -> None:
        missing = set(FLAGS) - set(self.weights)
        if missing:  # a hand-edited policy file would otherwise fail on the first trace that raises the flag
            raise ValueError(f"risk policy {self.name}: no weight for {sorted(missing)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> RiskPolicy:
        """A policy file holds every field but ``calibration``: a missing one is refused, not filled with the code
        default, which is the uncalibrated fallback's number and would be quoted as this policy's own."""
        d: dict[str, Any] = json.loads(text)
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{source}: unknown risk policy fields {unknown}")
        missing = [f for f in ("name", "family", *tunable_fields(), "notes") if f not in d]
        if missing:
            raise ValueError(f"{source}: risk policy {d.get('name', '?')} lacks {missing} (every field must be in the "
                             "file; the code defaults are only the fallback when no file exists)")  # fmt: skip
        d["heads"] = Baseline(**d["heads"])
        d["norm_ratio"] = Baseline(**d["norm_ratio"])
        return cls(**d)

    def bucket(self, step: int) -> int:
        return position_bucket(step, self.position_buckets)

    def head_z(self, step: int, heads: F64) -> F64 | None:
        """z of log(head signal) against this decoding position's baseline; None without a matching baseline."""
        return self.heads.z(self.bucket(step), log_magnitude(heads), self.z_std_floor)

    def entropy_alone_alerts_at(self) -> float | None:
        """Mean entropy (bits) from which the continuous entropy term alone, with no flag raised, reaches
        alert_score: entropy_weight * m / (m + entropy_bits) >= alert_score solved for m. None when alert_score is
        not below entropy_weight (the term alone never alerts). Below all flags, the alert is this threshold."""
        w, a = self.entropy_weight, self.alert_score
        return a * self.entropy_bits / (w - a) if 0 < a < w else None

    def norm_z(self, step: int, l2: F64) -> F64 | None:
        """z of log(hidden L2 of layers 1.. / layer 0) against this position's baseline."""
        if len(l2) < 2:
            return None
        return self.norm_ratio.z(self.bucket(step), log_magnitude(l2[1:]) - log_magnitude(l2[:1]), self.z_std_floor)


def tunable_fields() -> tuple[str, ...]:
    """The RiskPolicy fields that hold a number someone chose or fitted (all but identity and bookkeeping)."""
    return tuple(f.name for f in fields(RiskPolicy) if f.name not in ("name", "family", "notes", "calibration"))


POLICY_DIR = Path(__file__).parent / "policies"


def family_of(model_version: str) -> str:
    """``name@hash`` -> ``name``."""
    return model_version.split("@", 1)[0]


def load_policies(folder: Path = POLICY_DIR) -> dict[str, RiskPolicy]:
    """Every ``*.json`` policy in ``folder``, by family."""
    out = {}
    for path in sorted(folder.glob("*.json")):
        p = RiskPolicy.from_json(path.read_text(encoding="utf-8"), str(path))
        out[p.family] = p
    return out


def policy_for(policies: Mapping[str, RiskPolicy], model_version: str) -> RiskPolicy:
    return policies.get(family_of(model_version)) or policies.get("*") or RiskPolicy()


@dataclass(frozen=True)
class Assessment:
    score: float
    flags: tuple[str, ...]
    blamed_layers: tuple[int, ...]
    reason: str
    steps: int

    def severity(self, policy: RiskPolicy) -> str | None:
        """CRITICAL, WARNING, or None when the score is under policy."""
        if "nonfinite_hidden" in self.flags or self.score >= policy.critical_score:
            return "CRITICAL"
        return "WARNING" if self.score >= policy.alert_score else None


def log_magnitude(x: npt.ArrayLike) -> F64:
    """log(|x| + eps): the scale on which baselines and signatures are compared."""
    return np.log(np.abs(np.asarray(x, dtype=np.float64)) + EPS)


def _period(seq: Sequence[Any], max_period: int, min_cycles: int, same: Any = None) -> int:
    """Smallest p such that the last p * min_cycles items repeat with period p; 0 if none."""
    for p in range(1, max_period + 1):
        n = p * min_cycles
        if len(seq) < n:
            break
        tail = seq[-n:]
        if all((same(tail[i], tail[i - p]) if same else tail[i] == tail[i - p]) for i in range(p, n)):
            return p
    return 0


class TraceRisk:
    """The running risk of one trace."""

    def __init__(self, policy: RiskPolicy, state: Mapping[str, Any] | None = None) -> None:
        self.policy = policy
        s = dict(state or {})
        self.steps: int = s.get("steps", 0)
        self.tokens: list[int] = list(s.get("tokens", []))
        self.signatures: list[list[float]] = _unpack_rows(s.get("signatures", ""))
        self.high_entropy: int = s.get("high_entropy", 0)
        self.entropy_sum: float = s.get("entropy_sum", 0.0)
        self.nonfinite_layers: set[int] = set(s.get("nonfinite_layers", []))
        self.collapse: dict[int, float] = {int(k): v for k, v in s.get("collapse", {}).items()}
        self.blowup: dict[int, float] = {int(k): v for k, v in s.get("blowup", {}).items()}
        self.loop: str = s.get("loop", "")
        self.alerted: bool = s.get("alerted", False)

    def to_state(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "tokens": self.tokens,
            "signatures": _pack_rows(self.signatures),
            "high_entropy": self.high_entropy,
            "entropy_sum": self.entropy_sum,
            "nonfinite_layers": sorted(self.nonfinite_layers),
            "collapse": {str(k): v for k, v in self.collapse.items()},
            "blowup": {str(k): v for k, v in self.blowup.items()},
            "loop": self.loop,
            "alerted": self.alerted,
        }

    def update(self, step: Mapping[str, Any]) -> Assessment:
        """Fold one GenerationStep record in; returns the assessment of the trace so far."""
        p = self.policy
        self.steps += 1
        entropy = float(step["entropy_bits"])
        self.entropy_sum += entropy if math.isfinite(entropy) else 0.0
        if not math.isfinite(entropy) or entropy > p.entropy_bits:
            self.high_entropy += 1
        nonfinite = [i for i, n in enumerate(step["layer_nonfinite"]) if n]
        self.nonfinite_layers.update(nonfinite)
        l2 = step_layers(step, "layer_hidden_l2").astype(np.float64)
        maxabs = step_layers(step, "layer_hidden_maxabs").astype(np.float64)
        position = int(step["step"])
        if not nonfinite:
            z = p.norm_z(position, l2)
            if z is not None:
                for layer in np.flatnonzero(z > p.blowup_z):
                    self.blowup[int(layer) + 1] = max(self.blowup.get(int(layer) + 1, 0.0), float(z[layer]))
        heads = step_heads(step).astype(np.float64)
        if heads.size and not nonfinite:
            z = p.head_z(position, heads)
            if z is not None:
                low = z < p.collapse_z
                if low.mean() >= p.collapse_head_share:
                    for layer in np.flatnonzero(low.any(axis=1)):
                        self.collapse[int(layer)] = max(self.collapse.get(int(layer), 0.0), float(low[layer].mean()))
        self.tokens.append(int(step["token_id"]))
        sig = np.concatenate([log_magnitude(l2), log_magnitude(maxabs)]) if len(l2) else np.empty(0)
        self.signatures.append([float(x) for x in np.nan_to_num(sig, nan=0.0, posinf=50.0, neginf=-50.0)])
        del self.tokens[: -p.repeat_window], self.signatures[: -p.repeat_window]
        if not self.loop:
            self.loop = self._loop()
        return self.assess()

    def _loop(self) -> str:
        p = self.policy
        period = _period(self.tokens, p.repeat_max_period, p.repeat_min_cycles)
        if period:
            return f"tokens repeat with period {period}"
        # the hidden-state test only runs while the tokens repeat at least once (cheap test first)
        if len(self.signatures[-1]) == 0 or not _period(self.tokens, p.repeat_max_period, 2):
            return ""
        sig = np.asarray(self.signatures)
        lags = [np.linalg.norm(sig[k:] - sig[:-k], axis=1) for k in range(1, min(len(sig), 2 * p.repeat_max_period))]
        scale = float(np.median(np.concatenate(lags))) if lags else 0.0

        def close(a: list[float], b: list[float]) -> bool:
            return float(np.linalg.norm(np.subtract(a, b))) <= p.hidden_repeat_ratio * scale

        period = _period(self.signatures, p.repeat_max_period, p.repeat_min_cycles, close)
        return f"hidden states repeat with period {period}" if period else ""

    def assess(self) -> Assessment:
        p = self.policy
        parts: list[tuple[str, str, list[int]]] = []
        if self.nonfinite_layers:
            layers = sorted(self.nonfinite_layers)
            spread = f" (and after it: {_fmt(layers[1:])})" if len(layers) > 1 else ""
            parts.append(("nonfinite_hidden", f"NaN/Inf in the hidden state from layer {layers[0]}{spread}",
                          layers[:1]))  # fmt: skip
        if self.loop:
            parts.append(("repetition_loop", self.loop, []))
        if self.blowup:
            layers = sorted(self.blowup)
            worst = max(self.blowup.values())
            parts.append(("mid_layer_anomaly", f"hidden norm of layer {_fmt(layers)} {worst:.0f} sd above baseline",
                          layers))  # fmt: skip
        if self.collapse:
            layers = sorted(self.collapse)
            share = max(self.collapse.values())
            parts.append(("attention_collapse", f"{share:.0%} of heads in layer {_fmt(layers)} far below baseline",
                          layers))  # fmt: skip
        if self.high_entropy >= p.min_steps and self.high_entropy >= p.high_entropy_share * self.steps:
            parts.append(("high_entropy", f"{self.high_entropy} of {self.steps} steps above {p.entropy_bits:.2f} bits",
                          []))  # fmt: skip
        # a continuous term under the flags, so that scores rank traces even when nothing is flagged; it never
        # saturates (half-way at the per-step threshold), so it keeps ranking far above the healthy range
        mean_h = self.entropy_sum / self.steps if self.steps else 0.0
        keep = 1.0 - p.entropy_weight * mean_h / (mean_h + p.entropy_bits) if mean_h > 0 else 1.0
        for name, _, _ in parts:
            keep *= 1.0 - p.weights[name]
        flags = tuple(name for name, _, _ in parts)
        blamed = tuple(sorted({layer for _, _, layers in parts for layer in layers}))
        reason = "; ".join(text for _, text, _ in parts) or f"healthy (mean entropy {mean_h:.2f} bits)"
        return Assessment(round(1.0 - keep, 6), flags, blamed, reason, self.steps)


def _pack_rows(rows: list[list[float]]) -> str:
    """Rows of equal length as base64 float32 with the row length in front (compact in a JSON changelog)."""
    if not rows:
        return ""
    return f"{len(rows[0])}:" + base64.b64encode(np.asarray(rows, dtype="<f4").tobytes()).decode()


def _unpack_rows(text: str) -> list[list[float]]:
    if not text:
        return []
    width, data = text.split(":", 1)
    flat = np.frombuffer(base64.b64decode(data), dtype="<f4").astype(np.float64)
    rows: list[list[float]] = flat.reshape(-1, int(width)).tolist() if int(width) else [[] for _ in flat]
    return rows


def _fmt(layers: Sequence[int]) -> str:
    return ", ".join(str(x) for x in layers)
