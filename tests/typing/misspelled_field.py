"""Must NOT type-check: a Completion's decode time lives under ``timings``, and mypy says so
(tests/schemas/test_records.py)."""

from __future__ import annotations

from evostream.schemas.codec import RecordCodec
from evostream.schemas.records import Completion


def decode_ms(data: bytes) -> float:
    completion = RecordCodec.of(Completion).decode(data)
    return completion["decode_us"] / 1000  # misspelled: the field is completion["timings"]["decode_us"]
