"""Valid Avro that no fold can take: each record's own consistency and limits, and a record against the trace or
window it joins. The folds refuse such a record (rejected, or FoldError) and keep their state as it was, so the
agent dead-letters it and goes on; before, each of these stopped the agent."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from evostream.core.errors import DecodeError, FoldError
from evostream.schemas.blocks import from_steps
from evostream.schemas.samples import generation_step
from evostream.schemas.tensors import pack_f32
from evostream.stream_processors.checks import (
    MAX_EMBEDDING_DIM,
    MAX_LAYERS,
    check_completion,
    check_embedding_joins,
    check_neurons,
    check_neurons_joins,
    check_step,
    check_step_joins,
    step_shape,
)
from evostream.stream_processors.drift.policy import DriftPolicy
from evostream.stream_processors.drift.tracker import DriftTracker, DriftWindows
from evostream.stream_processors.profiling.delta import decode_partials, partial_deltas
from evostream.stream_processors.profiling.partial import block_partial
from evostream.stream_processors.profiling.tracker import ProfileTracker
from evostream.stream_processors.profiling.window import ProfilePolicy
from evostream.stream_processors.risk.policy import RiskPolicy
from evostream.stream_processors.risk.tracker import RiskTracker


def step(i: int, trace: str = "t", layers: int = 4, **changes: Any) -> dict[str, Any]:
    rec = generation_step(i, trace, layers=layers)
    rec.update({"model_version": "m@1", "entropy_bits": 0.5, "token_id": (i * 37 + 11) % 300, **changes})
    return rec


def completion(trace: str, n: int, **changes: Any) -> dict[str, Any]:
    rec = {
        "trace_id": trace,
        "request_id": f"req-{trace}",
        "model_version": "m@1",
        "token_count": n,
        "output_token_ids": [],
        "prompt_embedding": [],
        "finish_reason": "STOP",
        "error": None,
        "completed_at_us": 1_000_000,
    }
    rec.update(changes)
    return rec


def neurons(snapshot: str, layers: int, width: int, steps: int = 10, **changes: Any) -> dict[str, Any]:
    rec = {
        "snapshot_id": snapshot,
        "model_version": "m@1",
        "steps": steps,
        "num_layers": layers,
        "ffn_width": width,
        "counts": np.arange(layers * width, dtype="<i4").clip(0, steps).tobytes(),
        "window_start_us": 1_000_000,
        "window_end_us": 1_000_500,
    }
    rec.update(changes)
    return rec


UNMEASURED = {
    "layer_hidden_l2": b"",
    "layer_hidden_maxabs": b"",
    "ffn_sparsity": b"",
    "head_attention_entropy": b"",
    "layer_nonfinite": [],
}
"""A step that measured nothing: its shape fields are all it claims."""


# -- a record against itself ---------------------------------------------------------------------------------------


def test_a_step_within_its_limits_passes_and_nan_statistics_are_not_poison() -> None:
    check_step(step(0))
    check_step(step(0, layer_hidden_l2=pack_f32([1.0, float("nan"), float("inf"), 2.0]), entropy_bits=float("nan")))
    check_step(step(0, layers=0))  # a step that measured no layer


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({**UNMEASURED, "num_layers": MAX_LAYERS + 1}, "limits"),
        ({**UNMEASURED, "num_heads": 5000}, "limits"),
        ({**UNMEASURED, "num_layers": 512, "num_heads": 512}, "65536 in all"),
        ({"step": -1}, "negative step"),
        ({"layer_nonfinite": [0, 0]}, "layer_nonfinite has 2"),
        ({"layer_nonfinite": [0, -1, 0, 0]}, "negative count"),
        ({"hidden_sketch": b"\x00\x01\x02"}, "float16"),
        ({"layer_hidden_l2": pack_f32([1.0, 2.0, 3.0])}, "4 layers need 16"),
    ],
)
def test_a_step_that_contradicts_itself_or_passes_a_limit_is_refused(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(DecodeError, match=words):
        check_step(step(0, **changes))


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"token_count": -1}, "negative token_count"),
        ({"prompt_embedding": [0.1] * (MAX_EMBEDDING_DIM + 1)}, "above the limit"),
        ({"prompt_embedding": [0.1, float("nan")]}, "NaN"),
        ({"prompt_embedding": [0.1, float("-inf")]}, "NaN"),
        ({"prompt_embedding": [0.1, 1e6]}, "float16"),
    ],
)
def test_a_completion_that_contradicts_itself_is_refused(changes: dict[str, Any], words: str) -> None:
    check_completion(completion("t", 3, output_token_ids=[1, 2, 3], prompt_embedding=[0.5] * 8))
    check_completion(completion("t", 0))  # a failed request: no tokens, no embedding
    with pytest.raises(DecodeError, match=words):
        check_completion(completion("t", 3, **changes))


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"num_layers": 2, "ffn_width": 8}, "counts has 48 bytes, 2 x 8 int32 need 64"),
        ({"num_layers": 0, "ffn_width": 0, "counts": b""}, "need 1..1024 layers"),
        ({"num_layers": 100_000, "ffn_width": 1, "counts": b""}, "need 1..1024 layers"),
        ({"steps": -1}, "counts outside|negative steps"),
        ({"counts": np.full(12, 11, dtype="<i4").tobytes()}, "counts outside 0..10"),
        ({"counts": np.full(12, -1, dtype="<i4").tobytes()}, "counts outside"),
        ({"window_end_us": 0}, "before window_start_us"),
    ],
)
def test_neuron_counts_that_contradict_themselves_are_refused(changes: dict[str, Any], words: str) -> None:
    check_neurons(neurons("a", 3, 4))
    with pytest.raises(DecodeError, match=words):
        check_neurons(neurons("a", 3, 4, **changes))


# -- a record against the trace or window it joins -----------------------------------------------------------------


def test_a_step_must_keep_its_traces_shape() -> None:
    shape = step_shape(step(0))
    check_step_joins(None, step(0, layers=6))
    check_step_joins(list(shape), step(1))  # as the state stores it: a JSON list
    with pytest.raises(FoldError, match=r"6 layers x 4 heads .* earlier steps 4 layers x 4 heads"):
        check_step_joins(list(shape), step(1, layers=6))
    with pytest.raises(FoldError, match="measured: l2, heads"):
        check_step_joins(list(shape), step(1, layer_hidden_maxabs=b""))


def test_a_step_of_another_shape_is_rejected_and_its_trace_goes_on() -> None:
    """Old code: ValueError (inhomogeneous shape) from the trace's signatures, for the whole batch."""
    tracker = RiskTracker({"*": RiskPolicy()})
    first = tracker.on_steps(None, [(step(0), 10), (step(1, layers=6), 11), (step(1), 12)], 0)
    assert list(first.rejected) == [11] and "6 layers" in str(first.rejected[11])
    assert first.state["risk"]["steps"] == 2
    state = json.loads(json.dumps(first.state))
    later = tracker.on_steps(state, [(step(2, layers=2), 13), (step(2), 14)], 0)  # across batches too
    assert list(later.rejected) == [13]
    done = tracker.on_completion(json.loads(json.dumps(later.state)), completion("t", 3), 0, 0)
    assert [(r["stage"], r["steps"]) for r in done.reports] == [("FINAL", 3)]


