"""Profiling aggregates of one model version over a tumbling window of steps (pure numpy, no Faust).

``ProfileWindow`` folds GenerationStep records (and, when the producer sends them, periodic FFN neuron-count
snapshots) and renders a ProfileSnapshot record. Its state is a plain dict so a stream processor can keep it in a
changelog-backed table.

- head utilization: the head's mean signal relative to the strongest head of its layer. With the OUTPUT_NORM signal
  that is the head's share of the layer's output norm; with ENTROPY, 1 - mean entropy / the layer's most diffuse
  head. A head under ``dormant_head_share`` is dormant.
- layer frequency: the share of steps on which the layer changed the hidden-state norm by more than
  ``layer_change`` (relative), against the layer below; layer 0 has nothing below and counts as always active.
- dormant neurons: from per-neuron activation counts, the share of a layer's FFN neurons active on at most
  ``dormant_neuron_max`` of the steps the counts cover.
- token paths: the most frequent generated n-grams (ties in the order of the n-gram's text, so that the order in
  which partials merge does not change the list).

A window is a sum: ``add_rows`` merges the partials of step blocks (``partial.py``) that the risk agent computed,
so the state holds counts and sums only, no per-trace state. ``add_step`` and ``add_columns`` fold single steps
and v1 ProfileDelta columns and keep, per trace, its last step and tokens (``traces``, ``applied``, ``tails``, kept
in the state only where that path fills them) until the processors send partials.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from evostream.core.errors import FoldError
from evostream.schemas.tensors import step_heads, step_layers

if TYPE_CHECKING:  # delta.py builds on this module's policy
    from evostream.stream_processors.profiling.delta import Columns, Partials


@dataclass(frozen=True)
class ProfilePolicy:
    window_s: int
    """Tumbling window, seconds of event time: from Settings (profile_window_s)."""
    ngram: int = 3
    top_paths: int = 20
    max_paths: int = 4000
    """Distinct n-grams kept while counting (the rarest half is dropped when exceeded)."""
    grace_s: int = 5
    """A window is published once the stream (or the clock, when idle) is this far past its end."""
    dormant_head_share: float = 0.05
    dormant_neuron_max: float = 0.0
    """A neuron active on at most this share of steps is dormant (0 = never active)."""
    layer_change: float = 0.01


def window_of(at_us: int, window_s: int) -> int:
    """Start (µs) of the tumbling window holding ``at_us``."""
    w = window_s * 1_000_000
    return at_us - at_us % w


def top_paths(paths: Counter[str], k: int) -> list[tuple[str, int]]:
    """The ``k`` most frequent n-grams, ties in the order of their text."""
    return sorted(paths.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


class ProfileWindow:
    """One model version's aggregates over one window."""

    def __init__(self, policy: ProfilePolicy, state: Mapping[str, Any] | None = None) -> None:
        self.policy = policy
        s = dict(state or {})
        self.start_us: int = s.get("start_us", 0)
        self.end_us: int = s.get("end_us", 0)
        self.steps: int = s.get("steps", 0)
        self.trace_count: int = s.get("trace_count", 0)
        self.traces: set[str] = set(s.get("traces", []))
        self.signal: str = s.get("signal", "NONE")
        # accumulators stay numpy while folding; to_state turns them into JSON lists once per batch
        self.head_sum: np.ndarray | None = np.asarray(s["head_sum"], np.float64) if s.get("head_sum") else None
        self.head_steps: int = s.get("head_steps", 0)
        self.layer_changed: np.ndarray | None = (
            np.asarray(s["layer_changed"], np.int64) if s.get("layer_changed") else None
        )
        self.layer_steps: int = s.get("layer_steps", 0)
        self.neuron_counts: list[list[int]] = s.get("neuron_counts", [])
        self.neuron_steps: int = s.get("neuron_steps", 0)
        self.paths: Counter[str] = Counter(s.get("paths", {}))
        self.tails: dict[str, list[int]] = {k: list(v) for k, v in s.get("tails", {}).items()}
        self.applied: dict[str, int] = dict(s.get("applied", {}))
        self.snapshot_ids: list[str] = list(s.get("snapshot_ids", []))

    def to_state(self) -> dict[str, Any]:
        per_trace = {"traces": sorted(self.traces), "applied": self.applied, "tails": self.tails}
        return {
            "start_us": self.start_us,
            "end_us": self.end_us,
            "steps": self.steps,
            "trace_count": self.trace_count,
            "signal": self.signal,
            "head_sum": self.head_sum.tolist() if self.head_sum is not None else [],
            "head_steps": self.head_steps,
            "layer_changed": self.layer_changed.tolist() if self.layer_changed is not None else [],
            "layer_steps": self.layer_steps,
            "neuron_counts": self.neuron_counts,
            "neuron_steps": self.neuron_steps,
            "paths": dict(self.paths),
            "snapshot_ids": self.snapshot_ids,
            **{k: v for k, v in per_trace.items() if v},  # the per-step path's only
        }

    def _span(self, at_us: int) -> None:
        self.start_us = at_us if not self.start_us else min(self.start_us, at_us)
        self.end_us = max(self.end_us, at_us)

    def add_step(self, step: Mapping[str, Any]) -> bool:
        """Fold one GenerationStep in; False (and nothing counted) when this trace's step was already folded."""
        p = self.policy
        trace = str(step["trace_id"])
        if int(step["step"]) <= self.applied.get(trace, -1):
            return False
        self.applied[trace] = int(step["step"])
        self._span(int(step["emitted_at_us"]))
        self.steps += 1
        self._trace(trace)
        heads = step_heads(step).astype(np.float64)
        if heads.size and np.isfinite(heads).all():
            self.signal = str(step["attention_signal"])
            self.head_sum = heads.copy() if self.head_sum is None else self.head_sum + heads
            self.head_steps += 1
        l2 = step_layers(step, "layer_hidden_l2").astype(np.float64)
        if len(l2) and np.isfinite(l2).all():
            changed = np.ones(len(l2), dtype=np.int64)
            below = np.maximum(l2[:-1], 1e-12)
            changed[1:] = np.abs(l2[1:] - l2[:-1]) / below > p.layer_change
            self.layer_changed = changed if self.layer_changed is None else self.layer_changed + changed
            self.layer_steps += 1
        self._path(trace, int(step["token_id"]))
        return True

    def _trace(self, trace: str) -> None:
        if trace not in self.traces:
            self.traces.add(trace)
            self.trace_count += 1

    def _path(self, trace: str, token: int) -> None:
        """The trace's newest token: its last n tokens, once it has n, count as one token path."""
        p = self.policy
        tail = [*self.tails.get(trace, []), token][-p.ngram :]
        self.tails[trace] = tail
        if len(tail) == p.ngram:
            self.paths[" ".join(map(str, tail))] += 1
            self._prune()

    def _prune(self) -> None:
        """Keep the heavy hitters once ``max_paths`` is passed: rare n-grams cannot make the top list."""
        if len(self.paths) > self.policy.max_paths:
            self.paths = Counter(dict(top_paths(self.paths, self.policy.max_paths // 2)))

    def add_columns(self, cols: Columns, rows: npt.NDArray[np.intp], closed: Mapping[str, int]) -> int:
        """Fold rows ``rows`` of a ProfileDelta in, in that order, as ``add_step`` would fold those steps one by one
        (sums with numpy; a trace's step at or below its last folded one, or at or below ``closed``, is skipped).
        How many were skipped."""
        p = self.policy
        kept: list[int] = []
        for r in rows.tolist():
            trace, step = cols.trace_ids[r], int(cols.steps[r])
            if step <= closed.get(trace, -1) or step <= self.applied.get(trace, -1):
                continue
            self.applied[trace] = step
            self._trace(trace)
            self._path(trace, int(cols.token_ids[r]))
            kept.append(r)
        if not kept:
            return len(rows)
        k = np.asarray(kept, dtype=np.intp)
        self.steps += len(k)
        at = cols.emitted_at_us[k]
        self._span(int(at.min()))
        self._span(int(at.max()))
        heads = cols.heads[k]
        if heads[0].size:
            ok = np.isfinite(heads).all(axis=(1, 2))
            if ok.any():
                self.signal = cols.signals[int(k[ok][-1])]
                total = heads[ok].sum(axis=0)
                self.head_sum = total if self.head_sum is None else self.head_sum + total
                self.head_steps += int(ok.sum())
        l2 = cols.layer_l2[k]
        if l2.shape[1]:
            ok = np.isfinite(l2).all(axis=1)
            if ok.any():
                x = l2[ok]
                changed = np.ones(x.shape, dtype=np.int64)
                changed[:, 1:] = np.abs(x[:, 1:] - x[:, :-1]) / np.maximum(x[:, :-1], 1e-12) > p.layer_change
                total_changed = changed.sum(axis=0)
                self.layer_changed = total_changed if self.layer_changed is None else self.layer_changed + total_changed
                self.layer_steps += int(ok.sum())
        return len(rows) - len(k)

    def add_rows(self, parts: Partials, rows: npt.NDArray[np.intp]) -> None:
        """Merge the partials ``rows`` of a decoded ProfileDelta (v2), in that order: sums added, the time span
        widened, the attention signal of the last row with a measured head, their n-grams counted."""
        if not len(rows):
            return
        self.steps += int(parts.steps[rows].sum())
        self.trace_count += int(parts.new_trace[rows].sum())
        self._span(int(parts.first_us[rows].min()))
        self._span(int(parts.last_us[rows].max()))
        measured = rows[parts.head_steps[rows] > 0]
        if len(measured):
            self.signal = parts.signals[int(measured[-1])]
            total = parts.head_sum[measured].sum(axis=0)
            self.head_sum = total if self.head_sum is None else self.head_sum + total
            self.head_steps += int(parts.head_steps[measured].sum())
        measured = rows[parts.layer_steps[rows] > 0]
        if len(measured):
            changed = parts.layer_changed[measured].sum(axis=0)
            self.layer_changed = changed if self.layer_changed is None else self.layer_changed + changed
            self.layer_steps += int(parts.layer_steps[measured].sum())
        mine = np.flatnonzero(np.isin(parts.path_rows, rows))
        for i in mine.tolist():
            self.paths[parts.paths[i]] += int(parts.path_counts[i])
        self._prune()

    def add_neuron_counts(self, counts: Sequence[Sequence[int]], steps: int, at_us: int) -> None:
        """Merge a producer's per-neuron activation counts covering ``steps`` steps."""
        self._span(at_us)
        if not self.neuron_counts:
            self.neuron_counts = [[0] * len(layer) for layer in counts]
        if [len(x) for x in counts] != [len(x) for x in self.neuron_counts]:
            raise FoldError("neuron count snapshot does not match the model's FFN shape")
        self.neuron_counts = [
            [a + b for a, b in zip(x, y, strict=True)] for x, y in zip(self.neuron_counts, counts, strict=True)
        ]
        self.neuron_steps += steps

    def utilization(self) -> np.ndarray:
        if not self.head_steps:
            return np.empty((0, 0))
        mean = np.asarray(self.head_sum) / self.head_steps
        top = np.maximum(mean.max(axis=1, keepdims=True), 1e-12)
        share = mean / top
        out: np.ndarray = np.clip(1.0 - share if self.signal == "ENTROPY" else share, 0.0, 1.0)
        return out

    def dormant_heads(self) -> list[tuple[int, int]]:
        u = self.utilization()
        return [(int(layer), int(h)) for layer, h in zip(*np.nonzero(u < self.policy.dormant_head_share), strict=True)]

    def dormant_neuron_fraction(self) -> list[float]:
        if not self.neuron_steps:
            return []
        limit = self.policy.dormant_neuron_max * self.neuron_steps
        return [float(np.mean(np.asarray(layer) <= limit)) for layer in self.neuron_counts]

    def snapshot(self, model_version: str, produced_at_us: int) -> dict[str, Any]:
        """The ProfileSnapshot record of this window."""
        return {
            "model_version": model_version,
            "window_start_us": self.start_us,
            "window_end_us": self.end_us,
            "trace_count": self.trace_count,
            "step_count": self.steps,
            "head_utilization": [[float(x) for x in row] for row in self.utilization()],
            "ffn_neuron_activation_counts": self.neuron_counts,
            "dormant_neuron_fraction": self.dormant_neuron_fraction(),
            "layer_frequency": (
                (self.layer_changed / self.layer_steps).tolist()
                if self.layer_changed is not None and self.layer_steps
                else []
            ),
            "top_token_paths": [
                {"token_ids": [int(t) for t in k.split()], "count": c}
                for k, c in top_paths(self.paths, self.policy.top_paths)
            ],
            "produced_at_us": produced_at_us,
        }
