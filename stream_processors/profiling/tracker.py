"""Profiling per model version as a fold over stored state: tumbling event-time windows of step blocks' partials and
neuron counts, closed into ProfileSnapshot records (pure, no Faust)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from evostream.stream_processors.checks import check_columns_join, check_neurons_joins
from evostream.stream_processors.fold import Fold
from evostream.stream_processors.profiling.delta import Partials
from evostream.stream_processors.profiling.window import ProfilePolicy, ProfileWindow, window_of

STATE_LAYOUT = 2
"""Version of the stored state's layout: raise it when the layout changes, so a worker never reads old state.
2: the window counts its traces (``trace_count``) instead of listing them; the state keeps, per source partition,
the highest block offset merged (``offsets``)."""


def table_name(policy: ProfilePolicy) -> str:
    """The profiling table (and, prefixed with the app id, its changelog topic): it names the state's layout, the
    window length and the n-gram size, so a worker started with others never folds into windows cut differently."""
    return f"profile-models-v{STATE_LAYOUT}-{policy.window_s}s-{policy.ngram}gram"


class ProfileTracker:
    """Tumbling event-time windows per model version: merges the partials of step blocks (``on_partials``), closes
    windows into snapshots.

    A block older than the open window is merged into it (late data is counted, not dropped); a block of a later
    window closes the open one first. When traffic stops, ``on_tick`` closes a window once the clock is
    ``grace_s`` past its end. The state keeps, per source partition of the blocks, the highest block offset merged
    (``offsets``), across windows: a partition's rows come in offset order and a replay starts over at an earlier
    offset, so a replayed row is recognised exactly, whatever window it belonged to."""

    def __init__(self, policy: ProfilePolicy) -> None:
        self.policy = policy

    def on_partials(self, model: str, state: Mapping[str, Any] | None, parts: Partials, now_us: int) -> Fold:
        """Merge the rows of a ProfileDelta into the model's windows: new state, snapshots of windows closed
        (``reports``), and the steps of the rows skipped as already merged (``duplicates``). FoldError, and nothing
        merged, where a row's shape does not fit the window it joins."""
        st = dict(state or {"window_start": None, "window": None})
        offsets = dict(st.get("offsets", {}))
        key = str(parts.source_partition)
        fresh = parts.offsets > offsets.get(key, -1)
        duplicates = int(parts.steps[~fresh].sum())
        kept = np.flatnonzero(fresh)
        if len(kept):
            offsets[key] = int(parts.offsets[kept[-1]])
        st["offsets"] = offsets
        snapshots: list[dict[str, Any]] = []
        win = ProfileWindow(self.policy, st["window"]) if st["window"] is not None else None
        # in offset order, as one row after another: a row of a later window closes the open one, an earlier row
        # is late and joins the open one, so how the rows were cut into deltas changes nothing
        starts = parts.window_start_us[kept]
        i = 0
        while i < len(kept):
            win = self._window(model, st, win, int(starts[i]), now_us, snapshots)
            later = np.flatnonzero(starts[i:] > st["window_start"])
            j = i + int(later[0]) if len(later) else len(kept)
            _check_partial_joins(win, parts, kept[i:j])
            win.add_rows(parts, kept[i:j])
            i = j
        st["window"] = win.to_state() if win is not None else st["window"]
        return Fold(st, snapshots, duplicates=duplicates)

    def _window(
        self,
        model: str,
        st: dict[str, Any],
        win: ProfileWindow | None,
        start: int,
        now_us: int,
        snapshots: list[dict[str, Any]],
    ) -> ProfileWindow:
        """The window a row that starts at ``start`` merges into: the open one (a late row too), or a new one, the
        open one closed first into ``snapshots``."""
        if win is not None and start <= st["window_start"]:
            return win
        if win is not None and win.steps:
            snapshots.append(win.snapshot(model, now_us))
        st["window_start"] = start
        return ProfileWindow(self.policy)

    def on_neurons(self, model: str, state: Mapping[str, Any] | None, snap: Mapping[str, Any], now_us: int) -> Fold:
        """Fold a producer's NeuronCounts record into the window of its end time: new state, closed windows, and
        whether it was a duplicate (already folded: ``duplicates`` 1)."""
        st = dict(state or {"window_start": None, "window": None})
        at = int(snap["window_end_us"])
        start = window_of(at, self.policy.window_s)
        win = ProfileWindow(self.policy, st["window"]) if st["window"] is not None else None
        closed = []
        if win is None or start > st["window_start"]:
            if win is not None and win.steps:
                closed.append(win.snapshot(model, now_us))
            win, st["window_start"] = ProfileWindow(self.policy), start
        if snap["snapshot_id"] in win.snapshot_ids:
            return Fold(st, closed, duplicates=1)
        held = win.neuron_counts
        check_neurons_joins((len(held), len(held[0])) if held else None, snap)
        counts = np.frombuffer(snap["counts"], dtype="<i4").reshape(snap["num_layers"], snap["ffn_width"])
        win.add_neuron_counts(counts.tolist(), int(snap["steps"]), at)
        win.snapshot_ids.append(str(snap["snapshot_id"]))
        st["window"] = win.to_state()
        return Fold(st, closed)

    def on_tick(self, model: str, state: Mapping[str, Any], now_us: int) -> Fold:
        """Close the open window once the clock is ``grace_s`` past its end, with no step to close it."""
        st = dict(state)
        if st.get("window") is None:
            return Fold(st)
        end = st["window_start"] + (self.policy.window_s + self.policy.grace_s) * 1_000_000
        if now_us < end:
            return Fold(st)
        win = ProfileWindow(self.policy, st["window"])
        st["window"] = None
        if not win.steps:
            return Fold(st)
        return Fold(st, [win.snapshot(model, now_us)])


def _check_partial_joins(win: ProfileWindow, parts: Partials, rows: np.ndarray) -> None:
    """FoldError where the measured head sums or layer counts of ``rows`` do not have the shape of ``win``'s sums
    (blocks of another shape under the same model version): adding them would fail."""
    check_columns_join(
        tuple(win.head_sum.shape) if win.head_sum is not None and (parts.head_steps[rows] > 0).any() else None,
        len(win.layer_changed) if win.layer_changed is not None and (parts.layer_steps[rows] > 0).any() else None,
        (parts.num_layers, parts.num_heads),
        parts.num_layers,
    )
