"""What the risk agent hands the profiling agent instead of every step: ProfileDelta records (pure, no Faust).

v2 (``partial_deltas`` / ``decode_partials``): one row per step block, its ``BlockPartial`` (``partial.py``), the
rows of one model and one source partition in offset order. The profiling agent adds rows and skips a row at or
below the highest offset it merged from that partition, so a delta sent twice, or a replay cut into other batches,
counts each block once, with no per-trace state.

v1 (``deltas`` / ``columns``, until the processors send v2):

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
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt

from evostream.core.errors import DecodeError, EncodeError
from evostream.schemas.tensors import pack_f32, step_heads, step_layers, unpack_f32
from evostream.stream_processors.profiling.partial import BlockPartial

F64 = np.dtype("<f8")
I64 = np.dtype("<i8")


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


NO_STEPS: dict[str, Any] = {
    "trace_ids": [],
    "steps": [],
    "emitted_at_us": [],
    "token_ids": [],
    "attention_signals": [],
    "head_signal": b"",
    "layer_hidden_l2": b"",
}
"""The v1 per-step columns of a v2 record of rows: empty (the writer's defaults would be text, not bytes)."""
NO_ROWS: dict[str, Any] = {
    "source_partition": -1,
    **{f: [] for f in ("offsets", "window_start_us", "block_steps", "first_us", "last_us", "new_trace", "signals")},
    **{f: [] for f in ("head_steps", "layer_steps", "path_rows", "paths", "path_counts")},
    "head_sum": b"",
    "layer_changed": b"",
}
"""The v2 rows of a v1 record of steps: none."""


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
        **NO_ROWS,
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


@dataclass(frozen=True, eq=False)
class Partials:
    """A v2 ProfileDelta decoded: row ``i`` is one block's partial (n rows, L layers, H heads, P n-grams)."""

    model_version: str
    num_layers: int
    num_heads: int
    source_partition: int
    offsets: npt.NDArray[np.int64]
    """[n] strictly increasing."""
    window_start_us: npt.NDArray[np.int64]
    steps: npt.NDArray[np.int64]
    first_us: npt.NDArray[np.int64]
    last_us: npt.NDArray[np.int64]
    new_trace: npt.NDArray[np.int64]
    """[n] 1 or 0."""
    signals: list[str]
    head_steps: npt.NDArray[np.int64]
    layer_steps: npt.NDArray[np.int64]
    head_sum: npt.NDArray[np.float64]
    """[n, L, H]."""
    layer_changed: npt.NDArray[np.int64]
    """[n, L]."""
    path_rows: npt.NDArray[np.int64]
    """[P] the row of each n-gram."""
    paths: list[str]
    path_counts: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.offsets)


def _row_bytes(p: BlockPartial) -> int:
    """About what one row adds to a record: its matrices, its n-grams and its scalars."""
    return 8 * (p.head_sum.size + p.layer_changed.size) + sum(len(k) + 8 for k in p.paths) + 64


def partial_deltas(
    model_version: str, partition: int, rows: Sequence[tuple[int, BlockPartial]]
) -> list[dict[str, Any]]:
    """ProfileDelta records (v2) of the blocks ``rows`` ((offset, partial), one model's, read from source partition
    ``partition``): consecutive runs in offset order, a new record where a block's shape differs from the one before
    (a malformed producer's) or where a record would pass ``MAX_DELTA_BYTES``. The records keep the blocks' offset
    order, so sent in order on one key they reach the profiling agent in it (EncodeError on a repeated offset)."""
    ordered = sorted(rows, key=lambda r: r[0])
    for (a, _), (b, _) in pairwise(ordered):
        if a == b:
            raise EncodeError(f"ProfileDelta: block offset {a} of partition {partition} given twice")
    out: list[dict[str, Any]] = []
    run: list[tuple[int, BlockPartial]] = []
    size = 0
    for offset, p in ordered:
        if run and (p.head_sum.shape != run[-1][1].head_sum.shape or size + _row_bytes(p) > MAX_DELTA_BYTES):
            out.append(_partial_delta(model_version, partition, run))
            run, size = [], 0
        run.append((offset, p))
        size += _row_bytes(p)
    if run:
        out.append(_partial_delta(model_version, partition, run))
    return out


