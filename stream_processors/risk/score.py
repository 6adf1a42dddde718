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

``update_block`` folds a block of steps (``StepColumns``) at once, with numpy over the rows, to exactly the state that
``update`` row by row gives: the same counts, sums, flags, windows and float32 signatures. It halts after the first
row at which the trace's severity may rise above what it already alerted, so that its caller assesses the trace at
the very steps the row-by-row fold raises an EARLY alert.
"""

from __future__ import annotations

import binascii
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from evostream.schemas.blocks import StepColumns
from evostream.schemas.tensors import step_heads, step_layers
from evostream.stream_processors.risk.policy import RiskPolicy, log_magnitude

SEVERITY_RANK: dict[str | None, int] = {None: 0, "INFO": 1, "WARNING": 2, "CRITICAL": 3}
SCORE_SLACK = 1e-6
"""How far under a threshold an unrounded score still makes ``update_block`` halt: the score is rounded to 6
decimals (at most 5e-7 away), so no row whose rounded score reaches a threshold is passed over."""


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
        # the signatures as rows (``update``) or as a float32 array (``update_block``), whichever the last fold used
        self._sig_rows: list[list[float]] | None = None
        self._sig_array: npt.NDArray[np.float32] | None = _unpack_array(s.get("signatures", ""))
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
            "signatures": _pack_rows(self._sig_rows) if self._sig_rows is not None else _pack_array(self._sig_array),
            "high_entropy": self.high_entropy,
            "entropy_sum": self.entropy_sum,
            "nonfinite_layers": sorted(self.nonfinite_layers),
            "collapse": {str(k): v for k, v in self.collapse.items()},
            "blowup": {str(k): v for k, v in self.blowup.items()},
            "loop": self.loop,
            "alerted": self.alerted,
        }

    @property
    def signatures(self) -> list[list[float]]:
        """The hidden-state signatures of the last ``repeat_window`` steps, as rows."""
        if self._sig_rows is None:
            rows: list[list[float]] = self._sig_array.astype(np.float64).tolist() if self._sig_array is not None else []
            self._sig_rows, self._sig_array = rows, None
        return self._sig_rows

    def _signature_array(self, width: int) -> npt.NDArray[np.float32]:
        if self._sig_array is None:
            rows = self._sig_rows or []
            self._sig_array = np.asarray(rows, dtype=np.float32) if rows else np.empty((0, width), dtype=np.float32)
            self._sig_rows = None
        return self._sig_array

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
        return _loop_text(self.policy, self.tokens, self.signatures)

    def update_block(
        self, cols: StepColumns, start: int = 0, stop: int | None = None, *, above: str | None = "CRITICAL"
    ) -> tuple[int, bool]:
        """Fold rows [start, stop) of a block in, exactly as ``update`` row by row would (without assessing each row),
        but halt after the first row at which the trace's severity may rise above ``above`` (the severity already
        alerted; the default, CRITICAL, never halts). Returns the end of the rows folded and whether it halted: then
        the caller assesses the trace (``assess``) and goes on from that end."""
        p = self.policy
        stop = len(cols) if stop is None else min(stop, len(cols))
        if stop <= start:
            return start, False
        if p.repeat_window < 1 or p.repeat_min_cycles < 2:  # windows that the vectorised loop test does not model
            return self._update_rows(cols, start, stop, above)
        rows = _BlockRows(self, cols, start, stop)
        halt = rows.first_rise(above)
        end = rows.n if halt is None else halt + 1
        rows.commit(end)
        return start + end, halt is not None

    def _update_rows(self, cols: StepColumns, start: int, stop: int, above: str | None) -> tuple[int, bool]:
        for i in range(start, stop):
            severity = self.update(cols.row(i)).severity(self.policy)
            if SEVERITY_RANK[severity] > SEVERITY_RANK[above]:
                return i + 1, True
        return stop, False

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


class _BlockRows:
    """Rows [start, stop) of a block as what each adds to a trace's risk, for all rows at once; ``commit`` folds the
    first k of them in (``TraceRisk.update_block``). What no row raises is skipped early (most blocks raise nothing),
    so a healthy block costs a few dozen numpy calls whatever its length."""

    def __init__(self, risk: TraceRisk, cols: StepColumns, start: int, stop: int) -> None:
        p = self.policy = risk.policy
        self.risk = risk
        n = self.n = stop - start
        entropy = cols.entropy_bits[start:stop].astype(np.float64)
        high = entropy > p.entropy_bits
        # a running sum, left to right from the stored one, as ``update`` adds (accumulate does not pair up)
        sums = np.empty(n + 1)
        sums[0], sums[1:] = risk.entropy_sum, entropy
        np.add.accumulate(sums, out=sums)
        if not math.isfinite(sums[-1]):  # a NaN or an infinite entropy (float32 values add up to a finite sum)
            finite = np.isfinite(entropy)
            high |= ~finite
            sums[0], sums[1:] = risk.entropy_sum, np.where(finite, entropy, 0.0)
            np.add.accumulate(sums, out=sums)
        self.entropy_sum = sums[1:]
        self.high = np.add.accumulate(high, dtype=np.int64)
        self.high += risk.high_entropy
        layer_nonfinite = cols.layer_nonfinite[start:stop]
        self.nonfinite: npt.NDArray[np.bool_] | None = None  # None: no row has a non-finite layer (the usual)
        self.row_nonfinite: npt.NDArray[np.bool_] = np.zeros(n, dtype=np.bool_)
        judged: npt.NDArray[np.bool_] | None = None  # the rows z-scored (a non-finite step is not): None for all
        if np.logical_or.reduce(layer_nonfinite, axis=None):
            self.nonfinite = layer_nonfinite != 0
            self.row_nonfinite = np.logical_or.reduce(self.nonfinite, axis=1)
            judged = ~self.row_nonfinite
        steps = cols.step[start:stop]
        buckets = p.row_buckets(steps)
        layers = cols.layer_hidden_l2.shape[1]
        if layers:  # the signature: log magnitudes of the L2 norms, then of the max-abs values (when measured)
            both = np.concatenate((cols.layer_hidden_l2[start:stop], cols.layer_hidden_maxabs[start:stop]), axis=1)
            sig = log_magnitude(both)
            sig32 = sig.astype(np.float32)
            if not math.isfinite(np.add.reduce(sig, axis=None)):  # a NaN or Inf (logs of float32 add up finite)
                sig32 = np.nan_to_num(sig, nan=0.0, posinf=50.0, neginf=-50.0).astype(np.float32)
            logs = sig[:, :layers]
        else:
            sig32 = np.empty((n, 0), dtype=np.float32)
            logs = np.empty((n, 0))
        self.norm_z, ok = p.norm_z_logs(buckets, logs)
        self.row_blowup: npt.NDArray[np.bool_] | None = None  # None: no row raises it (the usual), as below
        hit = self.norm_z > p.blowup_z
        if np.logical_or.reduce(hit, axis=None):
            self.row_blowup = _judged(np.logical_or.reduce(hit, axis=1), ok, judged)
        self.low: npt.NDArray[np.bool_] | None = None
        self.row_collapse: npt.NDArray[np.bool_] | None = None
        heads = cols.head_attention_entropy[start:stop]
        if heads.size and p.heads.may_fall_below(buckets, heads, p.z_std_floor, p.collapse_z):
            # head_z_many, with the buckets already found
            z, ok = p.heads.z_rows(buckets, log_magnitude(heads), p.z_std_floor)
            low = z < p.collapse_z
            if np.logical_or.reduce(
                low, axis=None
            ):  # a row with no low head adds no collapsed layer, whatever its share
                share = np.add.reduce(low.reshape(n, -1), axis=1) / low[0].size  # low.mean() of each row
                self.row_collapse = _judged(share >= p.collapse_head_share, ok, judged)
                self.low = low
        before = risk._signature_array(sig32.shape[1])
        self.sig_base = len(before)
        self.signatures = np.concatenate((before, sig32)) if len(before) else sig32
        self.base = len(risk.tokens)
        self.tokens = np.concatenate((np.asarray(risk.tokens, dtype=np.int64), cols.token_id[start:stop]))
        self.loop_row = -1
        self.loop = ""
        if not risk.loop:
            self._find_loop()

    def _find_loop(self) -> None:
        """The first row at which ``update`` finds a loop. The loop test (``_loop_text``) only finds one where the
        last 2p tokens repeat with some period p (both its token and its hidden-state test need that): that is
        looked for in all rows at once, and the test itself runs only there (rarely)."""
        p, tokens, base, n = self.policy, self.tokens, self.base, self.n
        periods = p.repeat_max_period
        if periods < 1:
            return
        back = _back(n, periods)  # [period, row]: the position of the token p before each row's, from the first row
        if base >= periods:
            if not (tokens[back + base] == tokens[base:]).any():
                return  # no row's token repeats one of the few before it: no loop can end in this block
        elif not ((tokens[np.maximum(back + base, 0)] == tokens[base:]) & (back + base >= 0)).any():
            return
        lags = np.arange(1, periods + 1)[:, None]
        at = np.arange(len(tokens))
        before = at - lags
        same = (tokens[np.maximum(before, 0)] == tokens) & (before >= 0)  # [period, position]: token == token p before
        runs = np.zeros((periods, len(tokens) + 1), dtype=np.int64)
        np.cumsum(same, axis=1, out=runs[:, 1:])
        rows = np.arange(base, len(tokens))
        first = np.maximum(rows + 1 - lags, 0)  # the last p positions up to each row: all the same as p before
        repeat = runs[:, rows + 1] - runs[np.arange(periods)[:, None], first] == lags
        window = np.minimum(rows + 1, p.repeat_window)
        w = p.repeat_window
        for i in np.flatnonzero((repeat & (window >= 2 * lags)).any(axis=0)).tolist():
            kept_tokens: list[int] = tokens[: base + i + 1][-w:].tolist()
            kept_sigs: list[list[float]] = self.signatures[: self.sig_base + i + 1][-w:].astype(np.float64).tolist()
            text = _loop_text(p, kept_tokens, kept_sigs)
            if text:
                self.loop_row, self.loop = i, text
                return

    def first_rise(self, above: str | None) -> int | None:
        """The first row after which the trace's severity may rank above ``above`` (from its unrounded score, with
        ``SCORE_SLACK``), or None."""
        rank = SEVERITY_RANK[above]
        if rank >= SEVERITY_RANK["CRITICAL"]:
            return None
        risk, p, n = self.risk, self.policy, self.n
        threshold = p.critical_score if rank >= SEVERITY_RANK["WARNING"] else min(p.alert_score, p.critical_score)
        threshold -= SCORE_SLACK
        nonfinite = bool(risk.nonfinite_layers) or self.nonfinite is not None
        loop = bool(risk.loop) or self.loop_row >= 0
        blowup = bool(risk.blowup) or (self.row_blowup is not None and bool(self.row_blowup.any()))
        collapse = bool(risk.collapse) or (self.row_collapse is not None and bool(self.row_collapse.any()))
        steps = np.arange(risk.steps + 1, risk.steps + n + 1)
        mean_h = self.entropy_sum / steps
        if not nonfinite and p.score_bounded:
            # the highest score any row can have: the highest mean entropy, with every flag some row raises
            top = float(np.maximum.reduce(mean_h))
            keep = 1.0 - p.entropy_weight * top / (top + p.entropy_bits) if top > 0 else 1.0
            last = int(self.high[-1])
            share = p.high_entropy_share
            high = last >= p.min_steps and last >= min(share * (risk.steps + 1), share * (risk.steps + n))
            for name, on in (
                ("repetition_loop", loop),
                ("mid_layer_anomaly", blowup),
                ("attention_collapse", collapse),
                ("high_entropy", high),
            ):
                keep *= 1.0 - p.weights[name] if on else 1.0
            if 1.0 - keep < threshold:
                return None
        term = np.zeros(n)
        np.divide(p.entropy_weight * mean_h, mean_h + p.entropy_bits, out=term, where=mean_h > 0)
        keep_rows = 1.0 - term
        nonfinite_rows = _since(self.row_nonfinite, bool(risk.nonfinite_layers), n)
        loop_rows = np.full(n, bool(risk.loop))
        if self.loop_row >= 0:
            loop_rows[self.loop_row :] = True
        high_rows = (self.high >= p.min_steps) & (self.high >= p.high_entropy_share * steps)
        for name, rows in (
            ("nonfinite_hidden", nonfinite_rows),
            ("repetition_loop", loop_rows),
            ("mid_layer_anomaly", _since(self.row_blowup, bool(risk.blowup), n)),
            ("attention_collapse", _since(self.row_collapse, bool(risk.collapse), n)),
            ("high_entropy", high_rows),
        ):
            if rows.any():  # keep * 1.0 is keep: the rows without the flag are untouched, as in ``assess``
                keep_rows = keep_rows * np.where(rows, 1.0 - p.weights[name], 1.0)
        may = nonfinite_rows | (1.0 - keep_rows >= threshold)
        return int(np.argmax(may)) if may.any() else None

    def commit(self, k: int) -> None:
        """Fold the first ``k`` rows in, as ``update`` does row by row."""
        risk, p = self.risk, self.policy
        risk.steps += k
        risk.entropy_sum = float(self.entropy_sum[k - 1])
        risk.high_entropy = int(self.high[k - 1])
        if self.nonfinite is not None and self.row_nonfinite[:k].any():
            risk.nonfinite_layers.update(np.flatnonzero(self.nonfinite[:k].any(axis=0)).tolist())
        for i in np.flatnonzero(self.row_blowup[:k]) if self.row_blowup is not None else ():
            z = self.norm_z[i]
            for layer in np.flatnonzero(z > p.blowup_z):
                risk.blowup[int(layer) + 1] = max(risk.blowup.get(int(layer) + 1, 0.0), float(z[layer]))
        if self.low is not None and self.row_collapse is not None:
            for i in np.flatnonzero(self.row_collapse[:k]):
                low = self.low[i]
                for layer in np.flatnonzero(low.any(axis=1)):
                    risk.collapse[int(layer)] = max(risk.collapse.get(int(layer), 0.0), float(low[layer].mean()))
        w = p.repeat_window
        risk.tokens = self.tokens[: self.base + k][-w:].tolist()
        risk._sig_rows, risk._sig_array = None, self.signatures[: self.sig_base + k][-w:]
        if 0 <= self.loop_row < k:
            risk.loop = self.loop


@functools.lru_cache(maxsize=256)
def _back(n: int, periods: int) -> npt.NDArray[np.int64]:
    """[period, row] row - period: where the token p before each of n rows is, from the first row."""
    back: npt.NDArray[np.int64] = np.arange(n) - np.arange(1, periods + 1)[:, None]
    back.flags.writeable = False  # shared by every call
    return back


def _since(rows: npt.NDArray[np.bool_] | None, before: bool, n: int) -> npt.NDArray[np.bool_]:
    """Whether a flag is up after each of n rows: it was before, or some row so far raised it (None: none did)."""
    if before:
        return np.ones(n, dtype=np.bool_)
    if rows is None or not rows.any():
        return np.zeros(n, dtype=np.bool_)
    return np.logical_or.accumulate(rows)


def _judged(rows: npt.NDArray[np.bool_], *masks: npt.NDArray[np.bool_] | None) -> npt.NDArray[np.bool_]:
    """``rows`` where every mask holds (None: a mask that holds for every row)."""
    for mask in masks:
        if mask is not None:
            rows = rows & mask
    return rows


def _loop_text(p: RiskPolicy, tokens: list[int], signatures: list[list[float]]) -> str:
    """The repetition loop in the last tokens and signatures of a trace (its reason), or "" for none."""
    period = _period(tokens, p.repeat_max_period, p.repeat_min_cycles)
    if period:
        return f"tokens repeat with period {period}"
    # the hidden-state test only runs while the tokens repeat at least once (cheap test first)
    if len(signatures[-1]) == 0 or not _period(tokens, p.repeat_max_period, 2):
        return ""
    sig = np.asarray(signatures)
    lags = [np.linalg.norm(sig[k:] - sig[:-k], axis=1) for k in range(1, min(len(sig), 2 * p.repeat_max_period))]
    scale = float(np.median(np.concatenate(lags))) if lags else 0.0

    def close(a: list[float], b: list[float]) -> bool:
        return float(np.linalg.norm(np.subtract(a, b))) <= p.hidden_repeat_ratio * scale

    period = _period(signatures, p.repeat_max_period, p.repeat_min_cycles, close)
    return f"hidden states repeat with period {period}" if period else ""


def _pack_rows(rows: list[list[float]]) -> str:
    """Rows of equal length as base64 float32 with the row length in front (compact in a JSON changelog)."""
    if not rows:
        return ""
    return f"{len(rows[0])}:" + binascii.b2a_base64(np.asarray(rows, dtype="<f4").tobytes(), newline=False).decode()


def _pack_array(rows: npt.NDArray[np.float32] | None) -> str:
    """``_pack_rows`` of rows held as an array."""
    if rows is None or not len(rows):
        return ""
    data = np.ascontiguousarray(rows, dtype="<f4").tobytes()
    return f"{rows.shape[1]}:" + binascii.b2a_base64(data, newline=False).decode()


def _unpack_array(text: str) -> npt.NDArray[np.float32]:
    """Packed rows as a float32 array (no rows of width 0: a width-0 row holds nothing, and is not kept)."""
    if not text:
        return np.empty((0, 0), dtype=np.float32)
    width, data = text.split(":", 1)
    flat = np.frombuffer(binascii.a2b_base64(data), dtype="<f4")
    return flat.reshape(-1, int(width)) if int(width) else np.empty((0, 0), dtype=np.float32)


def _fmt(layers: Sequence[int]) -> str:
    return ", ".join(str(x) for x in layers)
