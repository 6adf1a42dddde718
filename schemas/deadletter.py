"""The one builder of DeadLetter records (schemas/avro/DeadLetter.v2.avsc), for every service that gives up on one.

It sits beside the schema so that the service and the processors cannot drift apart in how they fill it; the time
comes in as an argument, since the contract reads no clock.

A dead letter keeps at most ``KEEP_BYTES`` of the record's value and key, and the whole value's size and SHA-256: a
record near the client's 1,000,000-byte limit wrapped whole into a dead letter is itself too large to produce, and
the consumer that gave up on it would meet it again after every restart (a poison pill that blocks its partition)."""

from __future__ import annotations

import hashlib
from typing import Any

KEEP_BYTES = 64 * 1024
"""Bytes of a record's value (and key) a dead letter keeps."""
KEEP_CHARS = 8 * 1024
"""Characters of the reason a dead letter keeps."""


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
    reason = str(error)
    if len(reason) > KEEP_CHARS:
        reason = f"{reason[:KEEP_CHARS]}... ({len(reason) - KEEP_CHARS} characters cut)"
    return {
        "source_topic": topic,
        "partition": partition,
        "offset": offset,
        "original_key": None if key is None else key[:KEEP_BYTES],
        "raw_value": None if raw is None else raw[:KEEP_BYTES],
        "error_type": type(error).__name__,
        "error": reason,
        "consumer": consumer,
        "failed_at_us": failed_at_us,
        "raw_size": None if raw is None else len(raw),
        "raw_sha256": None if raw is None else hashlib.sha256(raw).hexdigest(),
        "raw_truncated": any(b is not None and len(b) > KEEP_BYTES for b in (key, raw)),
    }
