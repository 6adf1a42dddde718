"""What the agents check before they fold a record (pure, no Faust): each record's own consistency and limits, and a
record against the state it joins. Valid Avro is not yet a record a fold can take: the schema cannot say that a
packed matrix fits its shape fields, that a trace keeps its shape from step to step, or that an embedding has the
size of the window it joins, and a record that breaks one of those stopped the agent that folded it.

A failed check raises ``DecodeError`` (the record contradicts itself, or passes a limit) or ``FoldError`` (it does
not fit the trace or window it joins); the agent dead-letters that record with the message as its reason and goes
on with the next. NaN and Inf in a step's statistics are not poison: they are what the risk flags look for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evostream.core.errors import DecodeError, FoldError
from evostream.schemas.blocks import StepColumns, columns
from evostream.schemas.tensors import check_step as check_step_matrices

MAX_LAYERS = 1024
"""Layers a step or a neuron-count record may report (the largest open models have under 200)."""
MAX_HEADS = 1024
"""Attention heads per layer a step may report."""
MAX_LAYER_HEADS = 1 << 16
"""Layers x heads: a block carries that many float32 per step, and its row of a ProfileDelta that many float64, measured
or not (the largest open models have under 20,000)."""
MAX_EMBEDDING_DIM = 2048
"""Values in a prompt embedding: every embedding of a drift window is kept in one changelog value."""
FLOAT16_MAX = 65504.0
"""The drift state keeps embeddings as float16: a larger magnitude would be stored as Inf."""

StepShape = tuple[int, int, bool, bool, bool]
"""What a trace's steps must share: num_layers, num_heads, and whether hidden L2, hidden max-abs and the head signal
are measured (the risk fold keeps per-step rows of them, which must line up)."""


def check_step(step: Mapping[str, Any]) -> None:
    """DecodeError where a GenerationStep contradicts itself or passes a limit."""
    check_step_matrices(step)
    layers, heads = int(step["num_layers"]), int(step["num_heads"])
    if layers > MAX_LAYERS or heads > MAX_HEADS or layers * heads > MAX_LAYER_HEADS:
        raise DecodeError(
            f"num_layers {layers} x num_heads {heads} above the limits "
            f"({MAX_LAYERS} layers, {MAX_HEADS} heads, {MAX_LAYER_HEADS} in all)"
        )
    if int(step["step"]) < 0:
        raise DecodeError(f"negative step index {step['step']}")
    nonfinite = step["layer_nonfinite"]
    if len(nonfinite) not in (0, layers):
        raise DecodeError(f"layer_nonfinite has {len(nonfinite)} values, {layers} layers need {layers}")
    if any(int(n) < 0 for n in nonfinite):
        raise DecodeError("layer_nonfinite holds a negative count")
    if len(step.get("hidden_sketch") or b"") % 2:
        raise DecodeError("hidden_sketch is not a whole number of float16 values")


def check_block(block: Mapping[str, Any]) -> StepColumns:
    """The columns of a decoded StepBlock (``schemas/blocks.py``); DecodeError where the block contradicts itself
    or passes a limit, as ``check_step`` for each of its steps. The limits are checked before any column is read."""
    layers, heads = int(block["num_layers"]), int(block["num_heads"])
    if layers > MAX_LAYERS or heads > MAX_HEADS or layers * heads > MAX_LAYER_HEADS:
        raise DecodeError(
            f"num_layers {layers} x num_heads {heads} above the limits "
            f"({MAX_LAYERS} layers, {MAX_HEADS} heads, {MAX_LAYER_HEADS} in all)"
        )
    cols = columns(block)
    if int(cols.step[0]) < 0:
        raise DecodeError(f"negative step index {int(cols.step[0])}")
    if cols.layer_nonfinite.size and int(cols.layer_nonfinite.min()) < 0:
        raise DecodeError("layer_nonfinite holds a negative count")
    return cols


def step_shape(step: Mapping[str, Any]) -> StepShape:
    """The shape a trace's first step sets and its later steps must repeat."""
    return (
        int(step["num_layers"]),
        int(step["num_heads"]),
        bool(step["layer_hidden_l2"]),
        bool(step["layer_hidden_maxabs"]),
        bool(step["head_attention_entropy"]),
    )


def check_step_joins(shape: Sequence[Any] | None, step: Mapping[str, Any]) -> None:
    """FoldError where ``step`` does not have the shape of its trace's earlier steps (None: it is the first)."""
    if shape is not None:
        _check_joins(shape, step_shape(step), int(step["step"]), str(step["trace_id"]))


