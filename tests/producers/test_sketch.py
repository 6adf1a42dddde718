"""The hidden-state sketch: fixed across processes and runs, on the two layers it names, finite, and emitted with
the other statistics as float16 on every step."""

from __future__ import annotations

import numpy as np
import torch

from evostream.producers.generate import GenParams, InstrumentedGenerator
from evostream.producers.sketch import HiddenSketch, sketch_layers
from evostream.producers.steps import StepBatch, TraceMeta, step_records
from evostream.schemas.tensors import unpack_f16
from tests.producers.models import tiny as model


def test_two_sketches_of_a_model_project_alike_and_read_the_middle_and_last_layer() -> None:
    hidden = torch.randn(3, 6, 16)  # [B, L, D]
    a, b = HiddenSketch(6, dim=8), HiddenSketch(6, dim=8)
    assert sketch_layers(6) == (3, 5)
    assert torch.equal(a(hidden), b(hidden))  # a new process draws the same projections
    assert a(hidden).shape == (3, 16)
    changed = hidden.clone()
    changed[:, 0] += 100.0  # a layer it does not read
    assert torch.equal(a(changed), a(hidden))
    changed[:, 5] += 1.0
    assert not torch.equal(a(changed), a(hidden))
    assert torch.equal(a(list(hidden.unbind(1))), a(hidden))  # layer by layer, the same numbers


def test_non_finite_states_give_a_finite_sketch() -> None:
    hidden = torch.randn(2, 4, 8)
    hidden[0, 3, 0] = float("nan")
    hidden[1, 2, 1] = float("inf")
    assert torch.isfinite(HiddenSketch(4, dim=4)(hidden)).all()


def test_every_step_carries_the_sketch_as_float16() -> None:
    gen = InstrumentedGenerator(model("t5"), sketch_dim=4)
    got: list[StepBatch] = []
    try:
        gen.generate(["reverse: abc"], GenParams(max_new_tokens=3, stop_at_eos=False), got.append)
    finally:
        gen.close()
    assert got and all(sb.sketch is not None and sb.sketch.shape == (1, 8) for sb in got)
    meta = [TraceMeta("t", "r", "", "test", 0)]
    (rec,) = step_records(got[0], meta, "m@1", gen.signal, ["x"])
    assert got[0].sketch is not None
    assert np.allclose(unpack_f16(rec["hidden_sketch"]), got[0].sketch[0], rtol=1e-2, atol=1e-3)
    off = InstrumentedGenerator(model("t5"), sketch_dim=0)
    try:
        steps: list[StepBatch] = []
        off.generate(["reverse: abc"], GenParams(max_new_tokens=2, stop_at_eos=False), steps.append)
    finally:
        off.close()
    assert all(sb.sketch is None for sb in steps)
    assert step_records(steps[0], meta, "m@1", off.signal, ["x"])[0]["hidden_sketch"] == b""