def _partial_delta(model_version: str, partition: int, run: Sequence[tuple[int, BlockPartial]]) -> dict[str, Any]:
    layers, heads = run[0][1].head_sum.shape
    parts = [p for _, p in run]
    path_rows, paths, counts = [], [], []
    for i, p in enumerate(parts):
        for path, count in p.paths.items():
            path_rows.append(i)
            paths.append(path)
            counts.append(int(count))
    return {
        "model_version": model_version,
        "num_layers": int(layers),
        "num_heads": int(heads),
        "source_partition": int(partition),
        "offsets": [int(o) for o, _ in run],
        "window_start_us": [p.window_start_us for p in parts],
        "block_steps": [p.steps for p in parts],
        "first_us": [p.first_us for p in parts],
        "last_us": [p.last_us for p in parts],
        "new_trace": [bool(p.new_trace) for p in parts],
        "signals": [p.signal for p in parts],
        "head_steps": [p.head_steps for p in parts],
        "layer_steps": [p.layer_steps for p in parts],
        "head_sum": np.ascontiguousarray([p.head_sum for p in parts], dtype=F64).tobytes(),
        "layer_changed": np.ascontiguousarray([p.layer_changed for p in parts], dtype=I64).tobytes(),
        "path_rows": path_rows,
        "paths": paths,
        "path_counts": counts,
        **NO_STEPS,
    }


def _unpack(data: bytes, dtype: np.dtype[Any], shape: tuple[int, ...], field: str) -> npt.NDArray[Any]:
    need = int(np.prod(shape)) * dtype.itemsize
    if len(data) != need:
        raise DecodeError(f"ProfileDelta {field}: {len(data)} bytes, shape {shape} needs {need}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def decode_partials(delta: Mapping[str, Any]) -> Partials:
    """A decoded ProfileDelta record (v2) as arrays; DecodeError where its columns disagree with each other or with
    its shape, where its offsets do not increase, or where a count is impossible."""
    n, layers, heads = len(delta["offsets"]), int(delta["num_layers"]), int(delta["num_heads"])
    if layers < 0 or heads < 0:
        raise DecodeError(f"ProfileDelta: {layers} layers x {heads} heads")
    per_row = ("window_start_us", "block_steps", "first_us", "last_us", "new_trace", "signals", "head_steps")
    for field in (*per_row, "layer_steps"):
        if len(delta[field]) != n:
            raise DecodeError(f"ProfileDelta {field}: {len(delta[field])} values for {n} rows")
    if not len(delta["path_rows"]) == len(delta["paths"]) == len(delta["path_counts"]):
        raise DecodeError("ProfileDelta: path_rows, paths and path_counts differ in length")
    ints = {f: np.asarray(delta[f], dtype=np.int64) for f in (*per_row[:5], "head_steps", "layer_steps")}
    offsets = np.asarray(delta["offsets"], dtype=np.int64)
    if n and (offsets[0] < 0 or (np.diff(offsets) <= 0).any()):
        raise DecodeError("ProfileDelta: block offsets are not increasing")
    steps = ints["block_steps"]
    if (steps <= 0).any() or (ints["head_steps"] < 0).any() or (ints["layer_steps"] < 0).any():
        raise DecodeError("ProfileDelta: a block of no steps, or a negative count")
    if (ints["head_steps"] > steps).any() or (ints["layer_steps"] > steps).any():
        raise DecodeError("ProfileDelta: more measured steps than a block has")
    if (ints["first_us"] > ints["last_us"]).any():
        raise DecodeError("ProfileDelta: a block that ends before it starts")
    path_rows = np.asarray(delta["path_rows"], dtype=np.int64)
    path_counts = np.asarray(delta["path_counts"], dtype=np.int64)
    if ((path_rows < 0) | (path_rows >= n)).any() or (path_counts <= 0).any():
        raise DecodeError("ProfileDelta: an n-gram of no row, or counted less than once")
    return Partials(
        model_version=str(delta["model_version"]),
        num_layers=layers,
        num_heads=heads,
        source_partition=int(delta["source_partition"]),
        offsets=offsets,
        window_start_us=ints["window_start_us"],
        steps=steps,
        first_us=ints["first_us"],
        last_us=ints["last_us"],
        new_trace=ints["new_trace"],
        signals=[str(s) for s in delta["signals"]],
        head_steps=ints["head_steps"],
        layer_steps=ints["layer_steps"],
        head_sum=_unpack(delta["head_sum"], F64, (n, layers, heads), "head_sum").astype(np.float64),
        layer_changed=_unpack(delta["layer_changed"], I64, (n, layers), "layer_changed").astype(np.int64),
        path_rows=path_rows,
        paths=[str(p) for p in delta["paths"]],
        path_counts=path_counts,
    )
