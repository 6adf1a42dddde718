"""Semantic poison for every sink that runs without an outside service (SQLite, Prometheus, webhook), through the
sinks runner and the real broker: on each topic a sink reads, a record near the size limit that is not Avro, and
valid Avro records with one field at an extreme (NaN and infinite floats, the ends of int and long, empty and 100 KB
strings, empty and odd-sized bytes, empty and long arrays). Every one is applied or dead-lettered with its reason,
the good record after them is applied (no partition blocked), and the runner does not stop."""

from __future__ import annotations

import copy
import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from evostream.consumers.sinks.contract import Positions, Record, Result
from evostream.consumers.sinks.delivery import Backoff
from evostream.consumers.sinks.runner import RunnerOptions, SinkRunner
from evostream.core.bus.admin import ensure_topics
from evostream.core.bus.producer import EventProducer
from evostream.core.bus.reader import TopicReader
from evostream.core.clock import now_us
from evostream.core.errors import EncodeError
from evostream.plugins.api import Sink, SinkContext
from evostream.plugins.prometheus import PrometheusSink
from evostream.plugins.sqlite import SqliteSink
from evostream.plugins.webhook import WebhookSink
from evostream.schemas.catalog import CATALOG, DLQ, topic_spec
from evostream.schemas.codec import RecordCodec
from evostream.schemas.deadletter import KEEP_BYTES
from tests.plugins.samples import BUILDERS
from tests.plugins.webhook_receiver import receiver

pytestmark = pytest.mark.integration
LIMIT = 1_000_000
"""The client's message.max.bytes: a poison pill sits just under it with its key (the client counts 36 bytes more),
and is over it wrapped whole."""
FAST = RunnerOptions(max_records=500, max_wait_s=0.2, backoff=Backoff(0.05, 0.2))


def extremes(value: object) -> list[object]:
    """Values at the edges of what the field's Python type (as decoded from Avro) can hold."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, float):
        return [float("nan"), float("inf"), float("-inf"), -3.4e38]
    if isinstance(value, int):
        return [-1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)]
    if isinstance(value, str):
        return ["", "\u00e9" * 50_000]
    if isinstance(value, bytes):
        return [b"", b"\x00\x01\x02"]
    if isinstance(value, list):
        return [[], value * max(1, 10_000 // max(1, len(value)))]
    return []


def leaves(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, (*path, k))
    else:
        yield path, value


def mutants(topic: str) -> list[tuple[str, bytes]]:
    """(what was changed, encoded record) for every leaf of a sample record at every extreme the schema accepts."""
    codec = RecordCodec(topic_spec(topic).value_schema)
    base = BUILDERS[topic](0)
    out = []
    for path, value in leaves(base):
        for extreme in extremes(value):
            rec = copy.deepcopy(base)
            at = rec
            for step in path[:-1]:
                at = at[step]
            at[path[-1]] = extreme
            try:
                out.append((f"{'.'.join(map(str, path))}={str(extreme)[:12]}", codec.encode(rec)))
            except EncodeError:  # outside the schema (a long in an int field): not a valid record, not this suite's
                continue
    return out


class Observed:
    """The real sink, with the raw keys of what the runner handed it and it accepted (the runner's view)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.name = sink.name
        self.topics = sink.topics
        self.flush_interval_s = getattr(sink, "flush_interval_s", 0.0)
        self.applied: set[bytes] = set()

    def write(self, records: Sequence[Record]) -> Result:
        result = self.sink.write(records)
        poison = {r.key for r in result.poison} if result.poison else {r.key for r in records}
        if result.status.value != "retryable":
            ok = result.status.value == "ok"
            self.applied |= {r.raw_key or b"" for r in records if ok or r.key not in poison}
        return result

    def flush(self) -> Result:
        return self.sink.flush()

    def positions(self) -> Positions:
        return self.sink.positions()

    def close(self) -> None:
        self.sink.close()


def run_until_caught_up(kafka: str, sink: Observed, group: str) -> SinkRunner:
    runner = SinkRunner(kafka, sink, FAST, group=group)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            runner.run(until_idle=True)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(240)
    if t.is_alive():
        runner.stop()
        t.join(30)
        pytest.fail(f"sink {sink.name} did not catch up within 240 s: {runner.stats}")
    assert not errors, f"the runner of {sink.name} stopped: {errors[0]!r}"
    return runner


def dead_letters(kafka: str, since_us: int, group: str) -> dict[bytes, dict[str, Any]]:
    with TopicReader(kafka, DLQ, "DeadLetter", since_us=since_us, idle_s=3.0) as reader:
        return {rec["original_key"] or b"": rec for rec in reader if rec["consumer"] == group}


SINKS: dict[str, Callable[[Path, str], Sink]] = {
    "sqlite": lambda tmp, _url: SqliteSink(SinkContext("sqlite", tmp, {"path": str(tmp / "poison.db")})),
    "prometheus": lambda tmp, _url: PrometheusSink(SinkContext("prometheus", tmp, {"port": "0"})),
    "webhook": lambda tmp, url: WebhookSink(SinkContext("webhook", tmp, {"url": url, "min_severity": "INFO"})),
}


@pytest.mark.parametrize("name", sorted(SINKS))
def test_every_poison_record_is_applied_or_dead_lettered_and_the_next_good_one_applied(
    kafka: str, tmp_path: Path, name: str
) -> None:
    ensure_topics(kafka, CATALOG)
    marker = uuid.uuid4().hex[:8]
    since = now_us()
    with receiver() as rx:
        sink = Observed(SINKS[name](tmp_path, rx.url + "/hook"))
        # the sinks read evo.governance too: only the governance writer's principal may put records there
        producer = EventProducer(kafka, role="governance")
        pills: dict[bytes, bytes] = {}
        poison: dict[bytes, str] = {}
        good: list[bytes] = []
        for topic in sink.topics:
            key = f"{marker}-pill-{topic}".encode()
            pill = (hashlib.sha256(topic.encode()).digest() * 32_000)[: LIMIT - len(key) - 100]
            producer.send(topic, key, pill)
            pills[key] = pill
            for i, (what, value) in enumerate(mutants(topic)):
                key = f"{marker}-{topic}-{i}".encode()
                producer.send(topic, key, value)
                poison[key] = f"{topic}: {what}"
            key = f"{marker}-good-{topic}".encode()
            producer.send(topic, key, RecordCodec(topic_spec(topic).value_schema).encode(BUILDERS[topic](1)))
            good.append(key)
        producer.flush(30)
        group = f"poison-{name}-{marker}"
        runner = run_until_caught_up(kafka, sink, group)
        dead = dead_letters(kafka, since, group)

    assert len(poison) >= 20 * len(sink.topics), "the suite must try many shapes"
    for key, pill in pills.items():
        d = dead[key]
        assert d["error_type"] == "BadMagicError" and d["raw_truncated"] and d["raw_size"] == len(pill)
        assert d["raw_value"] == pill[:KEEP_BYTES]
    lost = {what for key, what in poison.items() if key not in sink.applied and key not in dead}
    assert not lost, f"neither applied nor dead-lettered by {name}: {sorted(lost)}"
    assert all(dead[k]["error"] for k in poison if k in dead), "a dead letter without its reason"
    assert set(good) <= sink.applied, "a good record after the poison was not applied: a partition is blocked"
    assert runner.stats.dead_letters >= len(pills)
