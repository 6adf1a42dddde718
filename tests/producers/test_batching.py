"""Continuous batching: requests that join a running batch at different steps and leave it when done decode the
same tokens, with the same step statistics, as each decoded alone; the cache shrinks when rows leave."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from evostream.producers.batching import Row, RunningBatch
from evostream.producers.generate import GenerationError, GenParams, InstrumentedGenerator
from evostream.producers.steps import StepBatch
from tests.producers.models import FAMILIES, tiny

PROMPTS = ["reverse: hello", "sort: abcdefghij", "upper: x", "add: 12+345", "lookup: k in a=1,k=7,z=3", "date: 5"]
LIMITS = [12, 5, 9, 1, 12, 7]


def alone(gen: InstrumentedGenerator, prompt: str, limit: int) -> tuple[list[int], list[StepBatch]]:
    steps: list[StepBatch] = []
    res = gen.generate([prompt], GenParams(max_new_tokens=limit), steps.append)
    return res[0].token_ids, steps


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_joining_and_leaving_decode_as_each_alone(family: str) -> None:
    gen = InstrumentedGenerator(tiny(family, varied=True), signal="OUTPUT_NORM")
    try:
        want = [alone(gen, p, n) for p, n in zip(PROMPTS, LIMITS, strict=True)]
        assert len({tuple(t) for t, _ in want}) == len(PROMPTS), "the model answers alike: the test would prove little"
        gen.take_neuron_counts()
        batch = RunningBatch(gen, max_rows=3)
        seen: dict[int, dict[int, StepBatch]] = defaultdict(dict)  # request -> step -> its one-row view
        sizes: list[int] = []

        def on_step(sb: StepBatch, rows: list[Row]) -> None:
            assert sb.row_steps is not None
            sizes.append(len(rows))
            for r, row in enumerate(rows):
                assert sb.row_steps[r] == row.step - 1  # the step this token is
                assert int(sb.row_steps[r]) not in seen[row.key], "a step was reported twice"
                seen[row.key][int(sb.row_steps[r])] = StepBatch(
                    0,
                    sb.token_ids[r : r + 1],
                    sb.logits[r : r + 1],
                    sb.hidden[r : r + 1],
                    None if sb.heads is None else sb.heads[r : r + 1],
                    None if sb.ffn is None else sb.ffn[r : r + 1],
                    sb.active[r : r + 1],
                    0,
                    0,
                )

        finished: list[Row] = []
        waiting = list(range(len(PROMPTS)))
        # one joins, two steps; two join mid-flight; then every free row is taken as soon as one leaves
        finished += batch.admit([PROMPTS[0]], [Row(0, LIMITS[0])], on_step)
        waiting.remove(0)
        finished += batch.step(on_step) + batch.step(on_step)
        while waiting or len(batch):
            take = waiting[: batch.free]
            if take:
                finished += batch.admit([PROMPTS[i] for i in take], [Row(i, LIMITS[i]) for i in take], on_step)
                waiting = waiting[len(take) :]
            finished += batch.step(on_step)
        assert sorted(row.key for row in finished) == list(range(len(PROMPTS)))  # each once
        assert max(sizes) == 3 and len(batch) == 0
        for row in finished:
            tokens, steps = want[row.key]
            assert row.result.token_ids == tokens, f"request {row.key} decoded differently in the running batch"
            assert sorted(seen[row.key]) == list(range(len(tokens)))
            got = [seen[row.key][t] for t in range(len(tokens))]
            np.testing.assert_allclose([g.logits[0] for g in got], [s.logits[0] for s in steps], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose([g.hidden[0] for g in got], [s.hidden[0] for s in steps], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(
                [g.heads[0] for g in got],
                [s.heads[0] for s in steps],
                rtol=1e-4,  # type: ignore[index]
                atol=1e-5,
            )
        counts = gen.take_neuron_counts()
        assert counts is not None and counts[1] == sum(len(t) for t, _ in want)  # each token counted once
    finally:
        gen.close()


def test_the_cache_shrinks_when_the_long_rows_leave() -> None:
    gen = InstrumentedGenerator(tiny("gpt2", varied=True), instrument=False)
    batch = RunningBatch(gen, max_rows=2)
    batch.admit(["sort: abcdefghijklmnopqrstuvwxyz"], [Row("long", 3)])
    batch.admit(["a"], [Row("short", 20)])
    wide = batch._mask.shape[1]  # type: ignore[union-attr]
    while len(batch) == 2:
        batch.step()
    assert [row.key for row in batch.rows] == ["short"]
    assert batch._mask.shape[1] < wide  # type: ignore[union-attr]
    assert bool(batch._mask.all())  # type: ignore[union-attr]  # no padding column left


def test_admission_is_bounded_and_checked() -> None:
    gen = InstrumentedGenerator(tiny("t5", varied=True))
    batch = RunningBatch(gen, max_rows=1)
    with pytest.raises(GenerationError, match="2 rows do not fit: 1 free of 1"):
        batch.admit(["a", "b"], [Row(1, 4), Row(2, 4)])
    with pytest.raises(GenerationError, match="one prompt per row"):
        batch.admit(["a"], [])
    with pytest.raises(GenerationError, match="dynamic KV cache"):
        RunningBatch(InstrumentedGenerator(tiny("gpt2"), kv_cache="static"), 2)
