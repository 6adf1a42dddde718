"""Profiling aggregates on hand-built steps whose answers are known, merged as the processors merge them: each
block's partial (``block_partial``) sent in ProfileDeltas (``partial_deltas``) through a real Avro round trip and
decoded (``decode_partials``)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from evostream.core.errors import FoldError
from evostream.schemas.blocks import from_steps
from evostream.schemas.codec import RecordCodec
from evostream.schemas.samples import generation_step
from evostream.schemas.tensors import pack_f32
from evostream.stream_processors.fold import Fold
from evostream.stream_processors.profiling.delta import Partials, decode_partials, partial_deltas
from evostream.stream_processors.profiling.partial import block_partial
from evostream.stream_processors.profiling.tracker import ProfileTracker
from evostream.stream_processors.profiling.window import ProfilePolicy, ProfileWindow, window_of

CODEC = RecordCodec("ProfileDelta")


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
    """A GenerationStep of ``trace`` whose profiled fields are these (the others a sample's)."""
    rec: dict[str, Any] = dict(generation_step(i, trace, layers=heads.shape[0], heads=heads.shape[1]))
    rec.update(
        model_version="m@1",
        token_id=token,
        head_attention_entropy=pack_f32(heads),
        attention_signal=signal,
        layer_hidden_l2=pack_f32(l2),
        emitted_at_us=at_us + i,
    )
    return rec


class Reader:
    """The risk agent's side, for tests: per block (one trace's steps, in order) its partial, with the trace's tokens
    before the block and whether the trace is already counted in the block's window (kept per trace, as the risk
    state keeps them), at the next offset of one source partition."""

    def __init__(self, policy: ProfilePolicy, partition: int = 0) -> None:
        self.policy, self.partition, self.offset = policy, partition, 0
        self.tokens: dict[str, list[int]] = {}
        self.window: dict[str, int] = {}

    def deltas(self, *blocks: list[dict[str, Any]]) -> list[Partials]:
        """The decoded ProfileDeltas that carry ``blocks``."""
        rows = []
        for block in blocks:
            cols = from_steps(block)
            window = window_of(int(cols.emitted_at_us[0]), self.policy.window_s)
            prior, trace = self.tokens.get(cols.trace_id, []), cols.trace_id
            rows.append((self.offset, block_partial(cols, prior, self.window.get(trace) == window, self.policy)))
            self.tokens[trace], self.window[trace] = [*prior, *cols.token_id.tolist()], window
            self.offset += 1
        return [decode_partials(CODEC.decode(CODEC.encode(d))) for d in partial_deltas("m@1", self.partition, rows)]


def window(policy: ProfilePolicy, *blocks: list[dict[str, Any]]) -> ProfileWindow:
    """A window that merged ``blocks``."""
    w = ProfileWindow(policy)
    for p in Reader(policy).deltas(*blocks):
        w.add_rows(p, np.arange(len(p)))
    return w


def merge(tracker: ProfileTracker, state: Any, deltas: list[Partials], now_us: int) -> Fold:
    """``on_partials`` of each delta in turn, the state through JSON each time as through the changelog."""
    reports, duplicates = [], 0
    for d in deltas:
        out = tracker.on_partials("m@1", json.loads(json.dumps(state)), d, now_us)
        state, reports, duplicates = out.state, reports + out.reports, duplicates + out.duplicates
    return Fold(state, reports, duplicates=duplicates)


def test_head_utilization_is_the_share_of_the_layers_strongest_head() -> None:
    heads = np.array([[4.0, 2.0, 0.1], [1.0, 1.0, 1.0]])
    w = window(ProfilePolicy(window_s=60), [step("a", i, 5, heads * (1 + i), [1.0, 2.0]) for i in range(3)])
    np.testing.assert_allclose(w.utilization(), [[1.0, 0.5, 0.025], [1.0, 1.0, 1.0]], rtol=1e-6)
    assert w.dormant_heads() == [(0, 2)]


def test_entropy_signal_turns_diffuse_heads_into_low_utilization() -> None:
    w = window(ProfilePolicy(window_s=60), [step("a", 0, 5, np.array([[3.0, 1.5, 0.0]]), [1.0], signal="ENTROPY")])
    np.testing.assert_allclose(w.utilization(), [[0.0, 0.5, 1.0]])


def test_layer_frequency_counts_material_changes_against_the_layer_below() -> None:
    h = np.ones((3, 1))
    first = step("a", 0, 1, h, [10.0, 10.05, 20.0])  # layer 1 changes 0.5%: not material
    w = window(ProfilePolicy(window_s=60, layer_change=0.01), [first, step("a", 1, 2, h, [10.0, 12.0, 12.0])])
    assert w.snapshot("m@1", 0)["layer_frequency"] == [1.0, 0.5, 0.5]


def test_token_paths_are_counted_per_trace_without_crossing_traces() -> None:
    h = np.ones((1, 1))
    a, b = ([step(trace, i, tok, h, [1.0]) for i, tok in enumerate([7, 8, 7, 8])] for trace in ("a", "b"))
    # each trace in two blocks, interleaved: a block's first n-gram starts in its own trace's block before
    w = window(ProfilePolicy(window_s=60, ngram=2, top_paths=2), a[:1], b[:3], a[1:], b[3:])
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
    steps = [step("a", i, i % 2, np.array([[1.0, 0.5]]), [1.0]) for i in range(4)]
    w = window(ProfilePolicy(window_s=60), steps[:3], steps[3:])
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
    tracker = ProfileTracker(ProfilePolicy(window_s=60, grace_s=5))
    reader = Reader(tracker.policy)
    h = np.array([[1.0, 0.5]])
    first = [step("a", i, i, h, [1.0], at_us=10_000_000) for i in range(3)]
    deltas = [*reader.deltas(first[:2]), *reader.deltas(first[2:])]  # two batches: a delta each
    state, snaps, dup = parts(merge(tracker, None, deltas, 0))
    assert (snaps, dup) == ([], 0)
    state, snaps, dup = parts(merge(tracker, state, deltas[:1], 0))  # the first batch again
    assert (snaps, dup) == ([], 2)  # replayed steps are not counted twice
    later = reader.deltas([step("b", 0, 9, h, [1.0], at_us=70_000_000)])
    state, snaps, _ = parts(merge(tracker, state, later, 1))
    assert [s["step_count"] for s in snaps] == [3]
    state, snaps, _ = parts(tracker.on_tick("m@1", state, 120_000_000 + 4_999_999))
    assert snaps == []
    state, snaps, _ = parts(tracker.on_tick("m@1", state, 125_000_000))
    assert [s["step_count"] for s in snaps] == [1] and state["window"] is None


def test_steps_of_a_closed_window_replayed_after_a_restart_are_not_counted_again() -> None:
    tracker = ProfileTracker(ProfilePolicy(window_s=60, grace_s=5))
    h = np.array([[1.0, 0.5]])
    readers = {t: Reader(tracker.policy, partition=p) for p, t in enumerate("ab")}  # the traces' partitions
    steps = {t: [step(t, i, i, h, [1.0], at_us=10_000_000) for i in range(3)] for t in "ab"}
    deltas = [*readers["a"].deltas(steps["a"][:2], steps["a"][2:]), *readers["b"].deltas(steps["b"])]
    state, _, _ = parts(merge(tracker, None, deltas, 0))
    state, snaps, _ = parts(tracker.on_tick("m@1", state, 75_000_000))  # the window closes while idle
    assert [s["step_count"] for s in snaps] == [6]
    more = readers["a"].deltas([step("a", 3, 3, h, [1.0], at_us=10_000_000)])  # late: counted, in a new window
    state, snaps, dup = parts(merge(tracker, state, more, 1))
    assert (snaps, dup) == ([], 0)
    # the restart replays everything from before the last commit: every block already merged is skipped
    state, snaps, dup = parts(merge(tracker, state, [*deltas, *more], 2))
    assert (snaps, dup) == ([], 7)
    state, snaps, _ = parts(tracker.on_tick("m@1", state, 150_000_000))
    assert [s["step_count"] for s in snaps] == [1]


def test_neuron_count_snapshots_fold_into_their_window_once() -> None:
    tracker = ProfileTracker(ProfilePolicy(window_s=60))
    h = np.array([[1.0, 0.5]])
    deltas = Reader(tracker.policy).deltas([step("a", 0, 1, h, [1.0], at_us=10_000_000)])
    state, _, _ = parts(merge(tracker, None, deltas, 0))
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
