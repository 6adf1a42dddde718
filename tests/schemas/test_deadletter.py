"""The one DeadLetter builder fills every field of the schema, and what it builds encodes and reads back whole."""

from __future__ import annotations

from evostream.schemas.codec import RecordCodec
from evostream.schemas.deadletter import dead_letter
from evostream.schemas.errors import BadMagicError


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
    }
    codec = RecordCodec("DeadLetter")
    assert codec.decode(codec.encode(rec)) == rec


def test_dead_letter_keeps_a_missing_key_and_value() -> None:
    codec = RecordCodec("DeadLetter")
    rec = dead_letter("evo.requests", 0, 0, None, None, ValueError("empty"), "svc", 5)
    assert codec.decode(codec.encode(rec)) == rec
    assert (rec["original_key"], rec["raw_value"], rec["error_type"]) == (None, None, "ValueError")
