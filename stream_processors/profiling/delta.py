"""What the risk agent hands the profiling agent instead of every step: ProfileDelta records (pure, no Faust).

Profiling folds per model version, and blocks arrive keyed by trace. The risk agent, which reads every block anyway,
reduces each block to its ``BlockPartial`` (``partial.py``) and sends, per model and source partition of a batch,
one or more ``ProfileDelta`` records keyed by model (``partial_deltas``): one row per block, in the blocks' offset
order, the matrices packed little-endian. The profiling agent decodes them (``decode_partials``, which refuses a
record whose columns disagree) and adds the rows; it skips a row at or below the highest offset it merged from that
partition, so a delta sent twice, or a replay cut into other batches, counts each block once, with no per-trace
state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt

from evostream.core.errors import DecodeError, EncodeError
from evostream.stream_processors.profiling.partial import BlockPartial

F64 = np.dtype("<f8")
I64 = np.dtype("<i8")

MAX_DELTA_BYTES = 256 * 1024
"""About the bytes of one ProfileDelta (its rows' matrices, n-grams and scalars): a batch of blocks of a large model
is sent as several deltas, each well under the broker's 1 MB record limit."""


@dataclass(frozen=True, eq=False)
class Partials:
    """A ProfileDelta decoded: row ``i`` is one block's partial (n rows, L layers, H heads, P n-grams)."""

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
    """ProfileDelta records of the blocks ``rows`` ((offset, partial), one model's, read from source partition
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
    }


def _unpack(data: bytes | str, dtype: np.dtype[Any], shape: tuple[int, ...], field: str) -> npt.NDArray[Any]:
    if isinstance(data, str):  # a field's Avro default (a v1 record read as v2): text, its code points the bytes
        data = data.encode("latin-1")
    need = int(np.prod(shape)) * dtype.itemsize
    if len(data) != need:
        raise DecodeError(f"ProfileDelta {field}: {len(data)} bytes, shape {shape} needs {need}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def decode_partials(delta: Mapping[str, Any]) -> Partials:
    """A decoded ProfileDelta record as arrays; DecodeError where its columns disagree with each other or with
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
