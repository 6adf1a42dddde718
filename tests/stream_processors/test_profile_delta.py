"""ProfileDelta columns fold exactly as the steps they carry: the same windows, closings, duplicates and
aggregates as ``ProfileTracker.on_steps`` on the steps one by one, through a real Avro round trip."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from evostream.schemas.codec import RecordCodec
from evostream.schemas.samples import generation_step
from evostream.schemas.tensors import pack_f32
from evostream.stream_processors.profiling.delta import columns, deltas
from evostream.stream_processors.profiling.tracker import ProfileTracker
from evostream.stream_processors.profiling.window import ProfilePolicy

CODEC = RecordCodec("ProfileDelta")


def traffic(seed: int, traces: int = 12, steps: int = 30) -> list[dict[str, Any]]:
    """Interleaved steps of several traces over three 1 s windows, some without head or layer statistics, some
    with NaN, in the order a partition would hold them."""
    rng = random.Random(seed)
    out = []
    for t in range(traces):
        t0 = rng.randrange(0, 2_000_000)
        for i in range(rng.randrange(3, steps)):
            s = generation_step(i, f"trace-{t}", layers=3, heads=2, t0_us=t0)
            s["emitted_at_us"] = t0 + i * rng.randrange(20_000, 60_000)
            s["token_id"] = rng.choice([5, 6, 7, 8])  # few tokens: n-grams repeat
            roll = rng.random()
            if roll < 0.1:
                s["head_attention_entropy"], s["attention_signal"] = b"", "NONE"
            elif roll < 0.15:
                s["layer_hidden_l2"] = pack_f32([1.0, float("nan"), 2.0])
            elif roll < 0.2:
                s["attention_signal"] = "OUTPUT_NORM"
            out.append(s)
    rng.shuffle(out)
    out.sort(key=lambda s: (s["trace_id"], s["step"]))  # a trace's steps stay in order on its partition
    merged: list[dict[str, Any]] = []
    queues = {}
    for s in out:
        queues.setdefault(s["trace_id"], []).append(s)
    while queues:  # traces interleave as they would on a partition
        tid = rng.choice(sorted(queues))
        merged.append(queues[tid].pop(0))
        if not queues[tid]:
            del queues[tid]
    return merged


def fold_steps(tracker: ProfileTracker, batches: list[list[dict[str, Any]]]) -> tuple[Any, list[Any], int]:
    state, snaps, dups = None, [], 0
    for batch in batches:
        out = tracker.on_steps("m", state, batch, now_us=99)
        state, dups = out.state, dups + out.duplicates
        snaps += out.reports
    return state, snaps, dups


def fold_deltas(tracker: ProfileTracker, batches: list[list[dict[str, Any]]]) -> tuple[Any, list[Any], int]:
    state, snaps, dups = None, [], 0
    for batch in batches:
        for delta in deltas("m", batch):
            out = tracker.on_delta("m", state, columns(CODEC.decode(CODEC.encode(delta))), now_us=99)
            state, dups = out.state, dups + out.duplicates
            snaps += out.reports
    return state, snaps, dups


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
def test_deltas_fold_as_their_steps_do_with_replays_and_late_steps(seed: int) -> None:
    tracker = ProfileTracker(ProfilePolicy(window_s=1, ngram=2, max_paths=6))
    steps = traffic(seed)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(steps)), 5))
    batches = [steps[a:b] for a, b in zip([0, *cuts], [*cuts, len(steps)], strict=True)]
    # a replay after a crash: the second batch's steps again, with more, and a duplicate of a whole earlier batch
    batches.insert(3, steps[cuts[0] : cuts[2]])
    batches.append(batches[1])
    want, got = fold_steps(tracker, batches), fold_deltas(tracker, batches)
    assert got[2] == want[2] > 0  # the same duplicates skipped
    assert len(got[1]) == len(want[1]) >= 2  # the same windows closed
    for a, b in zip(got[1], want[1], strict=True):
        close(a, b)
    close(got[0], want[0])


def test_a_delta_carries_each_shape_apart_and_checks_its_sizes() -> None:
    a = generation_step(0, "t", layers=2, heads=2)
    b = generation_step(1, "t", layers=3, heads=1)
    made = deltas("m", [a, b, a])
    assert [(d["num_layers"], d["num_heads"], d["steps"]) for d in made] == [(2, 2, [0, 0]), (3, 1, [1])]
    broken = {**made[0], "layer_hidden_l2": made[0]["layer_hidden_l2"][:-4]}
    from evostream.core.errors import DecodeError

    with pytest.raises(DecodeError):
        columns(broken)
