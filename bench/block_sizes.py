"""Steps per step block as the inference producer ships them, and how long a step waits for its block.

The stream processors pay about the same for a block whatever it holds, so what they cost per step under real
traffic depends on how many steps the producer puts in a block (``bench.processors --block N`` measures a block of
N). Here ``evostream serve`` of the default model answers the suite's held-out prompts through Kafka, ``--requests``
of them in a closed loop of ``--concurrency``, once per block window (``--windows-ms``; 0 cuts a block at every
pipe message of the generating thread, as the emitter did before it held steps for their block) and batching mode,
each on a freshly started service. Read back from evo.step-blocks: blocks, steps per block (mean, p10 / p50 / p90)
and the share of steps in blocks of 16 or more; the wait of a step for its block (the block's ``flushed_at_us``
minus the step's ``emitted_at_us``, p50 / p99), which is what an alert other than a non-finite one waits more.

Run: python -m bench.block_sizes [--requests 96] [--concurrency 8] [--windows-ms 0,200] [--batching static,continuous]
     [--reps 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.broker import bench_broker
from bench.serving import MAX_NEW_TOKENS, start_servers
from bench.stats import pct, spread
from evostream.core.bus.reader import TopicReader
from evostream.core.clock import now_us
from evostream.models.suite.evaluate import eval_set
from evostream.models.suite.tasks import Example
from evostream.producers.client import InferenceClient
from evostream.schemas.blocks import columns
from evostream.schemas.catalog import STEP_BLOCKS


def blocks_of(bootstrap: str, traces: set[str], since_us: int, steps: int) -> list[tuple[int, list[float]]]:
    """(steps, each step's wait in ms) of every block of ``traces`` on evo.step-blocks, once ``steps`` are read."""
    out: list[tuple[int, list[float]]] = []
    with TopicReader(
        bootstrap,
        STEP_BLOCKS,
        "StepBlock",
        since_us=since_us,
        idle_s=None,
        timeout_s=120,
        until=lambda: sum(n for n, _ in out) >= steps,
        batch=5000,
        name="bench-blocks",
    ) as reader:
        for rec in reader:
            if rec["trace_id"] in traces:
                cols = columns(rec)
                waits = (rec["flushed_at_us"] - cols.emitted_at_us) / 1000
                out.append((len(cols), [float(w) for w in waits]))
    if sum(n for n, _ in out) < steps:
        raise SystemExit(f"only {sum(n for n, _ in out)} of {steps} steps were read back from {STEP_BLOCKS}")
    return out


def run_once(bootstrap: str, examples: Sequence[Example], concurrency: int) -> list[tuple[int, list[float]]]:
    since = now_us() - 1_000_000
    with InferenceClient(bootstrap, max_in_flight=concurrency) as client:
        replies = [client.submit(e.prompt, max_new_tokens=MAX_NEW_TOKENS) for e in examples]
        recs = [r.result(300) for r in replies]
    return blocks_of(bootstrap, {r["trace_id"] for r in recs}, since, sum(r["token_count"] for r in recs))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight (closed loop)")
    ap.add_argument("--windows-ms", default="0,200", help="block windows side by side (ms)")
    ap.add_argument("--batching", default="static,continuous", help="the service's --batching modes")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args(argv)
    windows = [int(w) for w in args.windows_ms.split(",") if w]
    modes = [m for m in args.batching.split(",") if m]
    pool = list(eval_set(max(1, (args.requests + 5) // 6)))
    examples = [pool[i % len(pool)] for i in range(args.requests)]
    tmp = Path(tempfile.mkdtemp(prefix="evostream-bench-blocks-"))
    rows: dict[str, list[float]] = {}

    def note(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    with bench_broker(args.bootstrap) as bootstrap:
        for rep in range(1, args.reps + 1):
            for mode in modes:
                for window in windows[rep % len(windows) :] + windows[: rep % len(windows)]:
                    os.environ["EVOSTREAM_STEP_BLOCK_WINDOW_MS"] = str(window)  # the service started here reads it
                    try:
                        servers = start_servers(bootstrap, 1, args.max_batch, mode, tmp)
                    finally:
                        os.environ.pop("EVOSTREAM_STEP_BLOCK_WINDOW_MS")
                    try:
                        with InferenceClient(bootstrap) as warm:  # the model's first calls are slow: not measured
                            warm.infer_many([e.prompt for e in pool[:8]], timeout_s=120, max_new_tokens=MAX_NEW_TOKENS)
                        got = run_once(bootstrap, examples, args.concurrency)
                    finally:
                        for s in servers:
                            s.stop()
                    sizes = np.array([n for n, _ in got])
                    waits = [w for _, ws in got for w in ws]
                    key = f"{mode}, window {window} ms"
                    print(
                        f"rep {rep} ({key}): {len(sizes)} blocks of {sizes.sum()} steps: {sizes.mean():.1f} steps a "
                        f"block (p10 {np.percentile(sizes, 10):.0f}, p50 {np.median(sizes):.0f}, p90 "
                        f"{np.percentile(sizes, 90):.0f}); {sizes[sizes >= 16].sum() / sizes.sum():.0%} of steps in "
                        f"blocks of 16 or more; a step's wait for its block p50 {statistics.median(waits):.0f} ms, "
                        f"p99 {pct(waits, 99):.0f} ms"
                    )
                    sys.stdout.flush()
                    note(f"{key}: steps a block (mean)", float(sizes.mean()))
                    note(f"{key}: steps a block (p50)", float(np.median(sizes)))
                    note(f"{key}: wait p50 ms", statistics.median(waits))
                    note(f"{key}: wait p99 ms", pct(waits, 99))
    print(
        f"over {args.reps} reps, min / median / max ({args.requests} requests, {args.concurrency} in flight, "
        f"--max-batch {args.max_batch}, default model, {os.cpu_count()} CPUs):"
    )
    for key, vals in rows.items():
        print(f"  {key}: {spread(vals, ',.1f')}")
    print(
        f"# reproduce: python -m bench.block_sizes --requests {args.requests} --concurrency {args.concurrency} "
        f"--windows-ms {args.windows_ms} --batching {args.batching} --max-batch {args.max_batch} --reps {args.reps}"
    )


if __name__ == "__main__":
    main()
