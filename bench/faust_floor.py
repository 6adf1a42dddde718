"""What the stream-processing framework allows on this machine, before any of evostream's maths: step events per
second through a Faust agent that does nothing, and the layers under it, side by side in one run.

Rows, each reading the same N GenerationStep records (the default model's shape) from a fresh topic with as many
partitions as evo.steps, timed from the first record received to the N-th:
  confluent-kafka consume            the client evostream's own consumers use (librdkafka), raw bytes
  aiokafka getmany                   the client under Faust, raw bytes
  faust take_events (no-op)          a Faust agent taking batches of 1000 (within 20 ms), raw value serializer
  faust take_events + fastavro       the same agent decoding each record with the project's codec
  faust events() one by one (no-op)  a Faust agent iterating event by event

Faust and aiokafka rows run in a child process each (a Faust worker owns its event loop and signals), started after
the records are on the broker; the clock is the child's own. Uses the broker at --bootstrap, else the running local
stack, else a private one.
Run: python -m bench.faust_floor [--records 200000] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid

from bench.broker import bench_broker
from evostream.core.bus import security
from evostream.core.bus.admin import delete_topics, ensure_topics
from evostream.core.bus.consumer import EventConsumer
from evostream.core.bus.producer import EventProducer
from evostream.schemas.catalog import CATALOG, STEPS, TopicSpec
from evostream.schemas.codec import RecordCodec
from evostream.schemas.samples import generation_step

TUNED = {"broker_max_poll_records": 10_000, "stream_buffer_maxsize": 65_536, "consumer_max_fetch_size": 8 << 20}
"""Consumer settings raised from Faust's defaults (None = aiokafka's 500 records per poll, a 4,096-event buffer
per partition, 1 MiB per partition fetch), and Faust's Monitor sensor removed."""
PARTITIONS = next(t.partitions for t in CATALOG if t.name == STEPS)


def produce(bootstrap: str, topic: str, n: int) -> int:
    codec = RecordCodec("GenerationStep")
    values = [codec.encode(generation_step(i % 64, f"trace-{i // 64}")) for i in range(min(n, 6400))]
    producer = EventProducer(bootstrap)
    producer.connect(topic)
    for i in range(n):
        producer.send(topic, f"trace-{i // 64}", values[i % len(values)])
    producer.flush(300)
    return len(values[0])


def confluent(bootstrap: str, topic: str, n: int) -> float:
    got, t0 = 0, 0.0
    with EventConsumer(bootstrap, f"floor-{uuid.uuid4().hex}", [topic], {"enable.auto.commit": False}) as c:
        while got < n:
            batch = c.poll_batch(10_000, 0.5)
            if batch and not t0:
                t0 = time.perf_counter()
            got += len(batch)
    return n / (time.perf_counter() - t0)


