"""The step emitter's worker process against the real broker: every step arrives, failures reach the caller."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from transformers import ByT5Tokenizer

from evostream.core.bus.admin import delete_topics, ensure_topics
from evostream.core.bus.consumer import EventConsumer
from evostream.core.errors import DeliveryError
from evostream.producers.emitter import StepEmitter
from evostream.producers.records import TokenTexts
from evostream.producers.steps import StepBatch, TraceMeta
from evostream.schemas.catalog import TopicSpec
from evostream.schemas.codec import RecordCodec
from evostream.schemas.tensors import step_heads, step_layers

pytestmark = pytest.mark.integration

LAYERS, HEADS = 3, 2


def batch(step: int, token_ids: list[int], active: list[bool], latency_us: object = 1000) -> StepBatch:
    b = len(token_ids)
    rng = np.random.default_rng(step)
    return StepBatch(
        step=step,
        token_ids=np.array(token_ids, dtype=np.int64),
        logits=rng.random((b, 5), dtype=np.float32),
        hidden=rng.random((b, 3, LAYERS), dtype=np.float32),
        heads=rng.random((b, LAYERS, HEADS), dtype=np.float32),
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


def read_all(kafka: str, topic: str, expected: int) -> list[dict[str, object]]:
    codec = RecordCodec("GenerationStep")
    out: list[dict[str, object]] = []
    with EventConsumer(kafka, f"test-{uuid.uuid4().hex}", [topic]) as consumer:
        for _ in range(40):
            out += [codec.decode(m.value() or b"") for m in consumer.poll_batch(1000, 0.5)]
            if len(out) >= expected:
                break
    return out


def test_every_active_row_of_every_step_arrives_with_its_statistics(kafka: str, topic: str) -> None:
    metas = [TraceMeta(f"trace-{i}", f"req-{i}", "", "t", 0) for i in range(2)]
    texts = TokenTexts(ByT5Tokenizer())
    sent = [batch(s, [104 + s, 105 + s], [True, s < 3]) for s in range(6)]  # row 1 finishes after step 2
    emitter = StepEmitter(kafka, topic=topic)
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


def test_a_record_the_worker_cannot_encode_fails_the_callers_next_call(kafka: str, topic: str) -> None:
    metas = [TraceMeta("trace-x", "req-x", "", "t", 0)]
    emitter = StepEmitter(kafka, topic=topic)
    try:
        emitter.submit(batch(0, [110], [True], latency_us="soon"), metas, "m@1", "OUTPUT_NORM", ["k"])
        with pytest.raises(DeliveryError, match="latency_us"):
            emitter.drain()
        with pytest.raises(DeliveryError, match="step emission failed"):
            emitter.submit(batch(1, [110], [True]), metas, "m@1", "OUTPUT_NORM", ["k"])
    finally:
        with pytest.raises(DeliveryError):
            emitter.close()


def test_a_token_the_tokenizer_cannot_decode_is_still_reported() -> None:
    texts = TokenTexts(ByT5Tokenizer())
    assert texts(104) == "e"
    assert texts(50_000) == "<id:50000>"
