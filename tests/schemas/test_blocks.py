"""Step blocks on the wire: a StepBlock record gives back every step's GenerationStep record, and a block whose
packed sizes disagree with its shape is refused."""

from __future__ import annotations

from typing import Any

import pytest

from evostream.schemas.blocks import block_record, columns, from_steps, split_blocks
from evostream.schemas.codec import RecordCodec
from evostream.schemas.errors import DecodeError
from evostream.schemas.samples import generation_step

STEPS = RecordCodec("GenerationStep")
BLOCKS = RecordCodec("StepBlock")


def as_read(step: Any) -> dict[str, Any]:
    """A GenerationStep record as a reader of evo.steps decodes it."""
    return STEPS.decode(STEPS.encode(step))


def through_the_wire(steps: list[dict[str, Any]], flushed_at_us: int = 123) -> list[dict[str, Any]]:
    """steps -> columns -> StepBlock record -> bytes -> record -> columns -> GenerationStep records."""
    record = BLOCKS.decode(BLOCKS.encode(block_record(from_steps(steps), flushed_at_us)))
    assert record["count"] == len(steps)
    assert record["flushed_at_us"] == flushed_at_us
    return columns(record).rows()


def without(step: dict[str, Any], *fields: str) -> dict[str, Any]:
    out = dict(step)
    for f in fields:
        out[f] = b""
    if "head_attention_entropy" in fields:
        out["num_heads"] = 0
        out["attention_signal"] = "NONE"
    return out


def test_every_step_comes_back_as_its_generation_step_record() -> None:
    steps = [as_read(generation_step(i, "trace-a", layers=3, heads=5, t0_us=1_795_000_000_000_000)) for i in range(7)]
    assert through_the_wire(steps) == steps


@pytest.mark.parametrize(
    "missing",
    [("head_attention_entropy",), ("hidden_sketch",), ("ffn_sparsity",), ("head_attention_entropy", "hidden_sketch")],
    ids=lambda m: "no " + " ".join(m),
)
def test_steps_without_optional_columns_come_back_as_they_were(missing: tuple[str, ...]) -> None:
    steps = [as_read(without(dict(generation_step(i, "trace-b")), *missing)) for i in range(4)]
    assert through_the_wire(steps) == steps


def test_a_single_step_and_a_model_without_layers_come_back() -> None:
    one = [as_read(generation_step(5, "trace-c"))]
    assert through_the_wire(one) == one
    flat = [as_read(generation_step(i, "trace-d", layers=0, heads=0)) for i in range(3)]
    assert through_the_wire(flat) == flat


def test_the_head_of_a_block_is_the_block_of_its_first_steps() -> None:
    steps = [as_read(generation_step(i, "trace-h", layers=3, heads=2, t0_us=1_795_000_000_000_000)) for i in range(6)]
    cols = from_steps(steps)
    assert cols.head(4).rows() == steps[:4] and len(cols.head(4)) == 4
    assert cols.head(6) is cols and cols.head(9) is cols
    assert cols.head(0).rows() == []


def test_split_blocks_cuts_where_a_step_does_not_follow() -> None:
    steps = [as_read(generation_step(i, "trace-e")) for i in (0, 1, 2, 1, 2)]
    blocks = split_blocks(steps)
    assert [[s["step"] for s in b] for b in blocks] == [[0, 1, 2], [1, 2]]
    assert [r for b in blocks for r in through_the_wire(list(b))] == steps  # type: ignore[arg-type]


def good_record() -> dict[str, Any]:
    return dict(block_record(from_steps([generation_step(i, "trace-f", layers=3, heads=2) for i in range(4)]), 1))


@pytest.mark.parametrize(
    ("field", "cut", "message"),
    [
        ("logprob", 4, r"logprob has 12 bytes, 4 values need 16"),
        ("step", 1, r"step has 15 bytes"),
        ("emitted_at_us", 8, r"emitted_at_us has 24 bytes, 4 values need 32"),
        ("layer_hidden_l2", 4, r"layer_hidden_l2 has 44 bytes, 12 values \(or none\) need 48"),
        ("layer_nonfinite", 4, r"layer_nonfinite has 44 bytes, 12 values need 48"),
        ("head_attention_entropy", 4, r"head_attention_entropy has 92 bytes, 24 values \(or none\) need 96"),
        ("ffn_sparsity", 4, r"ffn_sparsity has 44 bytes"),
        ("hidden_sketch", 2, r"hidden_sketch has 62 bytes, not 4 rows"),
    ],
)
def test_a_column_whose_size_disagrees_with_the_shape_is_refused(field: str, cut: int, message: str) -> None:
    record = good_record()
    record[field] = record[field][:-cut]
    decoded = BLOCKS.decode(BLOCKS.encode(record))  # Avro cannot see it: the columns are bytes
    with pytest.raises(DecodeError, match=r"step block of trace trace-f: " + message):
        columns(decoded)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"count": 5}, r"token_text has 4 strings for 5 steps"),
        ({"count": 5, "token_text": list("abcde")}, r"step has 16 bytes, 5 values need 20"),
        ({"num_layers": 2}, r"layer_hidden_l2 has 48 bytes, 8 values \(or none\) need 32"),
        ({"num_heads": 3}, r"head_attention_entropy has 96 bytes, 36 values \(or none\) need 144"),
        ({"count": 0}, r"count is 0, a block holds at least one step"),
        ({"token_text": ["a", "b", "c"]}, r"token_text has 3 strings for 4 steps"),
        ({"num_layers": -1}, r"negative shape"),
    ],
)
def test_a_shape_that_disagrees_with_the_columns_is_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        columns(good_record() | change)


def test_steps_that_do_not_strictly_increase_are_refused_on_both_sides() -> None:
    repeated = [generation_step(i, "trace-g") for i in (0, 1, 1)]
    with pytest.raises(DecodeError, match=r"steps \[0, 1, 1\] are not strictly increasing"):
        block_record(from_steps(repeated), 1)
    record = good_record()
    record["step"] = record["step"][4:8] + record["step"][:4] + record["step"][8:]  # 1, 0, 2, 3
    with pytest.raises(DecodeError, match=r"steps \[1, 0, 2, 3\] are not strictly increasing"):
        columns(record)


def test_decoded_columns_are_views_of_the_record() -> None:
    record = BLOCKS.decode(BLOCKS.encode(good_record()))
    cols = columns(record)
    assert cols.logprob.base is not None and not cols.logprob.flags.writeable  # np.frombuffer, no copy
    assert cols.head_attention_entropy.shape == (4, 3, 2)
    assert cols.hidden_sketch.shape == (4, 8)
