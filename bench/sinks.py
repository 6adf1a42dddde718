"""Records per second through ``evostream sinks run``'s runner, per sink, against the same records on a real broker.

Writes a mix of reports to the sink topics (per trace: a Completion, an EARLY and a FINAL RiskReport, an alert for
one trace in ten; a drift window, a profile and a governance event per hundred traces), then for each sink and each
repetition runs a fresh ``SinkRunner`` (its own consumer group and a fresh sink) from the topics' start to their end
and times it from the poll that brings the first batch to the commit after the last. The reports' own times are a
millisecond apart (a trace's completion and risk reports 0.5 ms apart), so a run covers a few seconds of report
time: a sink that aggregates per second (Datadog) folds many records into each point. The baseline row is the
runner's ceiling on this machine: the same records only consumed and decoded by the same consumer settings,
handed to no sink.

Sinks are loaded by name from the ``evostream.sinks`` entry points, with options as the CLI takes them
(``-o prometheus.port=0``). Datadog and OTLP send to a service: without ``-o datadog.host=...`` /
``-o otlp.endpoint=...`` the bench starts the tests' local endpoints (a Datadog intake stand-in that checks every
request, a real OTLP receiver on the opentelemetry-proto services) in this process, so their rows include the
receiving side's work on the same two cores.

Uses the broker at --bootstrap, else the running local stack, else starts a private one and stops it; on a shared
broker the topics' older records are part of what each runner reads (counted, and said).
Run: python -m bench.sinks [--traces N] [--reps R] [--sinks sqlite,prometheus,datadog,wandb,otlp]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.broker import bench_broker
from evostream.cli.sinks import parse_options
from evostream.consumers.sinks.runner import RunnerOptions, SinkRunner
from evostream.core.bus.admin import ensure_topics
from evostream.core.bus.consumer import EventConsumer
from evostream.core.bus.producer import EventProducer
from evostream.plugins.api import DEFAULT_TOPICS, SinkContext
from evostream.plugins.discovery import load
from evostream.schemas.catalog import ALERTS, CATALOG, COMPLETIONS, DRIFT, GOVERNANCE, PROFILES, RISK, topic_spec
from evostream.schemas.codec import RecordCodec
from evostream.schemas.samples import alert, completion, drift_report, governance, profile, risk_report


def mix(traces: int, t_us: int) -> dict[str, list[dict[str, object]]]:
    run = uuid.uuid4().hex[:6]
    out: dict[str, list[dict[str, object]]] = {t: [] for t in DEFAULT_TOPICS}
    for i in range(traces):
        c = completion(i, t_us)
        c["trace_id"] = f"{run}-{i}"
        out[COMPLETIONS].append(c)
        for stage in ("EARLY", "FINAL"):
            r = risk_report(i, t_us)
            r["trace_id"], r["stage"], r["step"] = c["trace_id"], stage, (2 if stage == "EARLY" else None)
            out[RISK].append(r)
        if i % 10 == 0:
            a = alert(i, t_us)
            a["trace_id"] = c["trace_id"]
            out[ALERTS].append(a)
        if i % 100 == 0:
            out[DRIFT].append(drift_report(i // 100, t_us))
            out[PROFILES].append(profile(i // 100, t_us))
            g = governance(i // 100, t_us)
            g["event_id"] = f"{run}-{i}"
            out[GOVERNANCE].append(g)
    return out


def produce(bootstrap: str, values: dict[str, list[dict[str, object]]]) -> int:
    producer = EventProducer(bootstrap)
    for topic, items in values.items():
        spec = topic_spec(topic)
        codec = RecordCodec(spec.value_schema)
        for v in items:
            producer.send(topic, str(v[spec.key]), codec.encode(v))
    producer.flush(120)
    return sum(map(len, values.values()))


def total(bootstrap: str, topics: tuple[str, ...]) -> int:
    """Records on ``topics`` from their start (low watermark) to their end."""
    from confluent_kafka import Consumer, TopicPartition

    from evostream.core.bus.security import client_config

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}", **client_config(bootstrap)})
    try:
        n = 0
        for topic in topics:
            for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
                low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                n += high - low
        return n
    finally:
        c.close()


def baseline(bootstrap: str, topics: tuple[str, ...], n: int, max_records: int) -> float:
    codecs = {t: RecordCodec(topic_spec(t).value_schema) for t in topics}
    got, t0 = 0, 0.0
    with EventConsumer(bootstrap, f"bench-{uuid.uuid4().hex}", topics, {"enable.auto.commit": False}) as c:
        deadline = time.monotonic() + 600
        while got < n and time.monotonic() < deadline:
            before = time.perf_counter()
            batch = c.poll_batch(max_records, 0.5)
            if batch and not t0:
                t0 = before
            for m in batch:
                codecs[m.topic() or ""].decode_or_skip(m.value())
            got += len(batch)
    return n / (time.perf_counter() - t0)


def through_sink(bootstrap: str, name: str, cls: type, options: dict[str, str], n: int, max_records: int) -> float:
    with tempfile.TemporaryDirectory(prefix=f"bench-sink-{name}-") as tmp:
        sink = cls(SinkContext(name, Path(tmp), options))
        runner = SinkRunner(
            bootstrap,
            sink,
            RunnerOptions(max_records=max_records, max_wait_s=0.5),
            group=f"bench-sink-{name}-{uuid.uuid4().hex[:8]}",
        )
        t0 = 0.0
        try:
            deadline = time.monotonic() + 900
            while runner.stats.records + runner.stats.dead_letters + runner.stats.undecodable < n:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name}: only {runner.stats.records} of {n} records in 900 s")
                before = time.perf_counter()
                if runner.step() and not t0:
                    t0 = before  # the clock starts with the poll that brought the first batch
            runner.commit()  # the last records made durable (and sent, for sinks that hold some back) and committed
            return n / (time.perf_counter() - t0)
        finally:
            runner.close()


@contextmanager
def local_endpoints(options: dict[str, dict[str, str]]) -> Iterator[list[str]]:
    """The tests' Datadog intake and OTLP receiver, for the sinks given no endpoint of their own."""
    from tests.plugins.datadog_intake import KEY, Intake
    from tests.plugins.otlp_receiver import Receiver

    notes: list[str] = []
    with ExitStack() as stack:
        if "host" not in options.setdefault("datadog", {}):
            intake = Intake()
            stack.callback(intake.stop)
            options["datadog"] |= {"host": intake.url, "api_key": KEY}
            notes.append(f"datadog: the tests' local intake at {intake.url}")
        if "endpoint" not in options.setdefault("otlp", {}):
            receiver = Receiver()
            stack.callback(receiver.stop)
            options["otlp"]["endpoint"] = f"127.0.0.1:{receiver.grpc_port}"
            notes.append(f"otlp: the tests' gRPC receiver at 127.0.0.1:{receiver.grpc_port}")
        yield notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sinks", default="sqlite,prometheus,datadog,wandb,otlp")
    ap.add_argument("--option", "-o", action="append", default=[], help="SINK.OPTION=VALUE, as for evostream sinks run")
    ap.add_argument("--max-records", type=int, default=500)
    ap.add_argument("--bootstrap", default=None)
    args = ap.parse_args()
    chosen = load(args.sinks)
    options = parse_options(args.option)
    options.setdefault("prometheus", {}).setdefault("port", "0")
    with bench_broker(args.bootstrap) as bootstrap, local_endpoints(options) as notes:
        for note in notes:
            print(f"# {note}", file=sys.stderr)
        ensure_topics(bootstrap, CATALOG)
        written = produce(bootstrap, mix(args.traces, int(time.time() * 1e6)))
        rows: list[tuple[str, list[float]]] = []
        for name, cls in chosen:
            topics = tuple(cls.topics)
            n = total(bootstrap, topics)
            rates = []
            for _ in range(args.reps):
                rates.append(through_sink(bootstrap, name, cls, options.get(name, {}), n, args.max_records))
                print(f"  {name}: {rates[-1]:,.0f} records/s", file=sys.stderr)
            base = [baseline(bootstrap, topics, n, args.max_records) for _ in range(args.reps)]
            rows += [(f"consume+decode ({name}'s topics)", base), (name, rates)]
    print(f"# {written:,} records written ({args.traces:,} traces' reports); each runner reads from the start")
    print(f"# broker {bootstrap}, {args.reps} runs each, batches of {args.max_records}, one Python process")
    print(f"{'':>36} {'records/s median':>17} {'min':>9} {'max':>9}")
    for name, rates in rows:
        print(f"{name:>36} {statistics.median(rates):17,.0f} {min(rates):9,.0f} {max(rates):9,.0f}")
    print(
        f"# reproduce: python -m bench.sinks --traces {args.traces} --reps {args.reps} --sinks {args.sinks} "
        + " ".join(f"-o {o}" for o in args.option),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
