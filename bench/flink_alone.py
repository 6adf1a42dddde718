"""The PyFlink peer alone (bench/flink_peer.py) on the real broker: the same step events bench.processors offers its
Faust worker, folded by the PyFlink job, checked and measured.

A private broker (the project's launcher; or --bootstrap), a fresh topic of 6 partitions like evo.steps, filled with
``--steps`` steps over ``--traces`` traces drawn by bench.processors' ``Traffic`` (the default model's shape, around
its risk policy's baselines: healthy, so no alert is due and, without completions, no report), and ``--nan-traces``
traces whose fourth step is NaN (one alert and one EARLY report each, as bench.processors' probes): each step a
GenerationStep record, or with ``--records blocks`` each trace's run of ``--block-steps`` steps one StepBlock record
(as the emitter writes a trace's block); then ``run_peer`` runs the job over it. It fails unless the job
folded every step, none twice and none rejected, and counted one alert and one report per NaN trace; it prints the
peer's JSON line and its figures.

Needs the PyFlink environment (``bash bench/pyflink_env.sh``). Run from the project's environment:
  python -m bench.flink_alone [--steps 20000 --traces 200 --records steps|blocks --block-steps 16 --parallelism 1
                               --fold risk none --runs 1]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

from bench.broker import bench_broker
from bench.flink_peer import run_peer
from bench.processors import STEP, VERSION, Traffic
from evostream.core.bus.admin import admin_client
from evostream.core.bus.producer import EventProducer
from evostream.stream_processors.risk.policy import load_policies, policy_for


def fill(
    bootstrap: str, topic: str, traffic: Traffic, n_steps: int, n_traces: int, block_steps: int = 0, nan_traces: int = 0
) -> tuple[int, int]:
    """``n_steps // n_traces`` steps of each of ``n_traces`` traces, interleaved as a fleet emits them, then
    ``nan_traces`` traces of three healthy steps and a NaN step (each due one RiskAlert and its EARLY report): each
    step a GenerationStep record, or (``block_steps`` > 0) each trace's run of up to ``block_steps`` steps one
    StepBlock record, as the emitter writes a trace's blocks. The records and the steps written."""
    from confluent_kafka.admin import NewTopic

    admin = admin_client(bootstrap)
    for fut in admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)]).values():
        fut.result(30)
    run = uuid.uuid4().hex[:8]
    traces = [f"flink-{run}-{t}" for t in range(n_traces)]
    per = n_steps // n_traces
    t0 = time.time_ns() // 1000
    width = block_steps if block_steps > 0 else 1
    runs: list[list[dict[str, Any]]] = [
        [traffic.step(t, i, t0, k) for i in range(start, min(start + width, per))]
        for start in range(0, per, width)
        for k, t in enumerate(traces)
    ]
    for j in range(nan_traces):
        t = f"flink-{run}-nan-{j}"
        steps = [*(traffic.step(t, i, t0, 7) for i in range(3)), traffic.nan_step(t, 3)]
        runs += [steps] if block_steps > 0 else [[s] for s in steps]
    producer = EventProducer(bootstrap)
    if block_steps > 0:
        from evostream.schemas.blocks import block_record, from_steps  # type: ignore[attr-defined]
        from evostream.schemas.codec import RecordCodec

        block = RecordCodec("StepBlock")
        for steps in runs:
            value = block.encode(block_record(from_steps(steps), time.time_ns() // 1000))
            producer.send(topic, steps[0]["trace_id"], value)
    else:
        for (step,) in runs:
            producer.send(topic, step["trace_id"], STEP.encode(step))
    producer.flush()
    return len(runs), sum(len(steps) for steps in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--traces", type=int, default=200)
    ap.add_argument(
        "--records", choices=("steps", "blocks"), default="steps", help="GenerationStep or StepBlock records"
    )
    ap.add_argument("--nan-traces", type=int, default=10, help="traces ending in a NaN step: one alert each")
    ap.add_argument("--block-steps", type=int, default=16, help="steps of a trace per StepBlock (--records blocks)")
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument(
        "--fold", nargs="+", choices=("risk", "none"), default=["risk"], help="none: the job's floor, no fold"
    )
    ap.add_argument("--runs", type=int, default=1, help="peer runs over the one filled topic")
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    traffic = Traffic(policy_for(load_policies(), VERSION), seed=1)
    with bench_broker(args.bootstrap) as bootstrap:
        topic = f"bench-flink-steps-{uuid.uuid4().hex[:8]}"
        block_steps = args.block_steps if args.records == "blocks" else 0
        records, steps = fill(bootstrap, topic, traffic, args.steps, args.traces, block_steps, args.nan_traces)
        for r, fold in ((r, fold) for r in range(1, args.runs + 1) for fold in args.fold):
            got = run_peer(bootstrap, topic, records, steps, kind=args.records, parallelism=args.parallelism, fold=fold)
            print(json.dumps(got))
            wrong = [
                f"{k} {got[k]} (expected {want})"
                for k, want in (
                    ("steps", steps),
                    ("duplicates", 0),
                    ("rejected", 0),
                    ("alerts", args.nan_traces if fold == "risk" else 0),
                    ("reports", args.nan_traces if fold == "risk" else 0),
                )
                if got[k] != want
            ]
            if wrong:
                raise SystemExit(f"the PyFlink peer's fold is off: {', '.join(wrong)}")
            print(
                f"run {r}: PyFlink peer (thread mode, parallelism {args.parallelism}, fold {fold}) took "
                f"{got['steps']:,} step events ({got['records']:,} {args.records} records) of {args.traces} traces "
                f"in {got['seconds']:.2f} s = "
                f"{got['steps_per_s']:,.0f} step events/s, "
                f"{got['cpu_us_per_step']:.1f} CPU-µs per step event ({got['cpu_s']:.2f} CPU-s; whole run "
                f"{got['total_cpu_s']:.1f} CPU-s, {got['wall_s']:.1f} s)"
            )
    print(
        f"# reproduce: python -m bench.flink_alone --steps {args.steps} --traces {args.traces} --records {args.records}"
        f"{f' --block-steps {args.block_steps}' if args.records == 'blocks' else ''} --nan-traces {args.nan_traces} "
        f"--parallelism {args.parallelism} --fold {' '.join(args.fold)} --runs {args.runs}"
    )


if __name__ == "__main__":
    main()
