"""Step blocks: consecutive steps of one trace that the producer sent together, as columns (pure numpy, no Kafka).

A ``StepBlock`` record (``evo.step-blocks``) carries what the GenerationStep records of its steps carry, field by
field, as packed columns: one record and one decode per block of a trace's steps instead of one per token, which is what
lets the stream processors keep up with a fleet. Every step stays addressed by its trace and index (``step``), and
``StepColumns.row`` gives back each step's GenerationStep record exactly as the producer built it.

A block is homogeneous: its steps share the trace, the model version, the shape (layers, heads, sketch width), the
attention signal, top-k and which optional fields were measured. Steps that differ start another block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from evostream.schemas import records
from evostream.schemas.errors import DecodeError
from evostream.schemas.tensors import F32, pack_f16, pack_f32

I32 = np.dtype("<i4")
I64 = np.dtype("<i8")
F16 = np.dtype("<f2")

SCALARS = ("logprob", "entropy_bits", "top1_top2_margin", "topk_mass", "surprisal_bits")
"""The per-step float32 scalars of a GenerationStep, in the record's order."""
COUNTS = ("latency_us", "peak_memory_bytes", "emitted_at_us")
"""The per-step int64 scalars."""


@dataclass(frozen=True)
class StepColumns:
    """The steps of one block as arrays: row ``i`` is one step (n steps, L layers, H heads, D sketch values)."""

    trace_id: str
    request_id: str
    model_version: str
    num_layers: int
    num_heads: int
    attention_signal: str
    topk_k: int
    step: npt.NDArray[np.int64]
    """[n] each step's index within its trace, increasing."""
    token_id: npt.NDArray[np.int64]
    token_text: list[str]
    logprob: npt.NDArray[np.float32]
    entropy_bits: npt.NDArray[np.float32]
    top1_top2_margin: npt.NDArray[np.float32]
    topk_mass: npt.NDArray[np.float32]
    surprisal_bits: npt.NDArray[np.float32]
    layer_hidden_l2: npt.NDArray[np.float32]
    """[n, L], or [n, 0] when not measured."""
    layer_hidden_maxabs: npt.NDArray[np.float32]
    """[n, L], or [n, 0] when not measured."""
    layer_nonfinite: npt.NDArray[np.int64]
    """[n, L]: NaN or Inf values per layer."""
    head_attention_entropy: npt.NDArray[np.float32]
    """[n, L, H], or [n, 0, 0] when the signal is NONE."""
    ffn_sparsity: npt.NDArray[np.float32]
    """[n, L], or [n, 0] when not measured."""
    hidden_sketch: npt.NDArray[np.float32]
    """[n, D] (carried as float16), or [n, 0] when off."""
    latency_us: npt.NDArray[np.int64]
    peak_memory_bytes: npt.NDArray[np.int64]
    emitted_at_us: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.step)

    def row(self, i: int) -> dict[str, Any]:
        """Step ``i`` as its GenerationStep record (v2), byte for byte what the producer would have sent alone."""
        heads = self.head_attention_entropy[i]
        return {
            "trace_id": self.trace_id,
            "request_id": self.request_id,
            "model_version": self.model_version,
            "step": int(self.step[i]),
            "token_id": int(self.token_id[i]),
            "token_text": self.token_text[i],
            "logprob": float(self.logprob[i]),
            "entropy_bits": float(self.entropy_bits[i]),
            "top1_top2_margin": float(self.top1_top2_margin[i]),
            "topk_mass": float(self.topk_mass[i]),
            "topk_k": self.topk_k,
            "surprisal_bits": float(self.surprisal_bits[i]),
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "layer_hidden_l2": pack_f32(self.layer_hidden_l2[i]) if self.layer_hidden_l2.shape[1] else b"",
            "layer_hidden_maxabs": pack_f32(self.layer_hidden_maxabs[i]) if self.layer_hidden_maxabs.shape[1] else b"",
            "layer_nonfinite": [int(x) for x in self.layer_nonfinite[i]],
            "head_attention_entropy": pack_f32(heads) if heads.size else b"",
            "attention_signal": self.attention_signal,
            "ffn_sparsity": pack_f32(self.ffn_sparsity[i]) if self.ffn_sparsity.shape[1] else b"",
            "hidden_sketch": pack_f16(self.hidden_sketch[i]) if self.hidden_sketch.shape[1] else b"",
            "latency_us": int(self.latency_us[i]),
            "peak_memory_bytes": int(self.peak_memory_bytes[i]),
            "emitted_at_us": int(self.emitted_at_us[i]),
        }

    def rows(self) -> list[dict[str, Any]]:
        """Every step's GenerationStep record, in order."""
        return [self.row(i) for i in range(len(self))]

    def head(self, n: int) -> StepColumns:
        """The block of the first ``n`` steps (views of these columns, no copy)."""
        if n >= len(self):
            return self
        cut = {f.name: getattr(self, f.name)[:n] for f in fields(self) if f.name in _ROW_FIELDS}
        return replace(self, **cut)


