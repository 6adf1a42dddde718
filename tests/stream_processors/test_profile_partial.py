"""Profiling from the partials of step blocks: a window of partials publishes what the per-step fold (kept here as
``reference_fold``, the reference) published for the same steps (but for n-grams that now cross a window's start),
replays count nothing twice however they are cut, and a ProfileDelta whose columns disagree is refused. Every delta
goes through a real Avro round trip."""

from __future__ import annotations

import json
import random
from collections import Counter
from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from evostream.core.errors import DecodeError, EncodeError, FoldError
from evostream.schemas.blocks import from_steps
from evostream.schemas.codec import RecordCodec
from evostream.schemas.fingerprints import SchemaIndex
from evostream.schemas.samples import generation_step
from evostream.schemas.tensors import pack_f32, step_heads, step_layers
from evostream.stream_processors.fold import Fold
from evostream.stream_processors.profiling.delta import (
    MAX_DELTA_BYTES,
    Partials,
    decode_partials,
    partial_deltas,
)
from evostream.stream_processors.profiling.partial import BlockPartial, block_partial
from evostream.stream_processors.profiling.tracker import ProfileTracker, table_name
from evostream.stream_processors.profiling.window import ProfilePolicy, ProfileWindow, window_of

CODEC = RecordCodec("ProfileDelta")
S = 1_000_000
POLICY = ProfilePolicy(window_s=1, ngram=3, top_paths=100_000, max_paths=100_000)
"""Windows of 1 s, every n-gram kept and published: the published paths are the whole count."""


def traffic(seed: int, traces: int = 14) -> list[dict[str, Any]]:
    """Steps of several traces over about three 1 s windows, one attention signal (a model has one), some steps
    without head or layer statistics, some with NaN."""
    rng = random.Random(seed)
    out = []
    for t in range(traces):
        t0 = rng.randrange(0, 2 * S)
        at = t0
        for i in range(rng.randrange(3, 40)):
            s = generation_step(i, f"trace-{t}", layers=3, heads=2)
            at += rng.randrange(20_000, 90_000)
            s["emitted_at_us"] = at
            s["token_id"] = rng.choice([5, 6, 7])  # few tokens: n-grams repeat
            roll = rng.random()
            if roll < 0.1:
                s["head_attention_entropy"], s["attention_signal"] = b"", "NONE"
            elif roll < 0.15:
                s["layer_hidden_l2"] = pack_f32([1.0, float("nan"), 2.0])
            elif roll < 0.2:
                s["head_attention_entropy"] = pack_f32([[1.0, float("inf")], [1.0, 1.0], [2.0, 0.5]])
            out.append(s)
    return out


Row = tuple[int, int, BlockPartial]
"""(source partition, block offset, partial)."""


def blocks_of(steps: list[dict[str, Any]], rng: random.Random, cut_at_windows: bool = True) -> list[list[Any]]:
    """Each trace's steps cut into blocks as the producer would (a block is homogeneous; the block window ends it
    at random), and at each window's start where ``cut_at_windows``; blocks in the order they are written, of
    their last step (a block that starts in one window may follow one that starts in the next)."""
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for s in steps:
        by_trace.setdefault(s["trace_id"], []).append(s)
    blocks = []
    for run in by_trace.values():
        block = [run[0]]
        for prev, s in pairwise(run):
            crosses = window_of(s["emitted_at_us"], POLICY.window_s) != window_of(
                prev["emitted_at_us"], POLICY.window_s
            )
            if (
                (crosses and cut_at_windows)
                or rng.random() < 0.25
                or s["attention_signal"] != prev["attention_signal"]
                or bool(s["head_attention_entropy"]) != bool(prev["head_attention_entropy"])
            ):
                blocks.append(block)
                block = []
            block.append(s)
        blocks.append(block)
    return sorted(blocks, key=lambda b: (b[-1]["emitted_at_us"], b[0]["trace_id"]))


