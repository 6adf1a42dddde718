"""Packed float32 fields: exact round trip, shape checks, GenerationStep accessors."""

from __future__ import annotations

import numpy as np
import pytest

from evostream.core.errors import DecodeError
from evostream.schemas import RecordCodec
from evostream.schemas.samples import generation_step
from evostream.schemas.tensors import check_step, pack_f32, step_heads, step_layers, unpack_f32


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


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("layer_hidden_l2", pack_f32([1.0, 2.0, 3.0]), "layer_hidden_l2 has 12 bytes, 4 layers need 16"),
        ("layer_hidden_maxabs", b"\x00" * 17, "layer_hidden_maxabs has 17 bytes"),
        ("ffn_sparsity", pack_f32([0.5] * 5), "ffn_sparsity has 20 bytes"),
        ("head_attention_entropy", pack_f32([1.0] * 15), "4 x 4 heads need 64"),
        ("num_heads", -1, "negative shape"),
    ],
)
def test_a_step_whose_matrices_disagree_with_its_shape_is_a_decode_error(
    field: str, value: object, message: str
) -> None:
    step = generation_step(0, "t")  # 4 layers x 4 heads
    check_step(step)  # well-formed
    step[field] = value
    with pytest.raises(DecodeError, match=message):
        check_step(step)


def test_a_step_without_measurements_is_well_formed() -> None:
    step = generation_step(0, "t")
    step.update(layer_hidden_l2=b"", layer_hidden_maxabs=b"", ffn_sparsity=b"", head_attention_entropy=b"")
    check_step(step)
