"""Kill one node of the local three-node cluster under load, restart it, and account for every record.

The load: a producer (the project's EventProducer: acks=all, idempotent) sends numbered records at a steady rate to
a topic of 3 partitions (replication 3, min in-sync 2); a consumer group (EventConsumer, auto-commit: at least once)
reads them; `evostream serve` with the default model answers a request a second through the InferenceClient. After
``--before`` seconds the node that coordinates the consumer group is killed with SIGKILL (it also leads partitions,
so leadership and the coordinator both move); ``--down`` seconds later it is started again, and the run waits until
every replica is back in sync. Then the producer stops, and every number is looked for in what the consumer read.

Printed: records sent and acknowledged, lost (never read), duplicates read (each one recognised: read again at the
same partition and offset, i.e. redelivered, or written twice at two offsets, which idempotence rules out), produce
latency before and during the outage, the longest gap in acknowledgements, requests served while the node was
down, time for the node to answer again and to rejoin every ISR.

Starts its own cluster (512 MB heap per node, free ports) in a temporary folder and removes it after.
Run: python -m bench.cluster [--rate 500] [--before 10] [--down 20] [--no-serve]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import pct
from evostream.core.bus.admin import admin_client, ensure_topics
from evostream.core.bus.consumer import EventConsumer
from evostream.core.bus.producer import EventProducer
from evostream.core.errors import ConsumeError, DeliveryError, EvoError
from evostream.core.settings import load_settings
from evostream.core.stack import LocalCluster
from evostream.core.stack.cluster import MIN_INSYNC, REPLICATION, ClusterLayout
from evostream.schemas.catalog import COMPLETIONS, REQUESTS, TopicSpec

LOAD_PARTITIONS = 3


@dataclass(frozen=True)
class Accounting:
    """Every number sent, looked for in what was read."""

    sent: int
    read: int
    lost: tuple[int, ...]
    duplicates: int
    """Reads beyond the first of a number."""
    redelivered: int
    """Duplicates read again at the same partition and offset: the consumer group handed a record out twice (at
    least once, after the coordinator moved and an auto-commit was lost)."""
    written_twice: int
    """Duplicates found at another offset: the producer wrote the record twice (idempotence promises 0)."""
    unknown: tuple[int, ...]
    """Numbers read that were never sent."""


def account(sent: int, reads: list[tuple[int, int, int]]) -> Accounting:
    """Match the reads, (number, partition, offset) each, against the numbers 0..sent-1."""
    places: dict[int, list[tuple[int, int]]] = {}
    for number, partition, offset in reads:
        places.setdefault(number, []).append((partition, offset))
    duplicates = sum(len(p) - 1 for p in places.values())
    written_twice = sum(len(set(p)) - 1 for p in places.values())
    return Accounting(
        sent=sent,
        read=len(reads),
        lost=tuple(sorted(set(range(sent)) - set(places))),
        duplicates=duplicates,
        redelivered=duplicates - written_twice,
        written_twice=written_twice,
        unknown=tuple(sorted(n for n in places if not 0 <= n < sent)),
    )


class NumberedProducer(threading.Thread):
    """Sends 0, 1, 2, ... (key and value: the number) at ``rate`` a second until stopped, then flushes; keeps when
    each was sent and acknowledged."""

    def __init__(self, bootstrap: str, topic: str, rate: float) -> None:
        super().__init__(name="numbered-producer", daemon=True)
        self.topic = topic
        self.rate = rate
        self.producer = EventProducer(bootstrap)
        self.sent_at: list[float] = []
        self.acked_at: dict[int, float] = {}
        self.failed: list[tuple[int, str]] = []
        self.error: str | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            self.producer.connect(self.topic)
            t0 = time.monotonic()
            while not self.halt.is_set():
                n = len(self.sent_at)
                wait = t0 + n / self.rate - time.monotonic()
                if wait > 0:
                    self.producer.poll()
                    time.sleep(min(wait, 0.02))
                    continue
                self.sent_at.append(time.monotonic())
                self.producer.send(self.topic, str(n), str(n).encode(), on_delivery=self._report(n))
            self.producer.flush(120)
        except EvoError as e:
            self.error = f"{type(e).__name__}: {e}"

    def _report(self, n: int) -> Callable[[DeliveryError | None], None]:
        def delivered(err: DeliveryError | None) -> None:
            if err is None:
                self.acked_at[n] = time.monotonic()
            else:
                self.failed.append((n, str(err)))

        return delivered


class NumberedConsumer(threading.Thread):
    """A consumer-group member reading the numbers; keeps (number, partition, offset) of every read."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        super().__init__(name="numbered-consumer", daemon=True)
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.reads: list[tuple[int, int, int]] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with EventConsumer(self.bootstrap, self.group, [self.topic]) as consumer:
            while not self.halt.is_set():
                try:
                    batch = consumer.poll_batch(1000, 0.2)
                except ConsumeError as e:  # a reader retries; the accounting says whether anything was lost
                    self.errors.append(str(e))
                    continue
                self.reads += [(int(m.value() or b"-1"), m.partition() or 0, m.offset() or 0) for m in batch]

    def numbers(self) -> set[int]:
        return {n for n, _, _ in self.reads}


