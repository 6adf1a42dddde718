"""One step block's share of a profiling window, computed where the block is read (pure numpy, no Faust).

Profiling folds per model version, so its state lives on one partition and one worker per model. The fold itself is
a sum, though: the risk agent, which reads every block on every worker (partitioned by trace), reduces each block to
a ``BlockPartial`` (its step count, time span, head and layer sums and token n-grams), and the profiling agent only
adds partials, one row per block, where it folded every step before. What needs a trace's history is settled by the
risk agent, which keeps that history anyway: whether the trace was already counted in the block's window, and the
trace's last tokens that start the block's first n-grams. So the window keeps no per-trace state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from evostream.schemas.blocks import StepColumns
from evostream.stream_processors.profiling.window import ProfilePolicy, window_of


@dataclass(frozen=True, eq=False)
class BlockPartial:
    """What one block of one trace adds to its model's profiling window (L layers, H heads of the block's shape)."""

    window_start_us: int
    """The window of the block's first step: a whole block counts in one window, also where its steps cross a
    window's end (a block spans the producer's block window at most, 5 s, and a window a minute)."""
    steps: int
    first_us: int
    """The earliest emitted_at_us of the block's steps."""
    last_us: int
    """The latest emitted_at_us of the block's steps."""
    new_trace: int
    """1 where the block's trace is not yet counted in ``window_start_us``'s window, else 0."""
    signal: str
    """The block's attention_signal (how the head sums read: OUTPUT_NORM or ENTROPY)."""
    head_sum: npt.NDArray[np.float64]
    """[L, H]: the head signal summed over the steps whose heads are all finite (zeros where none is)."""
    head_steps: int
    layer_changed: npt.NDArray[np.int64]
    """[L]: per layer, the steps on which it changed the hidden-state norm materially, over the steps whose layer
    norms are all finite (zeros where none is)."""
    layer_steps: int
    paths: Counter[str]
    """The token n-grams that end in this block, as the window counts them ("t1 t2 t3")."""


def block_partial(cols: StepColumns, prior_tokens: Sequence[int], counted: bool, policy: ProfilePolicy) -> BlockPartial:
    """The partial of the block ``cols``: ``prior_tokens`` are the trace's tokens before the block (its last
    ``policy.ngram - 1`` start the block's first n-grams), ``counted`` whether the trace was already counted in the
    window of the block's first step (the caller keeps that per trace: ``window_start_us`` of its last partial).

    The sums are those the per-step fold took from the same steps (the reference fold of
    tests/stream_processors/test_profile_partial.py), so a window of partials publishes what a window of steps did."""
    layers, heads = cols.num_layers, cols.num_heads
    at = cols.emitted_at_us
    head_sum = np.zeros((layers, heads), dtype=np.float64)
    head_steps = 0
    cube = cols.head_attention_entropy
    if cube.size:
        ok = np.isfinite(cube).all(axis=(1, 2))
        head_steps = int(ok.sum())
        if head_steps:
            head_sum = cube[ok].astype(np.float64).sum(axis=0)
    layer_changed = np.zeros(layers, dtype=np.int64)
    layer_steps = 0
    l2 = cols.layer_hidden_l2
    if l2.shape[1]:
        ok = np.isfinite(l2).all(axis=1)
        layer_steps = int(ok.sum())
        if layer_steps:
            x = l2[ok].astype(np.float64)
            changed = np.ones(x.shape, dtype=np.int64)
            changed[:, 1:] = np.abs(x[:, 1:] - x[:, :-1]) / np.maximum(x[:, :-1], 1e-12) > policy.layer_change
            layer_changed = changed.sum(axis=0)
    return BlockPartial(
        window_start_us=window_of(int(at[0]), policy.window_s),
        steps=len(cols),
        first_us=int(at.min()),
        last_us=int(at.max()),
        new_trace=0 if counted else 1,
        signal=cols.attention_signal,
        head_sum=head_sum,
        head_steps=head_steps,
        layer_changed=layer_changed,
        layer_steps=layer_steps,
        paths=ngrams(prior_tokens, cols.token_id.tolist(), policy.ngram),
    )


def ngrams(prior: Sequence[int], tokens: Sequence[int], n: int) -> Counter[str]:
    """The n-grams of ``prior + tokens`` that end in ``tokens``, counted (a trace's token paths)."""
    seq = [str(int(t)) for t in (list(prior)[-(n - 1) :] if n > 1 else [])] + [str(int(t)) for t in tokens]
    return Counter(" ".join(seq[i : i + n]) for i in range(len(seq) - n + 1))  # each token made text once
