"""Putting sample reports on the real broker for the runner's tests, each run marked so that its rows can be told
from what other tests wrote to the same topics."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from evostream.core.bus.admin import ensure_topics
from evostream.core.bus.producer import EventProducer
from evostream.core.bus.security import client_config
from evostream.schemas.catalog import CATALOG, topic_spec
from evostream.schemas.codec import RecordCodec
from tests.plugins.samples import BUILDERS


def marked(topics: Sequence[str], per_topic: int, marker: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Sample values of each topic whose identities (trace ids, model versions, event ids) carry ``marker``."""
    marker = marker or uuid.uuid4().hex[:8]
    out: dict[str, list[dict[str, Any]]] = {}
    for topic in topics:
        values = []
        for i in range(per_topic):
            v = BUILDERS[topic](i)
            for field in ("trace_id", "request_id", "event_id"):
                if field in v:
                    v[field] = f"{marker}-{v[field]}"
            if "model_version" in v:
                v["model_version"] = f"{marker}-{v['model_version']}"
            values.append(v)
        out[topic] = values
    return out


def produce(
    kafka: str, values: dict[str, list[dict[str, Any]]], garbage: dict[str, int] | None = None, marker: str = "x"
) -> int:
    """Write ``values`` (and ``garbage[topic]`` undecodable records, keyed ``<marker>-garbage-<i>``) to their topics;
    the number of records."""
    ensure_topics(kafka, CATALOG)
    # the samples include governance events: only the governance writer's principal may put them on its topic
    producer = EventProducer(kafka, role="governance")
    n = 0
    for topic, items in values.items():
        spec = topic_spec(topic)
        codec = RecordCodec(spec.value_schema)
        for v in items:
            key = v.get(spec.key) if spec.key in v else None
            producer.send(topic, str(key) if key is not None else None, codec.encode(v))
            n += 1
    for topic, count in (garbage or {}).items():
        for i in range(count):
            producer.send(topic, f"{marker}-garbage-{i}", b"\x00not an avro record")
            n += 1
    producer.flush()
    return n


def ends(kafka: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """The end offset of every partition of ``topics``."""
    c = Consumer({"bootstrap.servers": kafka, "group.id": f"ends-{uuid.uuid4().hex}", **client_config(kafka)})
    try:
        out = {}
        for topic in topics:
            for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
                out[topic, p] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        return out
    finally:
        c.close()


def committed(kafka: str, group: str, parts: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The offsets ``group`` has committed (a reader outside the group: it joins nothing)."""
    c = Consumer({"bootstrap.servers": kafka, "group.id": group, "enable.auto.commit": False, **client_config(kafka)})
    try:
        got = c.committed([TopicPartition(t, p) for t, p in parts], timeout=10)
        return {(tp.topic, tp.partition): tp.offset for tp in got if tp.offset >= 0}
    finally:
        c.close()


def count_rows(db: Path, table: str, where: str, *args: object) -> int:
    if not db.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as c:
        try:
            return int(c.execute(f"SELECT count(*) FROM {table} WHERE {where}", args).fetchone()[0])
        except sqlite3.OperationalError:  # the sink has not created its tables yet
            return 0
