"""Profiling aggregates of one model version over a tumbling window of steps (pure numpy, no Faust).

``ProfileWindow`` merges the partials of step blocks (and, when the producer sends them, periodic FFN neuron-count
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
so the state holds counts and sums only, no per-trace state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from evostream.core.errors import FoldError

if TYPE_CHECKING:  # delta.py builds on this module's policy
    from evostream.stream_processors.profiling.delta import Partials


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
        self.snapshot_ids: list[str] = list(s.get("snapshot_ids", []))

    def to_state(self) -> dict[str, Any]:
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
        }

    def _span(self, at_us: int) -> None:
        self.start_us = at_us if not self.start_us else min(self.start_us, at_us)
        self.end_us = max(self.end_us, at_us)

    def _prune(self) -> None:
        """Keep the heavy hitters once ``max_paths`` is passed: rare n-grams cannot make the top list."""
        if len(self.paths) > self.policy.max_paths:
            self.paths = Counter(dict(top_paths(self.paths, self.policy.max_paths // 2)))

    def add_rows(self, parts: Partials, rows: npt.NDArray[np.intp]) -> None:
        """Merge the partials ``rows`` of a decoded ProfileDelta, in that order: sums added, the time span
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
