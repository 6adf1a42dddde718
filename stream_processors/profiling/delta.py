"""The steps of one model that one batch read, as columns: what the step agent hands the profiling agent instead of
every step (pure, no Faust).

Profiling folds per model version, and steps arrive keyed by trace. Forwarding each step to a topic keyed by model
(Faust's ``group_by``) sent and read every step a second time, the worker's largest cost after the risk fold. The
step agent, which decodes every step anyway, now sends one ``ProfileDelta`` record per model and batch, keyed by
model: per step its trace, index, time, token and attention signal, and its per-head and per-layer statistics as
packed float32 matrices. The profiling agent folds the columns with numpy and keeps its exact per-step
deduplication (a trace's steps at or below the last one folded are skipped), so a delta sent twice, or two deltas
that overlap after a replay, count each step once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from evostream.schemas.tensors import pack_f32, step_heads, step_layers, unpack_f32


@dataclass(frozen=True)
class Columns:
    """A ProfileDelta decoded: row ``i`` is one step."""

    model_version: str
    trace_ids: list[str]
    steps: npt.NDArray[np.int64]
    emitted_at_us: npt.NDArray[np.int64]
    token_ids: list[int]
    signals: list[str]
    heads: npt.NDArray[np.float64]
    """[steps, num_layers, num_heads]; a row of NaN where the step measured none."""
    layer_l2: npt.NDArray[np.float64]
    """[steps, num_layers]; a row of NaN where the step measured none."""

    def __len__(self) -> int:
        return len(self.trace_ids)


MAX_DELTA_BYTES = 256 * 1024
"""Packed matrix bytes per ProfileDelta: a batch of steps of a large model is sent as several deltas, each well under
the broker's 1 MB record limit (one delta of 1000 steps of 12 x 12 heads was already 600 KB)."""


def deltas(model_version: str, steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """ProfileDelta records of ``steps`` (one model's, in the order read): one per shape of the model's steps (a
    model has one; a malformed producer could send another), split to stay under ``MAX_DELTA_BYTES``. A trace's
    steps share a shape (the risk agent dead-letters a step that changes it), so each trace's steps stay in order
    in one run of deltas: the profiling fold skips a trace's step at or below the last one it folded."""
    by_shape: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for s in steps:
        by_shape.setdefault((int(s["num_layers"]), int(s["num_heads"])), []).append(s)
    out = []
    for (layers, heads), group in by_shape.items():
        per = max(1, MAX_DELTA_BYTES // (4 * (layers * heads + layers) or 1))
        out += [_delta(model_version, layers, heads, group[i : i + per]) for i in range(0, len(group), per)]
    return out


def _delta(model_version: str, layers: int, heads: int, group: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n = len(group)
    head_rows = np.full((n, layers * heads), np.nan, dtype=np.float32)
    l2_rows = np.full((n, layers), np.nan, dtype=np.float32)
    for i, s in enumerate(group):
        if (step_head := step_heads(s)).size:
            head_rows[i] = step_head.ravel()
        if (step_l2 := step_layers(s, "layer_hidden_l2")).size:
            l2_rows[i] = step_l2
    return {
        "model_version": model_version,
        "num_layers": layers,
        "num_heads": heads,
        "trace_ids": [str(s["trace_id"]) for s in group],
        "steps": [int(s["step"]) for s in group],
        "emitted_at_us": [int(s["emitted_at_us"]) for s in group],
        "token_ids": [int(s["token_id"]) for s in group],
        "attention_signals": [str(s["attention_signal"]) for s in group],
        "head_signal": pack_f32(head_rows),
        "layer_hidden_l2": pack_f32(l2_rows),
    }


def columns(delta: Mapping[str, Any]) -> Columns:
    """A decoded ProfileDelta record as arrays (DecodeError when its matrices do not match its counts)."""
    n, layers, heads = len(delta["trace_ids"]), int(delta["num_layers"]), int(delta["num_heads"])
    return Columns(
        model_version=str(delta["model_version"]),
        trace_ids=list(delta["trace_ids"]),
        steps=np.asarray(delta["steps"], dtype=np.int64),
        emitted_at_us=np.asarray(delta["emitted_at_us"], dtype=np.int64),
        token_ids=list(delta["token_ids"]),
        signals=list(delta["attention_signals"]),
        heads=unpack_f32(delta["head_signal"], (n, layers, heads)).astype(np.float64),
        layer_l2=unpack_f32(delta["layer_hidden_l2"], (n, layers)).astype(np.float64),
    )