def test_a_second_different_completion_is_refused_and_the_same_one_again_is_a_duplicate() -> None:
    tracker = RiskTracker({"*": RiskPolicy()})
    state = tracker.on_steps(None, [(step(0), 0)], 0).state
    done = tracker.on_completion(state, completion("t", 1), 5, 0)
    assert [r["stage"] for r in done.reports] == ["FINAL"]
    again = tracker.on_completion(done.state, completion("t", 1), 9, 0)  # forwarded again by a repartition
    assert again.duplicates == 1 and not again.reports
    with pytest.raises(FoldError, match="a second, different completion for trace t"):
        tracker.on_completion(done.state, completion("t", 7), 10, 0)


def test_an_embedding_of_another_size_is_refused_before_it_joins_a_window() -> None:
    """Old code: the window took it, and the completion that closed the window failed (ValueError) every time."""
    policy = DriftPolicy(min_samples=20, mmd_permutations=2000, vocabulary_resamples=5)
    tracker = DriftTracker(policy, DriftWindows(reference_size=20, window_size=20))
    rng = np.random.default_rng(0)

    def c(i: int, dim: int = 16) -> dict[str, Any]:
        return completion(f"t{i}", 2, prompt_embedding=rng.normal(0, 1, dim).tolist(), output_token_ids=[i % 5, 1])

    state: Any = None
    for i in range(25):
        state = json.loads(json.dumps(tracker.on_completion(state, c(i), i, 0).state))
    with pytest.raises(FoldError, match="has 12 values, the drift windows of m@1 hold 16"):
        tracker.on_completion(state, c(99, dim=12), 25, 0)
    reports = []
    for i in range(25, 40):  # the window closes as if the refused completion had never come
        out = tracker.on_completion(state, c(i), i + 1, 0)
        state, reports = json.loads(json.dumps(out.state)), reports + out.reports
    assert [r["sample_count"] for r in reports] == [20]
    check_embedding_joins(None, c(0, dim=3))


def test_neuron_counts_of_another_shape_are_refused_by_the_window_they_join() -> None:
    """Old code: ValueError from the reshape (counts of another size) or FoldError (another shape) in the agent."""
    tracker = ProfileTracker(ProfilePolicy(window_s=60))
    state = tracker.on_neurons("m@1", None, neurons("a", 3, 4), 0).state
    with pytest.raises(FoldError, match="are 2 x 6, the open window of m@1 holds 3 x 4"):
        tracker.on_neurons("m@1", state, neurons("b", 2, 6), 0)
    later = neurons("c", 2, 6, window_start_us=61_000_000, window_end_us=61_000_000)
    assert tracker.on_neurons("m@1", state, later, 0).state["window"]["neuron_counts"][0] == [0, 1, 2, 3, 4, 5]
    check_neurons_joins(None, neurons("d", 9, 9))


def test_a_block_of_another_shape_is_refused_by_the_profile_window_it_joins() -> None:
    """A row whose measured head sums or layer counts have another shape than the window's is refused (FoldError,
    nothing merged); a row of another shape that measured nothing adds no sum and joins."""
    tracker = ProfileTracker(ProfilePolicy(window_s=60))

    def merge(state: Any, offset: int, block: list[dict[str, Any]]) -> Any:
        part = block_partial(from_steps(block), [], False, tracker.policy)
        (delta,) = partial_deltas("m@1", 0, [(offset, part)])
        return tracker.on_partials("m@1", state, decode_partials(delta), 0).state

    state = merge(None, 1, [step(0, "a")])
    with pytest.raises(FoldError, match="head signal"):
        merge(state, 2, [step(0, "b", layers=6)])
    assert merge(state, 2, [step(1, "c", layers=6, **UNMEASURED)])["window"]["steps"] == 2