class Requests(threading.Thread):
    """One inference request a second through the InferenceClient ("reverse: hello", which the default model
    answers "olleh"); keeps each one's send time, latency and whether the answer came and was right."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(name="requests", daemon=True)
        self.bootstrap = bootstrap
        self.done: list[tuple[float, float, str]] = []
        """(sent at, seconds to the answer, "" or what went wrong)"""
        self.halt = threading.Event()

    def run(self) -> None:
        from evostream.producers.client import InferenceClient

        with InferenceClient(self.bootstrap) as client:
            while not self.halt.is_set():
                t = time.monotonic()
                try:
                    text = str(client.infer("reverse: hello", timeout_s=60)["output_text"]).strip()
                    problem = "" if text == "olleh" else f"answered {text!r} to reverse: hello"
                except EvoError as e:
                    problem = f"{type(e).__name__}: {e}"
                self.done.append((t, time.monotonic() - t, problem))
                self.halt.wait(max(0.0, 1.0 - (time.monotonic() - t)))


@contextmanager
def serving(bootstrap: str, credentials: Path, timeout_s: float = 180.0) -> Iterator[subprocess.Popen[str]]:
    """`evostream serve` with the default model (no prompt embedding), logged in with the cluster's
    ``credentials``, until it says it serves; SIGTERM after."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "evostream.cli", "serve", "--bootstrap", bootstrap, "--max-wait-ms", "1", "--no-embed"],
        env=os.environ | {"HF_HUB_OFFLINE": "1", "EVOSTREAM_KAFKA_CREDENTIALS": str(credentials)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    tail: list[str] = []
    ready = threading.Event()

    def drain() -> None:  # read stderr to its end, or serve blocks on a full pipe
        for line in proc.stderr or ():
            tail[:] = [*tail[-40:], line.rstrip()]
            if "serving" in line:
                ready.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("evostream serve did not start:\n" + "\n".join(tail))
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def coordinator(bootstrap: str, group: str, timeout_s: float = 30.0) -> int:
    """The node that coordinates ``group`` now."""
    admin = admin_client(bootstrap)
    fut = admin.describe_consumer_groups([group], request_timeout=timeout_s)[group]
    return int(fut.result(timeout=timeout_s).coordinator.id)


def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> the node that leads it."""
    md = admin_client(bootstrap).list_topics(topic, timeout=10)
    return {p: part.leader for p, part in md.topics[topic].partitions.items()}


@dataclass
class OutageReport:
    """What one kill-and-restart under load showed."""

    victim: int
    led: list[int]
    """The load topic's partitions the victim led when it was killed."""
    accounting: Accounting
    acked_during_outage: int
    """Records sent and acknowledged while the node was down."""
    latency_before_ms: list[float]
    """Of the records sent in the second half of the load before the kill: a new producer's first records wait for
    its first metadata and producer id."""
    latency_outage_ms: list[float]
    max_ack_gap_s: float
    """The longest time between two acknowledgements from the kill to the rejoin."""
    down_s: float
    restart_s: float
    """From start_node to the node answering."""
    rejoin_s: float
    """From the node answering to every replica of the load, request and reply topics and the consumer offsets
    back in sync."""
    timeline: list[tuple[float, int, float, float]] = field(default_factory=list)
    """Per 5 s of send time from the kill (negative: before it): records, median and max produce latency (ms)."""
    requests: list[tuple[float, float, str]] = field(default_factory=list)
    requests_outage: list[tuple[float, float, str]] = field(default_factory=list)
    producer_error: str | None = None
    delivery_failures: int = 0
    consumer_errors: list[str] = field(default_factory=list)


def run_outage(
    cluster: LocalCluster,
    layout: ClusterLayout,
    rate: float,
    before_s: float,
    down_s: float,
    serve: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> OutageReport:
    """Load the cluster, kill the consumer group's coordinator with SIGKILL after ``before_s``, start it again after
    ``down_s``, wait until it has rejoined every ISR, then stop the load and account for every record."""
    bootstrap = layout.bootstrap
    run = uuid.uuid4().hex[:8]
    topic, group = f"cluster.load.{run}", f"cluster-load-{run}"
    spec = TopicSpec(topic, "DeadLetter", "number", LOAD_PARTITIONS, "delete", 3600_000, "numbered load")
    ensure_topics(bootstrap, [spec], replication=REPLICATION, min_insync=MIN_INSYNC)
    with serving(bootstrap, cluster.credentials_file) if serve else _nothing():
        consumer = NumberedConsumer(bootstrap, topic, group)
        producer = NumberedProducer(bootstrap, topic, rate)
        requests = Requests(bootstrap)
        workers: list[NumberedConsumer | NumberedProducer | Requests] = [consumer, producer]
        if serve:
            workers.append(requests)
        for w in workers:
            w.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < before_s or not consumer.reads or (serve and not requests.done):
            if time.monotonic() - t0 > before_s + 120:
                raise RuntimeError("the load did not start within 2 minutes")
            time.sleep(0.1)
        victim = coordinator(bootstrap, group)
        led = sorted(p for p, node in leaders(bootstrap, topic).items() if node == victim)
        t_kill = time.monotonic()
        cluster.kill_node(victim)
        progress(f"killed node {victim} (coordinator of the group, leader of partitions {led})")
        time.sleep(down_s)
        t_start = time.monotonic()
        cluster.start_node(victim)
        t_up = time.monotonic()
        progress(f"node {victim} answers again after {t_up - t_start:.1f} s")
        rejoin_s = cluster.await_in_sync([topic, REQUESTS, COMPLETIONS, "__consumer_offsets"], 120)
        t_back = time.monotonic()
        progress(f"node {victim} back in every ISR {rejoin_s:.1f} s later")
        time.sleep(2)  # the load goes on past the rejoin
        for w in workers:
            if w is not consumer:
                w.halt.set()
        for w in workers:
            if w is not consumer:
                w.join(180)
        sent = len(producer.sent_at)
        deadline = time.monotonic() + 60
        while len(consumer.numbers() & set(range(sent))) < sent and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # a redelivery still on its way is counted, not missed
        consumer.halt.set()
        consumer.join(30)

    def latency(lo: float, hi: float) -> list[float]:
        return [
            (producer.acked_at[n] - t) * 1000
            for n, t in enumerate(producer.sent_at)
            if lo <= t < hi and n in producer.acked_at
        ]

    buckets: dict[int, list[float]] = {}
    for n, t in enumerate(producer.sent_at):
        if n in producer.acked_at:
            buckets.setdefault(int((t - t_kill) // 5), []).append((producer.acked_at[n] - t) * 1000)
    timeline = [(b * 5.0, len(xs), pct(xs, 50), max(xs)) for b, xs in sorted(buckets.items())]
    acks = sorted(t for t in producer.acked_at.values() if t_kill <= t <= t_back)
    gaps = [b - a for a, b in zip([t_kill, *acks], [*acks, t_back], strict=True)]
    return OutageReport(
        victim=victim,
        led=led,
        accounting=account(sent, consumer.reads),
        acked_during_outage=sum(
            1
            for n, t in enumerate(producer.sent_at)
            if t_kill <= t < t_up and n in producer.acked_at and producer.acked_at[n] < t_up
        ),
        latency_before_ms=latency(t_kill - before_s / 2, t_kill),  # past the producer's first seconds
        latency_outage_ms=latency(t_kill, t_up),
        max_ack_gap_s=max(gaps),
        down_s=t_up - t_kill,
        restart_s=t_up - t_start,
        rejoin_s=rejoin_s,
        timeline=timeline,
        requests=requests.done,
        requests_outage=[r for r in requests.done if t_kill <= r[0] + r[1] < t_up],  # answered while it was down
        producer_error=producer.error,
        delivery_failures=len(producer.failed),
        consumer_errors=consumer.errors,
    )


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def _ms(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    return f"p50 {pct(xs, 50):.1f} / p99 {pct(xs, 99):.1f} / max {max(xs):.1f} ms ({len(xs)} records)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=500.0, help="records a second")
    ap.add_argument("--before", type=float, default=10.0, help="seconds of load before the kill")
    ap.add_argument("--down", type=float, default=20.0, help="seconds the node stays down")
    ap.add_argument("--no-serve", action="store_true", help="no `evostream serve`, only the numbered records")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="evostream-cluster-"))
    settings = load_settings(stack_dir=tmp, broker_port=0, controller_port=0, ready_timeout_s=120.0)
    cluster = LocalCluster(settings)
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    try:
        t = time.monotonic()
        layout = cluster.up(say)
        print(f"cluster of {len(layout.nodes)} up in {time.monotonic() - t:.1f} s at {layout.bootstrap}")
        r = run_outage(cluster, layout, args.rate, args.before, args.down, not args.no_serve, say)
    finally:
        cluster.down(progress=say)
        shutil.rmtree(tmp, ignore_errors=True)
    a = r.accounting
    print(
        f"load: {args.rate:.0f} records/s, acks=all, idempotent; {LOAD_PARTITIONS} partitions, replication "
        f"{REPLICATION}, min in-sync {MIN_INSYNC}"
    )
    print(f"killed node {r.victim} (SIGKILL; group coordinator, leader of partitions {r.led}), down {r.down_s:.1f} s")
    print(
        f"records sent {a.sent}, read {a.read}, lost {len(a.lost)}, duplicates {a.duplicates} "
        f"(redelivered at the same offset {a.redelivered}, written twice {a.written_twice}), unknown {len(a.unknown)}"
    )
    print(
        f"delivery failures {r.delivery_failures}, producer error {r.producer_error or 'none'}, "
        f"consumer errors {len(r.consumer_errors)}"
    )
    print(f"acknowledged while the node was down: {r.acked_during_outage} records")
    print(f"produce latency the last {args.before / 2:.0f} s before the kill: {_ms(r.latency_before_ms)}")
    print(f"produce latency while down:      {_ms(r.latency_outage_ms)}")
    up_at = r.down_s
    print("produce latency by 5 s of send time from the kill (s: records, p50 / max ms):")
    for at, n, p50, top in r.timeline:
        mark = " (node down)" if 0 <= at < up_at else ""
        print(f"  {at:+5.0f} s: {n:5d}, {p50:7.1f} / {top:7.1f}{mark}")
    print(f"longest gap between acknowledgements from kill to rejoin: {r.max_ack_gap_s * 1000:.0f} ms")
    bad = [p for _, _, p in r.requests if p]
    print(
        f"requests served: {len(r.requests) - len(bad)} of {len(r.requests)}, "
        f"{sum(1 for *_, p in r.requests_outage if not p)} of them while the node was down; "
        f"latency {_ms([s * 1000 for _, s, p in r.requests if not p])}"
    )
    for problem, count in Counter(p[:200] for p in bad).most_common(3):
        print(f"  {count} x {problem}")
    print(f"restart: the node answers {r.restart_s:.1f} s after start, back in every ISR {r.rejoin_s:.1f} s later")


if __name__ == "__main__":
    main()
