"""The one builder of DeadLetter records (schemas/avro/DeadLetter.v1.avsc), for every service that gives up on one.

It sits beside the schema so that the service and the processors cannot drift apart in how they fill it; the time
comes in as an argument, since the contract reads no clock."""

from __future__ import annotations

from typing import Any


def dead_letter(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    raw: bytes | None,
    error: BaseException,
    consumer: str,
    failed_at_us: int,
) -> dict[str, Any]:
    """A DeadLetter record for the record at ``topic[partition]@offset`` that ``consumer`` could not process."""
    return {
        "source_topic": topic,
        "partition": partition,
        "offset": offset,
        "original_key": key,
        "raw_value": raw,
        "error_type": type(error).__name__,
        "error": str(error),
        "consumer": consumer,
        "failed_at_us": failed_at_us,
    }