def risk_agent(blocks: list[list[Any]], partitions: int = 3) -> list[Row]:
    """What the risk agent sends for ``blocks`` read in that order: per block, its partial with the trace's tokens
    so far and whether the trace is counted in the block's window (kept per trace, as its risk state would), on the
    trace's partition at the partition's next offset."""
    tokens: dict[str, list[int]] = {}
    counted_in: dict[str, int] = {}
    next_offset = [100] * partitions
    rows = []
    for block in blocks:
        trace = block[0]["trace_id"]
        cols = from_steps(block)
        window = window_of(int(cols.emitted_at_us[0]), POLICY.window_s)
        part = block_partial(cols, tokens.get(trace, []), counted_in.get(trace) == window, POLICY)
        tokens[trace], counted_in[trace] = [*tokens.get(trace, []), *cols.token_id.tolist()][-64:], window
        p = int(trace.split("-")[1]) % partitions
        rows.append((p, next_offset[p], part))
        next_offset[p] += 1 + len(rows) % 3  # other records of the partition sit between a model's blocks
    return rows


def deliveries(rows: list[Row], rng: random.Random, split: float) -> list[dict[str, Any]]:
    """The deltas of ``rows`` in their order: each run of one partition's rows cut at random (as batches would),
    every delta encoded and decoded as on the internal topic."""
    out, run = [], [rows[0]]
    for row in rows[1:]:
        if row[0] != run[-1][0] or rng.random() < split:
            out += partial_deltas("m", run[0][0], [(o, p) for _, o, p in run])
            run = []
        run.append(row)
    out += partial_deltas("m", run[0][0], [(o, p) for _, o, p in run])
    return [CODEC.decode(CODEC.encode(d)) for d in out]


def merge(tracker: ProfileTracker, state: Any, deltas: list[dict[str, Any]]) -> tuple[Any, list[Any], int]:
    """Fold ``deltas`` one by one, the state through JSON each time as through the changelog."""
    snaps, dups = [], 0
    for d in deltas:
        out = tracker.on_partials("m", state, decode_partials(d), now_us=99)
        state, dups = json.loads(json.dumps(out.state)), dups + out.duplicates
        snaps += out.reports
    return state, snaps, dups


