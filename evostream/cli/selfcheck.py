"""Round trip through the real broker: produce GenerationStep records, consume them back, compare."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import typer

from evostream.cli.common import Bootstrap, friendly, say
from evostream.core.bus.admin import delete_topics, ensure_topics, wait_for_broker
from evostream.core.bus.consumer import EventConsumer
from evostream.core.bus.producer import EventProducer
from evostream.core.clock import now_us
from evostream.core.errors import EvoError
from evostream.core.settings import load_settings
from evostream.schemas.catalog import TopicSpec
from evostream.schemas.codec import RecordCodec
from evostream.schemas.records import GenerationStep
from evostream.schemas.samples import generation_step


@dataclass(frozen=True)
class RoundTrip:
    """What a round trip measured."""

    records: int
    bytes_per_record: float
    encode_s: float
    produce_s: float
    """From the first send until every record was acknowledged (acks=all, idempotent)."""
    consume_s: float
    """Consuming and decoding every record back, from the first record received to the last."""

    @property
    def produce_rate(self) -> float:
        return self.records / self.produce_s

    @property
    def consume_rate(self) -> float:
        return self.records / self.consume_s

    @property
    def encode_rate(self) -> float:
        return self.records / self.encode_s


class RoundTripMismatchError(EvoError):
    """Records came back missing, duplicated or different."""


def round_trip(
    bootstrap: str,
    count: int = 10_000,
    traces: int = 100,
    partitions: int = 3,
    deadline_s: float = 120.0,
    connect_timeout_s: float = 10.0,
    progress: Callable[[str], None] = lambda _: None,
) -> RoundTrip:
    """Send ``count`` steps spread over ``traces`` traces to a fresh topic, read them all back, check equality."""
    wait_for_broker(bootstrap, connect_timeout_s)
    codec = RecordCodec.of(GenerationStep)
    topic = TopicSpec(
        f"evo.selfcheck.{uuid.uuid4().hex[:12]}",
        "GenerationStep",
        "trace_id",
        partitions,
        "delete",
        3600_000,
        "round-trip self-check",
    )
    ensure_topics(bootstrap, [topic])
    try:
        t0 = now_us()
        expected = {}
        for i in range(count):
            trace = f"selfcheck-{i % traces:04d}"
            rec = generation_step(i // traces, trace, t0_us=t0)
            expected[(trace, rec["step"])] = rec
        e0 = time.perf_counter()
        encoded = [(k[0], codec.encode(r)) for k, r in expected.items()]
        encode_s = time.perf_counter() - e0
        size = sum(len(v) for _, v in encoded) / max(1, count)

        producer = EventProducer(bootstrap)
        producer.connect(topic.name)
        p0 = time.perf_counter()
        for key, value in encoded:
            producer.send(topic.name, key, value)
        producer.flush(deadline_s)
        produce_s = time.perf_counter() - p0
        progress(f"produced {count} records ({size:.0f} B each) in {produce_s:.2f} s")

        seen: dict[tuple[str, int], GenerationStep] = {}
        c0 = 0.0
        end = time.monotonic() + deadline_s
        with EventConsumer(bootstrap, f"selfcheck-{uuid.uuid4().hex[:8]}", [topic.name]) as consumer:
            while len(seen) < count and time.monotonic() < end:
                batch = consumer.poll_batch(5000, 0.5)
                if batch and not c0:
                    c0 = time.perf_counter()
                for msg in batch:
                    rec = codec.decode(msg.value() or b"")
                    k = (rec["trace_id"], rec["step"])
                    if k in seen:
                        raise RoundTripMismatchError(f"record {k} came back twice")
                    if msg.key() != rec["trace_id"].encode():
                        raise RoundTripMismatchError(f"record {k} came back under key {msg.key()!r}")
                    seen[k] = rec
        consume_s = time.perf_counter() - (c0 or time.perf_counter())
        if len(seen) != count:
            raise RoundTripMismatchError(f"only {len(seen)} of {count} records came back within {deadline_s:.0f} s")
        for k, rec in expected.items():
            if seen[k] != rec:
                raise RoundTripMismatchError(f"record {k} differs after the round trip: {seen[k]} != {rec}")
        progress(f"consumed and decoded {count} records in {consume_s:.2f} s: all equal")
        return RoundTrip(count, size, encode_s, produce_s, consume_s)
    finally:
        delete_topics(bootstrap, [topic.name])


@friendly
def selfcheck(
    count: Annotated[int, typer.Option(help="Records to send and read back.")] = 10_000, bootstrap: Bootstrap = None
) -> None:
    """Produce GenerationStep records to the broker, consume them back and check every one is equal."""
    from evostream.core.stack import resolve_bootstrap

    settings = load_settings(bootstrap_servers=bootstrap)
    server = resolve_bootstrap(settings)
    rt = round_trip(server, count, connect_timeout_s=settings.connect_timeout_s, progress=say)
    typer.echo(
        f"round trip OK via {server}: {rt.records} records, {rt.bytes_per_record:.0f} B each; "
        f"produce {rt.produce_rate:,.0f}/s (acks=all, idempotent), consume+decode {rt.consume_rate:,.0f}/s"
    )