def child(kind: str, bootstrap: str, topic: str, n: int) -> None:
    """Run in a child process: consume ``n`` records the ``kind`` way, print {"rate": events/s} and exit."""
    if kind == "aiokafka":
        from aiokafka import AIOKafkaConsumer

        async def run() -> float:
            login = security.credentials(bootstrap)
            c = AIOKafkaConsumer(
                topic,
                bootstrap_servers=bootstrap,
                **({} if login is None else login.aiokafka()),
                group_id=f"floor-{uuid.uuid4().hex}",
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                max_poll_records=10_000,
            )
            await c.start()
            got, t0 = 0, 0.0
            try:
                while got < n:
                    batches = await c.getmany(timeout_ms=500, max_records=10_000)
                    k = sum(len(v) for v in batches.values())
                    if k and not t0:
                        t0 = time.perf_counter()
                    got += k
            finally:
                await c.stop()
            return n / (time.perf_counter() - t0)

        print(json.dumps({"rate": asyncio.run(run())}), flush=True)
        return

    import faust
    from faust.worker import Worker

    from evostream.stream_processors.transport import App, sasl_credentials

    fast = kind.endswith("-fast")
    kind = kind.removesuffix("-fast")
    tuned = TUNED if kind.endswith("-tuned") or fast else {}
    app = (App if fast else faust.App)(
        f"floor-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        broker_credentials=sasl_credentials(bootstrap),
        store="memory://",
        web_enabled=False,
        topic_partitions=PARTITIONS,
        consumer_auto_offset_reset="earliest",
        datadir=f"/tmp/floor-{os.getpid()}",
        stream_wait_empty=False,
        **tuned,
    )
    if tuned:

        @app.task
        async def quiet_monitor() -> None:  # Faust's Monitor sensor times every event: measure it
            app.sensors.remove(app.monitor)

    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    codec = RecordCodec("GenerationStep")
    seen = {"n": 0, "t0": 0.0}

    def tick(k: int) -> None:
        if not seen["t0"]:
            seen["t0"] = time.perf_counter()
        seen["n"] += k
        if seen["n"] >= n:
            print(json.dumps({"rate": n / (time.perf_counter() - seen["t0"])}), flush=True)
            os.kill(os.getpid(), 15)

    if kind == "faust-events":

        @app.agent(source)
        async def one(stream: faust.StreamT[bytes]) -> None:
            async for _event in stream.events():
                tick(1)

    else:
        decode = kind.startswith("faust-decode")

        @app.agent(source)
        async def batches(stream: faust.StreamT[bytes]) -> None:
            async for events in stream.take_events(1000, within=0.02):  # type: ignore[attr-defined]
                if decode:
                    for e in events:
                        codec.decode(bytes(e.value or b""))
                tick(len(events))

    sys.argv = [sys.argv[0]]
    Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def in_child(kind: str, bootstrap: str, topic: str, n: int) -> float:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.faust_floor",
            "--child",
            kind,
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--records",
            str(n),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    found = re.search(r'\{"rate": [^}]+\}', done.stdout + done.stderr)  # a Faust worker logs what it prints
    if found:
        return float(json.loads(found[0])["rate"])
    raise SystemExit(f"{kind} child failed ({done.returncode}):\n{done.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--topic", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.bootstrap, args.topic, args.records)
        return
    rows: dict[str, list[float]] = {}
    with bench_broker(args.bootstrap) as bootstrap:
        topic = f"evo.bench.floor.{uuid.uuid4().hex[:8]}"
        spec = TopicSpec(topic, "GenerationStep", "trace_id", PARTITIONS, "delete", 3600_000, "bench")
        ensure_topics(bootstrap, [spec])
        try:
            size = produce(bootstrap, topic, args.records)
            for _ in range(args.reps):  # interleaved: each rep runs every row once
                rows.setdefault("confluent-kafka consume", []).append(confluent(bootstrap, topic, args.records))
                for kind, name in (
                    ("aiokafka", "aiokafka getmany"),
                    ("faust-batch", "faust take_events (no-op)"),
                    ("faust-decode", "faust take_events + fastavro"),
                    ("faust-batch-tuned", "faust take_events, tuned (no-op)"),
                    ("faust-decode-tuned", "faust take_events + fastavro, tuned"),
                    ("faust-batch-tuned-fast", "faust take_events, inline hand-over (no-op)"),
                    ("faust-decode-tuned-fast", "faust take_events + fastavro, inline hand-over"),
                    ("faust-events", "faust events() one by one (no-op)"),
                ):
                    rows.setdefault(name, []).append(in_child(kind, bootstrap, topic, args.records))
                    print(f"  {name}: {rows[name][-1]:,.0f}/s", file=sys.stderr)
        finally:
            delete_topics(bootstrap, [topic])
    print(
        f"# {args.records:,} GenerationStep records of {size} B, {PARTITIONS} partitions, broker {bootstrap} on the "
        f"same machine, {args.reps} runs"
    )
    print(f"{'':>36} {'events/s median':>16} {'min':>9} {'max':>9}")
    for name, rates in rows.items():
        print(f"{name:>36} {statistics.median(rates):16,.0f} {min(rates):9,.0f} {max(rates):9,.0f}")
    print(f"# reproduce: python -m bench.faust_floor --records {args.records} --reps {args.reps}", file=sys.stderr)


if __name__ == "__main__":
    main()
