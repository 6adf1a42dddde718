"""The step emitter's worker process against the real broker: every step arrives, as its own record and in a step
block, and failures reach the caller."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from transformers import ByT5Tokenizer

from evostream.core.bus.admin import delete_topics, ensure_topics
from evostream.core.bus.consumer import EventConsumer
from evostream.core.errors import DeliveryError
from evostream.producers.emitter import StepEmitter
from evostream.producers.records import TokenTexts
from evostream.producers.steps import StepBatch, TraceMeta
from evostream.schemas.blocks import columns
from evostream.schemas.catalog import TopicSpec
from evostream.schemas.codec import RecordCodec
from evostream.schemas.tensors import step_heads, step_layers

pytestmark = pytest.mark.integration

LAYERS, HEADS = 3, 2


def batch(
    step: int, token_ids: list[int], active: list[bool], latency_us: object = 1000, heads: bool = True
) -> StepBatch:
    b = len(token_ids)
    rng = np.random.default_rng(step)
    return StepBatch(
        step=step,
        token_ids=np.array(token_ids, dtype=np.int64),
        logits=rng.random((b, 5), dtype=np.float32),
        hidden=rng.random((b, 3, LAYERS), dtype=np.float32),
        heads=rng.random((b, LAYERS, HEADS), dtype=np.float32) if heads else None,
        ffn=rng.random((b, LAYERS), dtype=np.float32),
        active=np.array(active),
        latency_us=latency_us,  # type: ignore[arg-type]
        peak_memory_bytes=1 << 20,
    )


@pytest.fixture
def topic(kafka: str) -> Iterator[str]:
    name = f"evo.test.steps.{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka, [TopicSpec(name, "GenerationStep", "trace_id", 3, "delete", 3600_000, "test")])
    yield name
    delete_topics(kafka, [name])


@pytest.fixture
def blocks(kafka: str) -> Iterator[str]:
    name = f"evo.test.step-blocks.{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka, [TopicSpec(name, "StepBlock", "trace_id", 3, "delete", 3600_000, "test")])
    yield name
    delete_topics(kafka, [name])


def read_all(
    kafka: str,
    topic: str,
    expected: int,
    schema: str = "GenerationStep",
    size: Callable[[dict[str, Any]], int] = lambda _: 1,
    polls: int = 40,
) -> list[dict[str, Any]]:
    """The records of ``topic`` in the order read (a partition's in offset order) once their sizes reach
    ``expected``, or whatever came within ``polls`` half seconds."""
    codec = RecordCodec(schema)
    out: list[dict[str, Any]] = []
    with EventConsumer(kafka, f"test-{uuid.uuid4().hex}", [topic]) as consumer:
        for _ in range(polls):
            out += [codec.decode(m.value() or b"") for m in consumer.poll_batch(1000, 0.5)]
            if sum(size(r) for r in out) >= expected:
                break
    return out


def test_every_active_row_of_every_step_arrives_with_its_statistics(kafka: str, topic: str, blocks: str) -> None:
    metas = [TraceMeta(f"trace-{i}", f"req-{i}", "", "t", 0) for i in range(2)]
    texts = TokenTexts(ByT5Tokenizer())
    sent = [batch(s, [104 + s, 105 + s], [True, s < 3]) for s in range(6)]  # row 1 finishes after step 2
    emitter = StepEmitter(kafka, topic=topic, blocks_topic=blocks)
    try:
        for sb in sent:
            emitter.submit(sb, metas, "m@1", "OUTPUT_NORM", texts.rows(sb))
        emitter.drain()
        assert emitter.emitted == 6 + 3
    finally:
        emitter.close()
    got = read_all(kafka, topic, 9)
    assert len(got) == 9
    by_key = {(r["trace_id"], r["step"]): r for r in got}
    for sb in sent:
        for row, meta in enumerate(metas):
            rec = by_key.get((meta.trace_id, sb.step))
            if not sb.active[row]:
                assert rec is None
                continue
            assert rec is not None
            assert rec["token_id"] == int(sb.token_ids[row])
            assert rec["token_text"] == chr(int(sb.token_ids[row]) - 3)  # ByT5: byte b is id b + 3
            np.testing.assert_array_equal(step_layers(rec, "layer_hidden_l2"), sb.hidden[row, 0])
            np.testing.assert_array_equal(step_heads(rec), sb.heads[row])  # type: ignore[index]
            assert rec["logprob"] == pytest.approx(float(sb.logits[row, 0]))


def test_a_record_the_worker_cannot_encode_fails_the_callers_next_call(kafka: str, topic: str, blocks: str) -> None:
    metas = [TraceMeta("trace-x", "req-x", "", "t", 0)]
    emitter = StepEmitter(kafka, topic=topic, blocks_topic=blocks)
    try:
        emitter.submit(batch(0, [110], [True], latency_us="soon"), metas, "m@1", "OUTPUT_NORM", ["k"])
        with pytest.raises(DeliveryError, match="latency_us"):
            emitter.drain()
        with pytest.raises(DeliveryError, match="step emission failed"):
            emitter.submit(batch(1, [110], [True]), metas, "m@1", "OUTPUT_NORM", ["k"])
    finally:
        with pytest.raises(DeliveryError):
            emitter.close()


def test_every_step_is_in_exactly_one_block_in_order_equal_to_its_record(kafka: str, topic: str, blocks: str) -> None:
    metas = [TraceMeta(f"trace-b{i}", f"req-b{i}", "", "t", 0) for i in range(3)]
    texts = TokenTexts(ByT5Tokenizer())
    # row 2 finishes after step 4; steps 6 and 7 carry no attention signal (a new block mid-window)
    sent = [batch(s, [100 + s, 101 + s, 102 + s], [True, True, s < 5], heads=s not in (6, 7)) for s in range(10)]
    # a block window longer than the test: the blocks leave at the drain, each as long as its trace's shape allows
    emitter = StepEmitter(kafka, topic=topic, blocks_topic=blocks, block_window_s=60.0)
    try:
        for s, sb in enumerate(sent):
            emitter.submit(sb, metas, "m@1", "OUTPUT_NORM", texts.rows(sb))
            if s == 3:
                time.sleep(emitter.coalesce_s * 2)  # step 4 leaves the generating thread in a window of its own
        emitter.drain()
        assert emitter.emitted == 10 + 10 + 5
        assert emitter.blocks_emitted == 3 + 3 + 1  # cut where the heads stop (6) and start again (8); row 2 at 5
    finally:
        emitter.close()
    steps = read_all(kafka, topic, 25)
    got = read_all(kafka, blocks, 25, "StepBlock", lambda b: b["count"])
    assert len(got) == emitter.blocks_emitted
    unsignalled = sorted(int(i) for r in got if r["attention_signal"] == "NONE" for i in columns(r).step)
    assert unsignalled == [6, 6, 7, 7]  # the steps without heads travel in blocks of their own
    per_trace: dict[str, list[dict[str, Any]]] = {}
    for record in got:
        cols = columns(record)
        assert cols.trace_id == record["trace_id"]
        per_trace.setdefault(cols.trace_id, []).extend(cols.rows())
    for meta in metas:
        expected = sorted((r for r in steps if r["trace_id"] == meta.trace_id), key=lambda r: int(r["step"]))
        assert [r["step"] for r in expected] == list(range(10 if meta is not metas[2] else 5))
        assert per_trace[meta.trace_id] == expected  # every step once, in order, equal to its GenerationStep


def test_blocks_leave_without_a_drain_when_their_window_ends_or_a_step_is_not_finite(
    kafka: str, topic: str, blocks: str
) -> None:
    metas = [TraceMeta(f"trace-w{i}", f"req-w{i}", "", "t", 0) for i in range(2)]
    texts = TokenTexts(ByT5Tokenizer())
    sick = batch(3, [110, 111], [True, True])
    sick.hidden[1, 2, 1] = 4  # row 1's step 3: four NaN or Inf values in layer 1
    emitter = StepEmitter(kafka, topic=topic, blocks_topic=blocks, block_window_s=60.0)
    try:
        for sb in [batch(s, [104 + s, 105 + s], [True, True]) for s in range(3)]:
            emitter.submit(sb, metas, "m@1", "OUTPUT_NORM", texts.rows(sb))
        time.sleep(emitter.coalesce_s * 2)  # so the generating thread hands the sick step over at once
        emitter.submit(sick, metas, "m@1", "OUTPUT_NORM", texts.rows(sick))
        # no drain: the urgent step takes the steps of its trace waiting before it, the other trace waits on (its
        # steps are read for 3 s more: none come)
        got = read_all(kafka, blocks, 8, "StepBlock", lambda b: b["count"], polls=6)
        assert [(r["trace_id"], list(columns(r).step)) for r in got] == [("trace-w1", [0, 1, 2, 3])]
    finally:
        emitter.close()  # drains: trace-w0's block leaves
    short = StepEmitter(kafka, topic=topic, blocks_topic=blocks, block_window_s=0.3, block_max_steps=64)
    try:
        short.submit(batch(0, [104], [True]), [TraceMeta("trace-t", "req-t", "", "t", 0)], "m@1", "NONE", ["a"])
        got = read_all(kafka, blocks, 4 + 4 + 1, "StepBlock", lambda b: b["count"])  # the window's end sends it
        per_trace = {r["trace_id"]: list(columns(r).step) for r in got}
        assert per_trace == {"trace-w1": [0, 1, 2, 3], "trace-w0": [0, 1, 2, 3], "trace-t": [0]}
    finally:
        short.close()


def test_a_token_the_tokenizer_cannot_decode_is_still_reported() -> None:
    texts = TokenTexts(ByT5Tokenizer())
    assert texts(104) == "e"
    assert texts(50_000) == "<id:50000>"
