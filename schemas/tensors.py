"""Packed float32 fields of the contract: little-endian, row-major, shape carried by sibling fields."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from evostream.schemas.errors import DecodeError

F32 = np.dtype("<f4")
F32Array = npt.NDArray[np.float32]


def pack_f32(values: npt.ArrayLike) -> bytes:
    """Bytes of ``values`` as little-endian float32, row-major."""
    return np.ascontiguousarray(values, dtype=F32).tobytes()


def pack_f16(values: npt.ArrayLike) -> bytes:
    """Little-endian float16 bytes of ``values`` (row-major): half the bytes, for sketches a probe reads."""
    return np.ascontiguousarray(values, dtype="<f2").tobytes()


def unpack_f16(data: bytes) -> F32Array:
    """float16 bytes as float32 numbers."""
    if len(data) % 2:
        raise DecodeError(f"packed float16 field has {len(data)} bytes, not a whole number of values")
    return np.frombuffer(data, dtype="<f2").astype(F32)


def unpack_f32(data: bytes, shape: Sequence[int]) -> F32Array:
    """A read-only float32 array of ``shape`` over ``data``; DecodeError when the sizes disagree."""
    expected = int(np.prod(shape)) * F32.itemsize
    if len(data) != expected:
        raise DecodeError(f"packed float32 field has {len(data)} bytes, shape {tuple(shape)} needs {expected}")
    return np.frombuffer(data, dtype=F32).reshape(tuple(shape))


def step_layers(step: Mapping[str, Any], field: str) -> F32Array:
    """A per-layer field of a GenerationStep as an array of length num_layers (empty if not measured)."""
    data = step[field]
    return unpack_f32(data, (step["num_layers"],)) if data else np.empty(0, dtype=F32)


def step_heads(step: Mapping[str, Any]) -> F32Array:
    """head_attention_entropy of a GenerationStep as a [num_layers, num_heads] array (empty shape if NONE)."""
    data = step["head_attention_entropy"]
    if not data:
        return np.empty((0, 0), dtype=F32)
    return unpack_f32(data, (step["num_layers"], step["num_heads"]))


PER_LAYER_FIELDS = ("layer_hidden_l2", "layer_hidden_maxabs", "ffn_sparsity")


def check_step(step: Mapping[str, Any]) -> None:
    """DecodeError where a decoded GenerationStep's packed fields disagree with its ``num_layers`` / ``num_heads``
    (an empty field is allowed: not measured). Avro cannot say it: the fields are bytes, their shape is in siblings;
    a step that fails here would fail every consumer that unpacks it."""
    layers, heads = int(step["num_layers"]), int(step["num_heads"])
    if layers < 0 or heads < 0:
        raise DecodeError(f"negative shape: num_layers {layers}, num_heads {heads}")
    for field in PER_LAYER_FIELDS:
        size = len(step.get(field) or b"")
        if size and size != layers * F32.itemsize:
            raise DecodeError(f"{field} has {size} bytes, {layers} layers need {layers * F32.itemsize}")
    size = len(step["head_attention_entropy"] or b"")
    if size and size != layers * heads * F32.itemsize:
        raise DecodeError(
            f"head_attention_entropy has {size} bytes, {layers} x {heads} heads need {layers * heads * F32.itemsize}"
        )