def reference_fold(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """THE REFERENCE: the per-step fold profiling ran before step blocks (``ProfileTracker.on_steps`` with
    ``ProfileWindow.add_step``, since removed), kept here only to check the partials against, for one delivery of
    each step (no replays). Steps in event-time order; a step of a later window closes the open one, an earlier
    (late) step joins it. Per window: its steps, its distinct traces, its time span, the head signal summed over the
    steps whose heads are all finite (the signal of the last of them), per layer the steps on which it changed the
    hidden-state norm materially against the layer below over the steps whose norms are all finite, and each
    trace's n-grams counted from its tokens in that window only. The snapshots of every window, the last one too."""
    windows: list[dict[str, Any]] = []
    for s in sorted(steps, key=lambda s: int(s["emitted_at_us"])):
        at = int(s["emitted_at_us"])
        if not windows or window_of(at, POLICY.window_s) > windows[-1]["window"]:
            windows.append({"window": window_of(at, POLICY.window_s), "start_us": at, "end_us": at, "steps": 0})
            traces: set[str] = set()
            tails: dict[str, list[int]] = {}
            heads_sum: Any = None
            changed_sum: Any = None
            counted: Counter[str] = Counter()
        w = windows[-1]
        w["start_us"], w["end_us"], w["steps"] = min(w["start_us"], at), max(w["end_us"], at), w["steps"] + 1
        traces.add(s["trace_id"])
        w["trace_count"] = len(traces)
        heads = step_heads(s).astype(np.float64)
        if heads.size and np.isfinite(heads).all():
            heads_sum = heads if heads_sum is None else heads_sum + heads
            w.update(signal=s["attention_signal"], head_sum=heads_sum.tolist(), head_steps=w.get("head_steps", 0) + 1)
        l2 = step_layers(s, "layer_hidden_l2").astype(np.float64)
        if len(l2) and np.isfinite(l2).all():
            changed = np.ones(len(l2), dtype=np.int64)
            changed[1:] = np.abs(l2[1:] - l2[:-1]) / np.maximum(l2[:-1], 1e-12) > POLICY.layer_change
            changed_sum = changed if changed_sum is None else changed_sum + changed
            w.update(layer_changed=changed_sum.tolist(), layer_steps=w.get("layer_steps", 0) + 1)
        tail = tails[s["trace_id"]] = [*tails.get(s["trace_id"], []), int(s["token_id"])][-POLICY.ngram :]
        if len(tail) == POLICY.ngram:
            counted[" ".join(map(str, tail))] += 1
        w["paths"] = dict(counted)
    return [ProfileWindow(POLICY, w).snapshot("m", 99) for w in windows]


def published(state: dict[str, Any], snaps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The closed windows' snapshots and the open window's, as it would close."""
    return [*snaps, ProfileWindow(POLICY, state["window"]).snapshot("m", 99)]


def paths(snap: dict[str, Any]) -> Counter[str]:
    return Counter({" ".join(map(str, p["token_ids"])): p["count"] for p in snap["top_token_paths"]})


def cross_window_ngrams(steps: list[dict[str, Any]], n: int) -> dict[int, Counter[str]]:
    """Per window, the n-grams that end there but start in an earlier window of their trace: the per-step fold
    started each trace's n-grams over in every window, partials carry the trace's tokens across."""
    out: dict[int, Counter[str]] = {}
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for s in steps:
        by_trace.setdefault(s["trace_id"], []).append(s)
    for run in by_trace.values():
        for i in range(n - 1, len(run)):
            first, last = (window_of(run[j]["emitted_at_us"], POLICY.window_s) for j in (i - n + 1, i))
            if first != last:
                out.setdefault(last, Counter())[" ".join(str(run[j]["token_id"]) for j in range(i - n + 1, i + 1))] += 1
    return out


def close(a: Any, b: Any) -> None:
    """Equal, floats to 1e-9 (numpy sums in another order than one step after another)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            close(a[k], b[k])
    elif isinstance(a, list) and a and isinstance(a[0], (list, float)):
        np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-9)
    else:
        assert a == b


@pytest.mark.parametrize("seed", range(6))
def test_partials_publish_what_the_per_step_fold_published_but_for_cross_window_ngrams(seed: int) -> None:
    rng = random.Random(seed)
    steps = traffic(seed)
    want = reference_fold(steps)
    state, snaps, dups = merge(ProfileTracker(POLICY), None, deliveries(risk_agent(blocks_of(steps, rng)), rng, 0.3))
    got = published(state, snaps)
    assert dups == 0 and len(got) == len(want) >= 3
    crossing = cross_window_ngrams(steps, POLICY.ngram)
    assert sum(crossing.values(), Counter()), "the traffic has n-grams across a window's start"
    for g, w in zip(got, want, strict=True):
        extra = crossing.get(g["window_start_us"] - g["window_start_us"] % S, Counter())
        assert paths(g) == paths(w) + extra  # the only difference: n-grams that start in an earlier window
        close({**g, "top_token_paths": []}, {**w, "top_token_paths": []})


def test_a_block_counts_wholly_in_the_window_of_its_first_step() -> None:
    steps = [generation_step(i, "t", layers=2, heads=2) for i in range(4)]
    for i, s in enumerate(steps):
        s["emitted_at_us"] = 10 * S - 2 + i  # two steps before 10 s, two after
    part = block_partial(from_steps(steps), [], counted=False, policy=ProfilePolicy(window_s=1))
    assert (part.window_start_us, part.first_us, part.last_us, part.steps) == (9 * S, 10 * S - 2, 10 * S + 1, 4)
    state, snaps, _ = merge(ProfileTracker(POLICY), None, deliveries([(0, 7, part)], random.Random(0), 0))
    assert snaps == [] and state["window_start"] == 9 * S and state["window"]["steps"] == 4


def test_ngrams_start_with_the_traces_tokens_before_the_block() -> None:
    steps = [generation_step(i, "t", layers=1, heads=1) for i in range(3)]
    for s, tok in zip(steps, [7, 8, 9], strict=True):
        s["token_id"] = tok
    cols = from_steps(steps)
    policy = ProfilePolicy(window_s=60, ngram=3)
    assert block_partial(cols, [1, 2, 5, 6], False, policy).paths == Counter({"5 6 7": 1, "6 7 8": 1, "7 8 9": 1})
    assert block_partial(cols, [], False, policy).paths == Counter({"7 8 9": 1})
    assert block_partial(cols, [], False, ProfilePolicy(window_s=60, ngram=1)).paths == Counter(
        {"7": 1, "8": 1, "9": 1}
    )


@pytest.mark.parametrize("seed", range(6))
def test_replays_count_nothing_twice_however_the_batches_are_cut(seed: int) -> None:
    rng = random.Random(seed)
    rows = risk_agent(blocks_of(traffic(seed), rng, cut_at_windows=False))
    tracker = ProfileTracker(POLICY)
    want_state, want_snaps, none = merge(tracker, None, deliveries(rows, random.Random(seed), split=0.3))
    assert none == 0
    # the profiling worker loses its last state writes (it restarts from the changelog after row `back`), and the
    # risk agent's replay, from row `start` on, is cut into other batches; on the way a delta also comes twice
    first = deliveries(rows, rng, split=0.5)
    upto = rng.randrange(len(first) // 2, len(first) - 8)
    saved, before, none = merge(tracker, None, first[:upto])
    assert none == 0
    state, lost = saved, []
    for d in first[upto : upto + 8]:
        state, more, twice = merge(tracker, state, [d, d])
        assert twice == sum(d["block_steps"])
        lost += more
    back = sum(len(d["offsets"]) for d in first[:upto])
    start = rng.randrange(0, back + 1)
    state, after, replayed = merge(tracker, saved, deliveries(rows[start:], rng, split=0.1))
    assert replayed == sum(p.steps for _, _, p in rows[start:back])  # exactly the rows merged before
    # published: what one delivery of each block published; a snapshot of the lost writes is published again
    # (at least once, as before), with nothing in it counted twice
    assert len(before) + len(after) == len(want_snaps)
    for g, w in zip(
        [*before, *after, *published(state, [])[-1:]], [*want_snaps, *published(want_state, [])[-1:]], strict=True
    ):
        close(g, w)
    for snap in lost:
        close(snap, next(s for s in after if s["window_start_us"] == snap["window_start_us"]))


def test_a_delta_merged_twice_is_skipped_by_its_offsets() -> None:
    rng = random.Random(3)
    tracker = ProfileTracker(POLICY)
    (delta,) = deliveries(risk_agent(blocks_of(traffic(3, traces=2)[:5], rng))[:1], rng, split=0)
    state, _, _ = merge(tracker, None, [delta])
    again = tracker.on_partials("m", state, decode_partials(delta), now_us=99)
    assert again.duplicates == sum(delta["block_steps"]) > 0
    assert again.state["window"] == state["window"] and again.reports == []


def partial(layers: int, heads: int, steps: int = 2, at: int = S) -> BlockPartial:
    return BlockPartial(
        window_start_us=window_of(at, 1),
        steps=steps,
        first_us=at,
        last_us=at + steps,
        new_trace=1,
        signal="ENTROPY",
        head_sum=np.ones((layers, heads)),
        head_steps=steps,
        layer_changed=np.ones(layers, dtype=np.int64),
        layer_steps=steps,
        paths=Counter({"1 2 3": steps}),
    )


def test_deltas_keep_offset_order_split_at_shape_changes_and_under_their_byte_budget() -> None:
    rows = [(10, partial(2, 2)), (11, partial(2, 2)), (12, partial(3, 1)), (13, partial(2, 2))]
    made = partial_deltas("m", 4, list(reversed(rows)))
    assert [(d["num_layers"], d["num_heads"], d["offsets"]) for d in made] == [
        (2, 2, [10, 11]),
        (3, 1, [12]),
        (2, 2, [13]),
    ]
    big = [(i, partial(64, 32)) for i in range(40)]
    made = partial_deltas("m", 0, big)
    assert len(made) > 1 and [o for d in made for o in d["offsets"]] == list(range(40))
    assert all(len(d["head_sum"]) + len(d["layer_changed"]) <= MAX_DELTA_BYTES for d in made)
    with pytest.raises(EncodeError, match="offset 10"):
        partial_deltas("m", 0, [(10, partial(2, 2)), (10, partial(2, 2))])


def test_rows_merge_in_offset_order_so_the_cut_into_deltas_changes_nothing() -> None:
    """A row of a later window closes the open one; the late row after it joins the new window, in one delta as in
    two (sorting a delta's rows by window would have closed a window of its own for the late row)."""
    tracker = ProfileTracker(POLICY)
    rows = [(1, partial(2, 2, at=S)), (2, partial(2, 2, at=2 * S)), (3, partial(2, 2, steps=3, at=S + 5))]
    deltas = [CODEC.decode(CODEC.encode(d)) for d in partial_deltas("m", 0, rows[:1])]
    one = merge(tracker, None, [*deltas, *partial_deltas("m", 0, rows[1:])])
    two = merge(tracker, None, [*deltas, *partial_deltas("m", 0, rows[1:2]), *partial_deltas("m", 0, rows[2:])])
    assert one == two
    state, snaps, _ = one
    assert [s["step_count"] for s in snaps] == [2] and state["window"]["steps"] == 5


def test_a_row_of_another_shape_is_refused_by_the_window_it_joins() -> None:
    tracker = ProfileTracker(POLICY)
    (first,) = partial_deltas("m", 0, [(1, partial(2, 2))])
    state = tracker.on_partials("m", None, decode_partials(first), 0).state
    (odd,) = partial_deltas("m", 1, [(1, partial(3, 2))])
    with pytest.raises(FoldError, match="head signal"):
        tracker.on_partials("m", state, decode_partials(odd), 0)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d.update(head_sum=d["head_sum"][:-8]), "head_sum"),
        (lambda d: d.update(layer_changed=d["layer_changed"] + b"\x00" * 8), "layer_changed"),
        (lambda d: d.update(block_steps=d["block_steps"][:1]), "block_steps: 1 values for 2 rows"),
        (lambda d: d.update(signals=[]), "signals"),
        (lambda d: d.update(offsets=[5, 5]), "not increasing"),
        (lambda d: d.update(offsets=[6, 5]), "not increasing"),
        (lambda d: d.update(path_rows=[2, 1]), "no row"),
        (lambda d: d.update(path_counts=[1]), "differ in length"),
        (lambda d: d.update(path_counts=[0, 1]), "less than once"),
        (lambda d: d.update(head_steps=[3, 0]), "more measured steps"),
        (lambda d: d.update(block_steps=[0, 2]), "no steps"),
        (lambda d: d.update(first_us=[S + 10, S]), "ends before it starts"),
        (lambda d: d.update(num_layers=-1), "-1 layers"),
    ],
)
def test_a_delta_whose_columns_disagree_is_refused(change: Any, words: str) -> None:
    (delta,) = partial_deltas("m", 0, [(5, partial(2, 2)), (6, partial(2, 2))])
    assert len(decode_partials(CODEC.decode(CODEC.encode(delta)))) == 2
    change(delta)
    with pytest.raises(DecodeError, match=words):
        decode_partials(CODEC.decode(CODEC.encode(delta)))


