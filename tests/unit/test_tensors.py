"""Packed float32 fields: exact round trip, shape checks, GenerationStep accessors."""

from __future__ import annotations

import numpy as np
import pytest

from evostream.errors import DecodeError
from schemas import RecordCodec
from schemas.samples import generation_step
from schemas.tensors import pack_f32, step_heads, step_layers, unpack_f32


def test_pack_is_little_endian_row_major_float32() -> None:
    m = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]])
    data = pack_f32(m)
    assert data[:4] == b"\x00\x00\x80\x3f"  # 1.0 in IEEE-754 binary32, little-endian
    assert data[4:8] == b"\x00\x00\x00\x40"  # 2.0 in IEEE-754 binary32, little-endian
    assert np.array_equal(unpack_f32(data, (2, 3)), m.astype(np.float32))


def test_nan_and_inf_survive() -> None:
    v = np.array([np.nan, np.inf, -np.inf, 0.0], dtype=np.float32)
    back = unpack_f32(pack_f32(v), (4,))
    assert np.isnan(back[0]) and back[1] == np.inf and back[2] == -np.inf and back[3] == 0.0


def test_wrong_size_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match=r"has 8 bytes, shape \(3,\) needs 12"):
        unpack_f32(pack_f32([1.0, 2.0]), (3,))


def test_generation_step_accessors_after_a_round_trip() -> None:
    codec = RecordCodec("GenerationStep")
    step = codec.decode(codec.encode(generation_step(5, "t", layers=6, heads=8)))
    heads = step_heads(step)
    assert heads.shape == (6, 8)
    assert step_layers(step, "layer_hidden_l2").shape == (6,)
    assert step_layers(step | {"ffn_sparsity": b""}, "ffn_sparsity").shape == (0,)
    assert step_heads(step | {"head_attention_entropy": b""}).shape == (0, 0)