_BLOCK_FIELDS = frozenset(
    ("trace_id", "request_id", "model_version", "num_layers", "num_heads", "attention_signal", "topk_k")
)
"""What a block's steps share."""
_ROW_FIELDS = frozenset(f.name for f in fields(StepColumns)) - _BLOCK_FIELDS
"""The per-step columns: one entry per row."""


def homogeneous_key(step: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the steps of one block share: two consecutive steps of a trace with different keys start a new block."""
    return (
        step["trace_id"],
        step["request_id"],
        step["model_version"],
        int(step["num_layers"]),
        int(step["num_heads"]),
        step["attention_signal"],
        int(step["topk_k"]),
        bool(step["layer_hidden_l2"]),
        bool(step["layer_hidden_maxabs"]),
        bool(step["head_attention_entropy"]),
        bool(step["ffn_sparsity"]),
        len(step.get("hidden_sketch") or b""),
    )


def _matrix(steps: Sequence[Mapping[str, Any]], field: str, dtype: np.dtype[Any], width: int) -> npt.NDArray[Any]:
    """The packed per-step ``field`` of ``steps`` as an [n, width] array ([n, 0] when the steps carry none)."""
    data = b"".join(bytes(s[field] or b"") for s in steps)
    if not data:
        return np.empty((len(steps), 0), dtype=dtype.newbyteorder("="))
    if len(data) != len(steps) * width * dtype.itemsize:
        raise DecodeError(f"{field}: {len(data)} bytes for {len(steps)} steps of {width} values")
    return np.frombuffer(data, dtype=dtype).reshape(len(steps), width)


def from_steps(steps: Sequence[Mapping[str, Any]]) -> StepColumns:
    """The columns of GenerationStep records of one block (one trace, in order, one ``homogeneous_key``);
    DecodeError when they do not share one."""
    if not steps:
        raise DecodeError("a step block needs at least one step")
    first = steps[0]
    key = homogeneous_key(first)
    for s in steps[1:]:
        if homogeneous_key(s) != key:
            raise DecodeError(f"steps of trace {s['trace_id']} differ in trace, model or shape: not one block")
    n, layers, heads = len(steps), int(first["num_layers"]), int(first["num_heads"])
    sketch = len(first.get("hidden_sketch") or b"") // F16.itemsize
    head_data = b"".join(bytes(s["head_attention_entropy"] or b"") for s in steps)
    head_cube = (
        np.frombuffer(head_data, dtype=F32).reshape(n, layers, heads)
        if head_data
        else np.empty((n, 0, 0), dtype=np.float32)
    )
    sketch_rows = _matrix(steps, "hidden_sketch", F16, sketch).astype(np.float32)
    return StepColumns(
        trace_id=str(first["trace_id"]),
        request_id=str(first["request_id"]),
        model_version=str(first["model_version"]),
        num_layers=layers,
        num_heads=heads,
        attention_signal=str(first["attention_signal"]),
        topk_k=int(first["topk_k"]),
        step=np.asarray([int(s["step"]) for s in steps], dtype=np.int64),
        token_id=np.asarray([int(s["token_id"]) for s in steps], dtype=np.int64),
        token_text=[str(s["token_text"]) for s in steps],
        **{f: np.asarray([s[f] for s in steps], dtype=np.float32) for f in SCALARS},  # type: ignore[arg-type]
        layer_hidden_l2=_matrix(steps, "layer_hidden_l2", F32, layers),
        layer_hidden_maxabs=_matrix(steps, "layer_hidden_maxabs", F32, layers),
        layer_nonfinite=np.asarray([list(s["layer_nonfinite"]) for s in steps], dtype=np.int64).reshape(n, -1),
        head_attention_entropy=head_cube,
        ffn_sparsity=_matrix(steps, "ffn_sparsity", F32, layers),
        hidden_sketch=sketch_rows,
        **{f: np.asarray([int(s[f]) for s in steps], dtype=np.int64) for f in COUNTS},  # type: ignore[arg-type]
    )


def follows(last: Mapping[str, Any], step: Mapping[str, Any]) -> bool:
    """Whether ``step`` joins the block that ends with ``last``: the same ``homogeneous_key``, and a later step."""
    return homogeneous_key(last) == homogeneous_key(step) and int(step["step"]) > int(last["step"])


def split_blocks(steps: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """GenerationStep records (several traces, in the order produced) cut into blocks: per trace, in order, a new
    block wherever a step's ``homogeneous_key`` differs from the one before, or its ``step`` does not follow it (a
    block's steps strictly increase)."""
    blocks: dict[str, list[list[Mapping[str, Any]]]] = {}
    for s in steps:
        runs = blocks.setdefault(str(s["trace_id"]), [])
        last = runs[-1][-1] if runs else None
        if last is not None and follows(last, s):
            runs[-1].append(s)
        else:
            runs.append([s])
    return [run for runs in blocks.values() for run in runs]


# -- the StepBlock record (evo.step-blocks): the columns packed little-endian, one Avro record per block ------------

_PACKED: dict[str, np.dtype[Any]] = {
    "step": I32,
    "token_id": I32,
    **dict.fromkeys(SCALARS, F32),
    **dict.fromkeys(COUNTS, I64),
}
"""The per-step columns of one value a step, with the dtype they travel as."""


def _pack(values: npt.ArrayLike, dtype: np.dtype[Any]) -> bytes:
    return np.ascontiguousarray(values, dtype=dtype).tobytes()


def block_record(cols: StepColumns, flushed_at_us: int) -> records.StepBlock:
    """The StepBlock record of ``cols``, flushed at ``flushed_at_us``; DecodeError for columns that no reader could
    decode (sizes that disagree with the shape, steps not strictly increasing, no step), so a producer never
    writes one."""
    record: records.StepBlock = {
        "trace_id": cols.trace_id,
        "request_id": cols.request_id,
        "model_version": cols.model_version,
        "count": len(cols),
        "num_layers": cols.num_layers,
        "num_heads": cols.num_heads,
        "topk_k": cols.topk_k,
        "attention_signal": cols.attention_signal,  # type: ignore[typeddict-item]
        "token_text": list(cols.token_text),
        "step": _pack(cols.step, I32),
        "token_id": _pack(cols.token_id, I32),
        "logprob": _pack(cols.logprob, F32),
        "entropy_bits": _pack(cols.entropy_bits, F32),
        "top1_top2_margin": _pack(cols.top1_top2_margin, F32),
        "topk_mass": _pack(cols.topk_mass, F32),
        "surprisal_bits": _pack(cols.surprisal_bits, F32),
        "layer_hidden_l2": _pack(cols.layer_hidden_l2, F32),
        "layer_hidden_maxabs": _pack(cols.layer_hidden_maxabs, F32),
        "layer_nonfinite": _pack(cols.layer_nonfinite, I32),
        "head_attention_entropy": _pack(cols.head_attention_entropy, F32),
        "ffn_sparsity": _pack(cols.ffn_sparsity, F32),
        "hidden_sketch": _pack(cols.hidden_sketch, F16),
        "latency_us": _pack(cols.latency_us, I64),
        "peak_memory_bytes": _pack(cols.peak_memory_bytes, I64),
        "emitted_at_us": _pack(cols.emitted_at_us, I64),
        "flushed_at_us": int(flushed_at_us),
    }
    _check_block(record)
    return record


def _check_block(record: Mapping[str, Any]) -> tuple[npt.NDArray[np.int64], int]:
    """The block's steps and its sketch width D; DecodeError naming the first field whose size disagrees with
    ``count``, ``num_layers`` and ``num_heads`` (Avro cannot say it: the columns are bytes, their shape is in
    siblings), or when the steps are not strictly increasing."""
    n, layers, heads = int(record["count"]), int(record["num_layers"]), int(record["num_heads"])
    where = f"step block of trace {record['trace_id']}"
    if n < 1:
        raise DecodeError(f"{where}: count is {n}, a block holds at least one step")
    if layers < 0 or heads < 0:
        raise DecodeError(f"{where}: negative shape: num_layers {layers}, num_heads {heads}")
    if len(record["token_text"]) != n:
        raise DecodeError(f"{where}: token_text has {len(record['token_text'])} strings for {n} steps")

    def size(field: str, need: int, dtype: np.dtype[Any], optional: bool = False) -> None:
        got = len(record[field])
        if got != need * dtype.itemsize and not (optional and got == 0):
            empty = " (or none)" if optional else ""
            raise DecodeError(f"{where}: {field} has {got} bytes, {need} values{empty} need {need * dtype.itemsize}")

    for field, dtype in _PACKED.items():
        size(field, n, dtype)
    for field in ("layer_hidden_l2", "layer_hidden_maxabs", "ffn_sparsity"):
        size(field, n * layers, F32, optional=True)
    size("layer_nonfinite", n * layers, I32)
    size("head_attention_entropy", n * layers * heads, F32, optional=True)
    sketch = len(record["hidden_sketch"])
    if sketch % (n * F16.itemsize):
        raise DecodeError(f"{where}: hidden_sketch has {sketch} bytes, not {n} rows of float16 values")
    step = np.frombuffer(record["step"], dtype=I32).astype(np.int64)
    if n > 1 and not bool(np.all(step[1:] > step[:-1])):
        raise DecodeError(f"{where}: steps {step.tolist()} are not strictly increasing")
    return step, sketch // (n * F16.itemsize)


def _column(record: Mapping[str, Any], field: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """A read-only view of a packed column (sizes already checked); an empty column as ``shape`` with zero width."""
    data = record[field]
    if not data:
        return np.empty(tuple(s if i == 0 else 0 for i, s in enumerate(shape)), dtype=dtype.newbyteorder("="))
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def columns(record: Mapping[str, Any]) -> StepColumns:
    """The columns of a decoded StepBlock record: numpy views over its bytes, no per-step work but the token texts;
    DecodeError when a packed size disagrees with ``count``, ``num_layers`` or ``num_heads``, when the steps are not
    strictly increasing, or when the block is empty."""
    step, sketch = _check_block(record)
    n, layers, heads = int(record["count"]), int(record["num_layers"]), int(record["num_heads"])
    return StepColumns(
        trace_id=str(record["trace_id"]),
        request_id=str(record["request_id"]),
        model_version=str(record["model_version"]),
        num_layers=layers,
        num_heads=heads,
        attention_signal=str(record["attention_signal"]),
        topk_k=int(record["topk_k"]),
        step=step,
        token_id=np.frombuffer(record["token_id"], dtype=I32).astype(np.int64),
        token_text=[str(t) for t in record["token_text"]],
        **{f: np.frombuffer(record[f], dtype=F32) for f in SCALARS},  # type: ignore[arg-type]
        layer_hidden_l2=_column(record, "layer_hidden_l2", F32, (n, layers)),
        layer_hidden_maxabs=_column(record, "layer_hidden_maxabs", F32, (n, layers)),
        layer_nonfinite=np.frombuffer(record["layer_nonfinite"], dtype=I32).astype(np.int64).reshape(n, layers),
        head_attention_entropy=_column(record, "head_attention_entropy", F32, (n, layers, heads)),
        ffn_sparsity=_column(record, "ffn_sparsity", F32, (n, layers)),
        hidden_sketch=_column(record, "hidden_sketch", F16, (n, sketch)).astype(np.float32),
        **{f: np.frombuffer(record[f], dtype=I64).astype(np.int64) for f in COUNTS},  # type: ignore[arg-type]
    )
