"""The block buffer of the step emitter: which of a trace's steps leave together, and when."""

from __future__ import annotations

from typing import Any

import pytest

from evostream.producers.blocking import BlockBuffer, step_bytes, urgent
from evostream.schemas.samples import generation_step


def step(trace: str, i: int, **changes: Any) -> dict[str, Any]:
    rec = dict(generation_step(i, trace))
    rec.update(changes)
    return rec


def shape(blocks: list[list[Any]]) -> list[tuple[str, list[int]]]:
    return [(b[0]["trace_id"], [s["step"] for s in b]) for b in blocks]


def test_a_traces_steps_wait_for_the_window_then_leave_as_one_block() -> None:
    buf = BlockBuffer(window_s=0.2, max_steps=64)
    assert buf.add([step("a", 0), step("b", 0)], now=10.0) == []
    assert buf.add([step("a", 1), step("b", 1)], now=10.1) == []
    assert buf.next_due() == pytest.approx(10.2) and len(buf) == 4
    assert buf.due(10.19) == []
    assert shape(buf.due(10.21)) == [("a", [0, 1]), ("b", [0, 1])]
    assert len(buf) == 0 and buf.next_due() is None


def test_a_full_block_leaves_at_once_and_the_rest_waits_from_then() -> None:
    buf = BlockBuffer(window_s=0.2, max_steps=4)
    assert buf.add([step("a", i) for i in range(3)], now=1.0) == []
    assert shape(buf.add([step("a", i) for i in range(3, 10)], now=1.15)) == [("a", [0, 1, 2, 3]), ("a", [4, 5, 6, 7])]
    assert buf.next_due() == pytest.approx(1.35)  # steps 8 and 9 came at 1.15
    assert shape(buf.flush()) == [("a", [8, 9])]


def test_an_urgent_step_takes_its_traces_waiting_steps_with_it_and_no_other_trace() -> None:
    buf = BlockBuffer(window_s=0.2, max_steps=64)
    buf.add([step("a", 0), step("b", 0)], now=0.0)
    nan = step("a", 1, entropy_bits=float("nan"))
    assert urgent(nan) and not urgent(step("a", 2))
    assert shape(buf.add([nan, step("b", 1)], now=0.05)) == [("a", [0, 1])]
    assert shape(buf.flush()) == [("b", [0, 1])]


def test_non_finite_hidden_states_are_urgent() -> None:
    assert urgent(step("a", 0, layer_nonfinite=[0, 3, 0, 0]))
    assert urgent(step("a", 0, logprob=float("-inf")))
    assert not urgent(step("a", 0))


def test_a_shape_change_ends_the_block_before_it() -> None:
    buf = BlockBuffer(window_s=0.2, max_steps=64)
    buf.add([step("a", 0), step("a", 1)], now=0.0)
    no_heads = {"head_attention_entropy": b"", "num_heads": 0, "attention_signal": "NONE"}
    assert shape(buf.add([step("a", 2, **no_heads), step("a", 3, **no_heads)], now=0.1)) == [("a", [0, 1])]
    assert buf.next_due() == pytest.approx(0.3)
    assert buf.due(0.29) == [] and shape(buf.due(0.31)) == [("a", [2, 3])]


def test_a_step_that_does_not_follow_starts_a_new_block() -> None:
    buf = BlockBuffer(window_s=0.2, max_steps=64)
    buf.add([step("a", i) for i in range(3)], now=0.0)
    assert shape(buf.add([step("a", 0)], now=0.1)) == [("a", [0, 1, 2])]  # the trace served again from its start
    assert shape(buf.flush()) == [("a", [0])]


def test_every_step_leaves_once_in_order() -> None:
    buf = BlockBuffer(window_s=0.05, max_steps=5)
    out: list[list[Any]] = []
    for t in range(40):
        steps = [step(f"tr-{k}", t, entropy_bits=float("nan") if (t, k) == (17, 2) else 0.5) for k in range(4)]
        out += buf.add(steps, now=t * 0.01) + buf.due(t * 0.01)
    out += buf.flush()
    for k in range(4):
        mine = [s["step"] for b in out for s in b if s["trace_id"] == f"tr-{k}"]
        assert mine == list(range(40))
    assert max(len(b) for b in out) == 5


def test_a_wide_models_steps_are_cut_by_bytes_before_the_record_limit() -> None:
    wide = {"head_attention_entropy": bytes(80 * 64 * 4), "num_heads": 64}  # ~21 kB a step
    assert step_bytes(step("a", 0, **wide)) > 80 * 64 * 4
    buf = BlockBuffer(window_s=0.2, max_steps=64, max_bytes=100_000)
    blocks = buf.add([step("a", i, **wide) for i in range(10)], now=0.0) + buf.flush()
    assert [len(b) for b in blocks] == [4, 4, 2]  # 100 kB hold four such steps
    assert all(sum(step_bytes(s) for s in b) <= 100_000 for b in blocks)


def test_a_window_or_block_size_that_cannot_be_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 0 steps"):
        BlockBuffer(0.2, 0)
    with pytest.raises(ValueError, match="-1"):
        BlockBuffer(-1, 4)
