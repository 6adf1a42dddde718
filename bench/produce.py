"""Produce and consume GenerationStep records through a real Kafka broker, acks=all and idempotent.

Measures, in one run, side by side:
  produce          pre-encoded records -> broker, until every one is acknowledged
  encode+produce   Avro encoding in the loop, as a producer service does it
  consume          raw records back through a consumer group
  consume+decode   and Avro-decoded

Uses the broker at --bootstrap, else the running local stack, else starts a private one (2 GB heap) and stops it.
Run: python -m bench.produce [--records N] [--layers L --heads H]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from bench.broker import bench_broker
from evostream.core.bus.admin import delete_topics, ensure_topics
from evostream.core.bus.consumer import EventConsumer
from evostream.core.bus.producer import EventProducer
from evostream.schemas.catalog import TopicSpec
from evostream.schemas.codec import RecordCodec
from evostream.schemas.samples import generation_step


def produce(bootstrap: str, topic: str, items: list[tuple[str, bytes]]) -> float:
    producer = EventProducer(bootstrap)
    producer.connect(topic)
    t0 = time.perf_counter()
    for key, value in items:
        producer.send(topic, key, value)
    producer.flush(120)
    return time.perf_counter() - t0


def encode_produce(bootstrap: str, topic: str, codec: RecordCodec, records: list[dict[str, object]]) -> float:
    producer = EventProducer(bootstrap)
    producer.connect(topic)
    t0 = time.perf_counter()
    for r in records:
        producer.send(topic, str(r["trace_id"]), codec.encode(r))
    producer.flush(120)
    return time.perf_counter() - t0


def consume(bootstrap: str, topic: str, n: int, codec: RecordCodec | None) -> float:
    """Seconds from the first record received to the n-th."""
    got, t0 = 0, 0.0
    with EventConsumer(bootstrap, f"bench-{uuid.uuid4().hex[:8]}", [topic]) as c:
        deadline = time.monotonic() + 300
        while got < n and time.monotonic() < deadline:
            batch = c.poll_batch(10_000, 0.5)
            if batch and not t0:
                t0 = time.perf_counter()
            if codec is not None:
                for m in batch:
                    codec.decode(m.value() or b"")
            got += len(batch)
    if got < n:
        raise SystemExit(f"only {got} of {n} records came back")
    return time.perf_counter() - t0


def run(bootstrap: str, n: int, layers: int, heads: int, partitions: int) -> None:
    codec = RecordCodec("GenerationStep")
    records = [generation_step(i // 1000, f"trace-{i % 1000:04d}", layers, heads) for i in range(n)]
    items = [(str(r["trace_id"]), codec.encode(r)) for r in records]
    size = sum(len(v) for _, v in items) / n
    topics = [
        TopicSpec(
            f"evo.bench.{uuid.uuid4().hex[:10]}",
            "GenerationStep",
            "trace_id",
            partitions,
            "delete",
            3600_000,
            "benchmark",
        )
        for _ in range(2)
    ]
    ensure_topics(bootstrap, topics)
    try:
        rows = [
            ("produce (pre-encoded)", produce(bootstrap, topics[0].name, items)),
            ("encode+produce", encode_produce(bootstrap, topics[1].name, codec, records)),
            ("consume", consume(bootstrap, topics[0].name, n, None)),
            ("consume+decode", consume(bootstrap, topics[0].name, n, codec)),
        ]
    finally:
        delete_topics(bootstrap, [t.name for t in topics])
    print(f"# {n:,} GenerationStep records of {size:.0f} B ({layers} layers x {heads} heads), {partitions} partitions,")
    print(f"# broker {bootstrap}, acks=all, enable.idempotence=true, lz4, one Python process")
    print(f"{'stage':>24} {'records/s':>12} {'MB/s':>8}")
    for name, secs in rows:
        print(f"{name:>24} {n / secs:12,.0f} {n * size / secs / 1e6:8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=500_000)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    with bench_broker(args.bootstrap) as bootstrap:
        run(bootstrap, args.records, args.layers, args.heads, args.partitions)
    print(
        f"# reproduce: python -m bench.produce --records {args.records} --layers {args.layers} --heads {args.heads}"
        f" --partitions {args.partitions}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
