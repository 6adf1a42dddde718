"""The risk fold's cost per step: a trace's steps folded step by step (``RiskTracker.on_steps``, one
``TraceRisk.update`` and one assessment per step) against the same steps folded as step blocks with numpy
(``RiskTracker.on_block``), at several block sizes.

Input: healthy traffic of the default model's shape (``bench.processors.Traffic``: the shipped t5-tiny-suite
policy's layers and heads, every z-score baseline applied), ``--traces`` traces of ``--steps`` steps each, cut into
blocks of each size and folded block by block, the traces interleaved as a stream brings them; each trace's state is
handed from one block to the next as the agent's table holds it. Only the fold is timed: the steps are decoded (dicts
for ``on_steps``, ``StepColumns`` for ``on_block``) before the clock starts, and no completion arrives. One process,
one thread (the fold's numpy calls are element-wise on small arrays). ``--vocab N`` draws tokens from N ids instead,
so that tokens repeat within a few steps and the loop test runs at some rows.

Both folds must end in the same states (checked on every run, the block's offset aside).

Run: python -m bench.risk_fold [--traces 64 --steps 64 --repeats 7 --vocab 0]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.processors import VERSION, Traffic
from bench.stats import spread
from evostream.schemas.blocks import StepColumns, from_steps
from evostream.stream_processors.risk.policy import load_policies, policy_for
from evostream.stream_processors.risk.tracker import RiskTracker

SIZES = (1, 4, 16, 64)


def traces(n: int, steps: int, vocab: int, seed: int = 0) -> list[list[dict[str, Any]]]:
    policies = load_policies()
    traffic = Traffic(policy_for(policies, VERSION), seed)
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        recs = [traffic.step(f"bench-{t}", i, 0, t) for i in range(steps)]
        if vocab:
            for rec in recs:
                rec["token_id"] = int(rng.integers(0, vocab))
        out.append(recs)
    return out


def by_step(tracker: RiskTracker, blocks: list[list[list[dict[str, Any]]]]) -> Callable[[], list[Any]]:
    def run() -> list[Any]:
        states: list[Any] = [None] * len(blocks[0])
        for k, round_ in enumerate(blocks):
            for t, block in enumerate(round_):
                rows = [(s, k * 1000 + i) for i, s in enumerate(block)]
                states[t] = tracker.on_steps(states[t], rows, 0).state
        return states

    return run


def by_block(tracker: RiskTracker, blocks: list[list[StepColumns]]) -> Callable[[], list[Any]]:
    def run() -> list[Any]:
        states: list[Any] = [None] * len(blocks[0])
        for k, round_ in enumerate(blocks):
            for t, cols in enumerate(round_):
                states[t] = tracker.on_block(states[t], cols, k, 0).state
        return states

    return run


def timed(fn: Callable[[], list[Any]], steps: int, repeats: int) -> tuple[list[float], list[Any]]:
    """µs per step of each repeat, and the last repeat's states."""
    fn()  # warm: caches, imports, first-call costs
    per_step, states = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        states = fn()
        per_step.append((time.perf_counter() - t0) * 1e6 / steps)
    return per_step, states


def same(a: list[Any], b: list[Any]) -> bool:
    return all(
        {**x, "step_offset": x["step_offset"] // 1000} == y for x, y in zip(a, b, strict=True)
    )  # on_steps stored its last row's offset (round * 1000 + row), on_block the round's


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--traces", type=int, default=64)
    ap.add_argument("--steps", type=int, default=64, help="steps per trace")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--vocab", type=int, default=0, help="tokens drawn from this many ids (0: the bench's own)")
    args = ap.parse_args()
    recs = traces(args.traces, args.steps, args.vocab)
    tracker = RiskTracker(load_policies())
    n = args.traces * args.steps
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}")
    print(f"# {args.traces} traces x {args.steps} steps of {VERSION}, one thread; µs per step: min / median / max")
    print(f"{'block':>6} {'step by step':>24} {'block fold':>24} {'speed-up':>9}")
    for size in SIZES:
        cuts = range(0, args.steps, size)
        cols = [[from_steps(trace[c : c + size]) for trace in recs] for c in cuts]
        rows = [[block.rows() for block in round_] for round_ in cols]  # as decoded: float32 scalars
        one, states_one = timed(by_step(tracker, rows), n, args.repeats)
        block, states_block = timed(by_block(tracker, cols), n, args.repeats)
        if not same(states_one, states_block):
            raise SystemExit(f"block size {size}: the block fold's states differ from the step-by-step fold's")
        gain = statistics.median(one) / statistics.median(block)
        print(f"{size:>6} {spread(one, '.1f'):>24} {spread(block, '.1f'):>24} {gain:>8.1f}x")
    print(
        f"# reproduce: python -m bench.risk_fold --traces {args.traces} --steps {args.steps} "
        f"--repeats {args.repeats} --vocab {args.vocab}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
