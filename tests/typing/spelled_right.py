"""Must type-check: the same reader as misspelled_field.py with the field where the contract puts it."""

from __future__ import annotations

from evostream.schemas.codec import RecordCodec
from evostream.schemas.records import Completion


def decode_ms(data: bytes) -> float:
    completion = RecordCodec.of(Completion).decode(data)
    return completion["timings"]["decode_us"] / 1000
