"""Profiling aggregates on hand-built steps whose answers are known."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from evostream.core.errors import FoldError
from evostream.schemas.codec import RecordCodec
from evostream.schemas.tensors import pack_f32
from evostream.stream_processors.fold import Fold
from evostream.stream_processors.profiling.window import ProfilePolicy, ProfileWindow, window_of


def parts(out: Fold) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """The new state, the snapshots of windows it closed, and how many inputs were duplicates."""
    return out.state, out.reports, out.duplicates


def step(
    trace: str,
    i: int,
    token: int,
    heads: np.ndarray,
    l2: list[float],
    signal: str = "OUTPUT_NORM",
    at_us: int = 1_000_000,
) -> dict[str, Any]:
    return {
        "trace_id": trace,
        "step": i,
        "token_id": token,
        "num_layers": heads.shape[0],
        "num_heads": heads.shape[1],
        "head_attention_entropy": pack_f32(heads),
        "attention_signal": signal,
        "layer_hidden_l2": pack_f32(l2),
        "emitted_at_us": at_us + i,
    }


def test_head_utilization_is_the_share_of_the_layers_strongest_head() -> None:
    w = ProfileWindow(ProfilePolicy(window_s=60))
    heads = np.array([[4.0, 2.0, 0.1], [1.0, 1.0, 1.0]])
    for i in range(3):
        w.add_step(step("a", i, 5, heads * (1 + i), [1.0, 2.0]))
    np.testing.assert_allclose(w.utilization(), [[1.0, 0.5, 0.025], [1.0, 1.0, 1.0]], rtol=1e-6)
    assert w.dormant_heads() == [(0, 2)]


def test_entropy_signal_turns_diffuse_heads_into_low_utilization() -> None:
    w = ProfileWindow(ProfilePolicy(window_s=60))
    w.add_step(step("a", 0, 5, np.array([[3.0, 1.5, 0.0]]), [1.0], signal="ENTROPY"))
    np.testing.assert_allclose(w.utilization(), [[0.0, 0.5, 1.0]])


def test_layer_frequency_counts_material_changes_against_the_layer_below() -> None:
    w = ProfileWindow(ProfilePolicy(window_s=60, layer_change=0.01))
    h = np.ones((3, 1))
    w.add_step(step("a", 0, 1, h, [10.0, 10.05, 20.0]))  # layer 1 changes 0.5%: not material
    w.add_step(step("a", 1, 2, h, [10.0, 12.0, 12.0]))
    snap = w.snapshot("m@1", 0)
    assert snap["layer_frequency"] == [1.0, 0.5, 0.5]


def test_token_paths_are_counted_per_trace_without_crossing_traces() -> None:
    w = ProfileWindow(ProfilePolicy(window_s=60, ngram=2, top_paths=2))
    h = np.ones((1, 1))
    for trace in ("a", "b"):
        for i, tok in enumerate([7, 8, 7, 8]):
            w.add_step(step(trace, i, tok, h, [1.0]))
    # per trace: (7 8) twice, (8 7) once; nothing spans a -> b
    assert w.snapshot("m@1", 0)["top_token_paths"] == [
        {"token_ids": [7, 8], "count": 4},
        {"token_ids": [8, 7], "count": 2},
    ]


def test_dormant_neurons_from_count_snapshots() -> None:
    w = ProfileWindow(ProfilePolicy(window_s=60, dormant_neuron_max=0.0))
    w.add_neuron_counts([[0, 3, 5, 0], [1, 1, 1, 1]], steps=10, at_us=5)
    w.add_neuron_counts([[0, 1, 0, 0], [0, 0, 0, 2]], steps=10, at_us=6)
    assert w.neuron_counts == [[0, 4, 5, 0], [1, 1, 1, 3]]
    assert w.dormant_neuron_fraction() == [0.5, 0.0]
    with pytest.raises(FoldError, match="FFN shape"):
        w.add_neuron_counts([[1, 2]], steps=1, at_us=7)


def test_snapshot_encodes_and_state_round_trips() -> None:
    w = ProfileWindow(ProfilePolicy(window_s=60))
    for i in range(4):
        w.add_step(step("a", i, i % 2, np.array([[1.0, 0.5]]), [1.0]))
    w.add_neuron_counts([[0, 2]], steps=4, at_us=9)
    resumed = ProfileWindow(ProfilePolicy(window_s=60), json.loads(json.dumps(w.to_state())))
    assert resumed.snapshot("m@1", 42) == w.snapshot("m@1", 42)
    codec = RecordCodec("ProfileSnapshot")
    back = codec.decode(codec.encode(w.snapshot("m@1", 42)))
    assert back["step_count"] == 4 and back["trace_count"] == 1
    assert back["head_utilization"] == [[1.0, 0.5]]


def test_tumbling_windows_align_to_their_size() -> None:
    assert window_of(125_000_000, 60) == 120_000_000
    assert window_of(119_999_999, 60) == 60_000_000


def test_tracker_closes_windows_by_event_time_and_on_idle_ticks() -> None:
    from evostream.stream_processors.profiling.tracker import ProfileTracker

    tracker = ProfileTracker(ProfilePolicy(window_s=60, grace_s=5))
    h = np.array([[1.0, 0.5]])
    first = [step("a", i, i, h, [1.0], at_us=10_000_000) for i in range(3)]
    state, snaps, dup = parts(tracker.on_steps("m@1", None, first, 0))
    assert (snaps, dup) == ([], 0)
    state, snaps, dup = parts(tracker.on_steps("m@1", json.loads(json.dumps(state)), first[:2], 0))
    assert (snaps, dup) == ([], 2)  # replayed steps are not counted twice
    later = [step("b", 0, 9, h, [1.0], at_us=70_000_000)]
    state, snaps, _ = parts(tracker.on_steps("m@1", state, later, 1))
    assert [s["step_count"] for s in snaps] == [3]
    state, snaps, _ = parts(tracker.on_tick("m@1", state, 120_000_000 + 4_999_999))
    assert snaps == []
    state, snaps, _ = parts(tracker.on_tick("m@1", state, 125_000_000))
    assert [s["step_count"] for s in snaps] == [1] and state["window"] is None


def test_steps_of_a_closed_window_replayed_after_a_restart_are_not_counted_again() -> None:
    from evostream.stream_processors.profiling.tracker import ProfileTracker

    tracker = ProfileTracker(ProfilePolicy(window_s=60, grace_s=5))
    h = np.array([[1.0, 0.5]])
    steps = [step(t, i, i, h, [1.0], at_us=10_000_000) for t in ("a", "b") for i in range(3)]
    state, _, _ = parts(tracker.on_steps("m@1", None, steps, 0))
    state, snaps, _ = parts(tracker.on_tick("m@1", state, 75_000_000))  # the window closes while idle
    assert [s["step_count"] for s in snaps] == [6]
    more = [step("a", 3, 3, h, [1.0], at_us=10_000_000)]  # a late step of trace a: counted, in a new window
    state, snaps, dup = parts(tracker.on_steps("m@1", json.loads(json.dumps(state)), more, 1))
    assert (snaps, dup) == ([], 0)
    # the restart replays everything from before the last commit: every step already in a snapshot is skipped
    state, snaps, dup = parts(tracker.on_steps("m@1", json.loads(json.dumps(state)), [*steps, *more], 2))
    assert (snaps, dup) == ([], 7)
    state, snaps, _ = parts(tracker.on_tick("m@1", state, 150_000_000))
    assert [s["step_count"] for s in snaps] == [1]


def test_neuron_count_snapshots_fold_into_their_window_once() -> None:
    from evostream.stream_processors.profiling.tracker import ProfileTracker

    tracker = ProfileTracker(ProfilePolicy(window_s=60))
    h = np.array([[1.0, 0.5]])
    state, _, _ = parts(tracker.on_steps("m@1", None, [step("a", 0, 1, h, [1.0], at_us=10_000_000)], 0))
    snap = {
        "snapshot_id": "s1",
        "model_version": "m@1",
        "steps": 4,
        "num_layers": 2,
        "ffn_width": 3,
        "counts": np.array([[0, 4, 1], [0, 0, 2]], dtype="<i4").tobytes(),
        "window_start_us": 10_000_000,
        "window_end_us": 10_500_000,
    }
    state, closed, dup = parts(tracker.on_neurons("m@1", state, snap, 0))
    assert (closed, dup) == ([], 0)
    state, _, dup = parts(tracker.on_neurons("m@1", json.loads(json.dumps(state)), snap, 0))
    assert dup
    window = ProfileWindow(ProfilePolicy(window_s=60), state["window"])
    snapshot = window.snapshot("m@1", 0)
    assert snapshot["ffn_neuron_activation_counts"] == [[0, 4, 1], [0, 0, 2]]
    assert snapshot["dormant_neuron_fraction"] == pytest.approx([1 / 3, 2 / 3])
