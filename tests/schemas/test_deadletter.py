"""The one DeadLetter builder fills every field of the schema, and what it builds encodes and reads back whole; a
record near the size limit is kept in part, with its size and hash, so that its dead letter can be produced."""

from __future__ import annotations

import hashlib

from evostream.schemas.codec import RecordCodec
from evostream.schemas.deadletter import KEEP_BYTES, dead_letter
from evostream.schemas.errors import BadMagicError, DecodeError


def test_dead_letter_round_trips_every_field() -> None:
    rec = dead_letter("evo.steps", 2, 41, b"trace-1", b"\x00junk", BadMagicError("no C3 01"), "proc", 1_700_000)
    assert rec == {
        "source_topic": "evo.steps",
        "partition": 2,
        "offset": 41,
        "original_key": b"trace-1",
        "raw_value": b"\x00junk",
        "error_type": "BadMagicError",
        "error": "no C3 01",
        "consumer": "proc",
        "failed_at_us": 1_700_000,
        "raw_size": 5,
        "raw_sha256": hashlib.sha256(b"\x00junk").hexdigest(),
        "raw_truncated": False,
    }
    codec = RecordCodec("DeadLetter")
    assert codec.decode(codec.encode(rec)) == rec


def test_dead_letter_keeps_a_missing_key_and_value() -> None:
    codec = RecordCodec("DeadLetter")
    rec = dead_letter("evo.requests", 0, 0, None, None, ValueError("empty"), "svc", 5)
    assert codec.decode(codec.encode(rec)) == rec
    assert (rec["original_key"], rec["raw_value"], rec["error_type"]) == (None, None, "ValueError")
    assert (rec["raw_size"], rec["raw_sha256"], rec["raw_truncated"]) == (None, None, False)


def test_a_record_near_the_size_limit_is_kept_in_part_with_its_size_and_hash() -> None:
    raw = bytes(range(256)) * 3906  # 999,936 bytes: under the client's 1,000,000-byte limit, as a poison pill is
    key = b"k" * (KEEP_BYTES + 10)
    rec = dead_letter("evo.requests", 1, 7, key, raw, DecodeError("x" * 100_000), "svc", 5)
    encoded = RecordCodec("DeadLetter").encode(rec)
    assert len(encoded) < 3 * KEEP_BYTES < 1_000_000
    assert rec["raw_value"] == raw[:KEEP_BYTES] and rec["original_key"] == key[:KEEP_BYTES]
    assert rec["raw_size"] == len(raw) and rec["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert rec["raw_truncated"] is True
    assert rec["error"].endswith("(91808 characters cut)") and len(rec["error"]) < 9000