def block_shape(cols: StepColumns) -> StepShape:
    """``step_shape`` of every step of a block (they share it)."""
    return (
        cols.num_layers,
        cols.num_heads,
        bool(cols.layer_hidden_l2.shape[1]),
        bool(cols.layer_hidden_maxabs.shape[1]),
        bool(cols.head_attention_entropy.size),
    )


def check_block_joins(shape: Sequence[Any] | None, cols: StepColumns) -> None:
    """``check_step_joins`` of a block's first step, which the block's other steps share the shape of."""
    if shape is not None and len(cols):
        _check_joins(shape, block_shape(cols), int(cols.step[0]), cols.trace_id)


def _check_joins(shape: Sequence[Any], got: StepShape, step: int, trace_id: str) -> None:
    if tuple(shape) != got:
        raise FoldError(
            f"step {step} of trace {trace_id} has shape {_fmt_shape(got)}, "
            f"its trace's earlier steps {_fmt_shape(tuple(shape))}"
        )


def _fmt_shape(shape: Sequence[Any]) -> str:
    layers, heads, l2, maxabs, head = shape
    measured = [n for n, on in (("l2", l2), ("maxabs", maxabs), ("heads", head)) if on]
    return f"{layers} layers x {heads} heads (measured: {', '.join(measured) or 'none'})"


def check_completion(completion: Mapping[str, Any]) -> None:
    """DecodeError where a Completion contradicts itself or passes a limit."""
    count = int(completion["token_count"])
    if count < 0:
        raise DecodeError(f"negative token_count {count}")
    emb = completion.get("prompt_embedding") or []
    if len(emb) > MAX_EMBEDDING_DIM:
        raise DecodeError(f"prompt_embedding has {len(emb)} values, above the limit {MAX_EMBEDDING_DIM}")
    if not all(math.isfinite(x) and abs(x) <= FLOAT16_MAX for x in emb):
        raise DecodeError("prompt_embedding holds NaN, Inf, or a value beyond float16's range")


def check_embedding_joins(dim: int | None, completion: Mapping[str, Any]) -> None:
    """FoldError where a Completion's embedding does not have the size of the drift windows it joins (None: the
    model has no embedding yet). An empty embedding joins nothing (the drift fold skips it)."""
    size = len(completion.get("prompt_embedding") or [])
    if dim is not None and size and size != dim:
        raise FoldError(
            f"prompt_embedding of trace {completion['trace_id']} has {size} values, "
            f"the drift windows of {completion['model_version']} hold {dim}"
        )


def check_neurons(snap: Mapping[str, Any]) -> None:
    """DecodeError where a NeuronCounts record contradicts itself or passes a limit."""
    layers, width, steps = int(snap["num_layers"]), int(snap["ffn_width"]), int(snap["steps"])
    if not (1 <= layers <= MAX_LAYERS) or width < 1:
        raise DecodeError(f"num_layers {layers} / ffn_width {width}: need 1..{MAX_LAYERS} layers and a width")
    if len(snap["counts"]) != layers * width * 4:
        raise DecodeError(f"counts has {len(snap['counts'])} bytes, {layers} x {width} int32 need {layers * width * 4}")
    if steps < 0:
        raise DecodeError(f"negative steps {steps}")
    if int(snap["window_end_us"]) < int(snap["window_start_us"]):
        raise DecodeError("window_end_us before window_start_us")
    counts = np.frombuffer(snap["counts"], dtype="<i4")
    if counts.size and (int(counts.min()) < 0 or int(counts.max()) > steps):
        raise DecodeError(f"counts outside 0..{steps}, the steps the record covers")


def check_neurons_joins(shape: tuple[int, int] | None, snap: Mapping[str, Any]) -> None:
    """FoldError where a NeuronCounts record's [num_layers, ffn_width] is not that of the window it joins."""
    got = (int(snap["num_layers"]), int(snap["ffn_width"]))
    if shape is not None and got != shape:
        raise FoldError(
            f"neuron counts {snap['snapshot_id']} are {got[0]} x {got[1]}, "
            f"the open window of {snap['model_version']} holds {shape[0]} x {shape[1]}"
        )


def check_columns_join(
    heads: tuple[int, ...] | None, layers: int | None, delta_heads: tuple[int, ...], delta_layers: int
) -> None:
    """FoldError where the measured head sums or per-layer counts of a ProfileDelta's rows do not have the shape of
    the window's sums (None: the window has none yet)."""
    if heads is not None and delta_heads != heads:
        raise FoldError(f"steps with a {delta_heads} head signal join a profile window of {heads}")
    if layers is not None and delta_layers != layers:
        raise FoldError(f"steps of {delta_layers} layers join a profile window of {layers}")
