"""Risk of one generation, step by step (pure numpy, no Faust): health flags, a score in [0, 1], blamed layers and a
one-line reason.

``TraceRisk`` folds GenerationStep records of one trace in order; its state is a plain dict (``to_state`` /
``from_state``) so a stream processor can keep it in a changelog-backed table. Thresholds come from a
``RiskPolicy`` calibrated on a reference run of the same model family (``stream_processors.risk.calibrate``); every
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
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evostream.schemas.tensors import step_heads, step_layers
from evostream.stream_processors.risk.policy import RiskPolicy, log_magnitude


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
        # float32, as the state stores them: a trace folded in one go and one stored and reloaded step by step
        # see the same signatures
        self.signatures.append(np.nan_to_num(sig, nan=0.0, posinf=50.0, neginf=-50.0).astype(np.float32).tolist())
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
            parts.append(
                ("nonfinite_hidden", f"NaN/Inf in the hidden state from layer {layers[0]}{spread}", layers[:1])
            )
        if self.loop:
            parts.append(("repetition_loop", self.loop, []))
        if self.blowup:
            layers = sorted(self.blowup)
            worst = max(self.blowup.values())
            parts.append(
                ("mid_layer_anomaly", f"hidden norm of layer {_fmt(layers)} {worst:.0f} sd above baseline", layers)
            )
        if self.collapse:
            layers = sorted(self.collapse)
            share = max(self.collapse.values())
            parts.append(
                ("attention_collapse", f"{share:.0%} of heads in layer {_fmt(layers)} far below baseline", layers)
            )
        if self.high_entropy >= p.min_steps and self.high_entropy >= p.high_entropy_share * self.steps:
            parts.append(
                ("high_entropy", f"{self.high_entropy} of {self.steps} steps above {p.entropy_bits:.2f} bits", [])
            )
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
