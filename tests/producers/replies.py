"""Reading back the records (completions, route decisions) a test's requests got, on the shared broker."""

from __future__ import annotations

from typing import Any

from evostream.core.bus.reader import TopicReader
from evostream.schemas.catalog import COMPLETIONS


def collect(kafka: str, request_ids: set[str], since_us: int, timeout_s: float = 180.0) -> list[dict[str, Any]]:
    """Every Completion of ``request_ids`` written since ``since_us``, duplicates included: reads until each has
    one, then on until the topic has been quiet for 2 s (a request served twice would show up here)."""
    seen: set[str] = set()
    with TopicReader(
        kafka,
        COMPLETIONS,
        "Completion",
        since_us=since_us - 5_000_000,
        idle_s=None,
        timeout_s=timeout_s,
        until=lambda: seen >= request_ids,
        batch=500,
        name="test-replies",
    ) as reader:
        for rec in reader:
            if rec["request_id"] in request_ids:
                seen.add(rec["request_id"])
    missing = len(request_ids - seen)
    assert not missing, f"{missing} of {len(request_ids)} requests got no completion within {timeout_s:.0f} s"
    with TopicReader(
        kafka,
        COMPLETIONS,
        "Completion",
        since_us=since_us - 5_000_000,
        idle_s=2.0,
        timeout_s=60,
        batch=500,
        name="test-replies",
    ) as reader:
        return [rec for rec in reader if rec["request_id"] in request_ids]


def read(kafka: str, topic: str, schema: str, ids: set[str], since_us: int, want: int) -> list[dict[str, Any]]:
    """The records of ``ids`` on ``topic`` since ``since_us``: reads until ``want`` are found, then 2 s more."""
    found: list[dict[str, Any]] = []
    with TopicReader(
        kafka,
        topic,
        schema,
        since_us=since_us - 5_000_000,
        idle_s=None,
        timeout_s=120,
        until=lambda: len(found) >= want,
        batch=500,
        name="test-route",
    ) as reader:
        for rec in reader:
            if rec["request_id"] in ids:
                found.append(rec)
    assert len(found) >= want, f"{len(found)} of {want} {schema} records"
    return found