def test_a_v1_delta_reads_as_no_rows_and_the_state_layout_is_new() -> None:
    """v2 dropped v1's per-step columns: a v1 record left on the internal topic reads as a record of no rows, which
    merges nothing."""
    v1 = RecordCodec("ProfileDelta", SchemaIndex(CODEC.schemas.versions("ProfileDelta")[:1]))
    assert v1.writer.version == 1
    step = generation_step(0, "t", layers=2, heads=2)
    record = {
        "model_version": "m",
        "num_layers": 2,
        "num_heads": 2,
        "trace_ids": ["t"],
        "steps": [0],
        "emitted_at_us": [step["emitted_at_us"]],
        "token_ids": [step["token_id"]],
        "attention_signals": [step["attention_signal"]],
        "head_signal": step["head_attention_entropy"],
        "layer_hidden_l2": step["layer_hidden_l2"],
    }
    parts = decode_partials(CODEC.decode(v1.encode(record)))
    assert isinstance(parts, Partials) and len(parts) == 0 and parts.source_partition == -1
    out = ProfileTracker(POLICY).on_partials("m", None, parts, now_us=99)
    assert (out.state["window"], out.reports, out.duplicates) == (None, [], 0)
    assert table_name(POLICY) == "profile-models-v2-1s-3gram"  # v1 held the per-trace sets: never read as v2


def test_the_window_state_holds_no_per_trace_state_and_neuron_counts_still_fold() -> None:
    rng = random.Random(1)
    tracker = ProfileTracker(POLICY)
    state, _, _ = merge(tracker, None, deliveries(risk_agent(blocks_of(traffic(1), rng)), rng, split=0.3))
    assert {"traces", "applied", "tails"}.isdisjoint(state["window"]) and "closed" not in state
    assert set(state["offsets"]) == {"0", "1", "2"}
    at = state["window"]["start_us"]
    snap = {
        "snapshot_id": "s1",
        "model_version": "m",
        "steps": 4,
        "num_layers": 1,
        "ffn_width": 2,
        "counts": np.array([[0, 4]], dtype="<i4").tobytes(),
        "window_start_us": at,
        "window_end_us": at,
    }
    out: Fold = tracker.on_neurons("m", state, snap, 0)
    assert out.state["window"]["neuron_counts"] == [[0, 4]] and out.state["offsets"] == state["offsets"]
    assert tracker.on_neurons("m", out.state, snap, 0).duplicates == 1
