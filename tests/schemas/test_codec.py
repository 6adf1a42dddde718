"""The single-object codec: framing, fingerprints, errors that name the cause, decoding across versions."""

from __future__ import annotations

import random

import pytest
from fastavro.utils import generate_many

from evostream.core.errors import (
    BadMagicError,
    DecodeError,
    EncodeError,
    TruncatedRecordError,
    UnknownFingerprintError,
)
from evostream.schemas import MAGIC, RecordCodec, SchemaIndex, default_index
from evostream.schemas.samples import generation_step
from tests.conftest import DATA

ALL_NAMES = [sv.short_name for sv in default_index()]


def crc64_avro(data: bytes) -> int:
    """The Avro spec's reference CRC-64-AVRO (Rabin fingerprint), written independently of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for b in data:
        fp = (fp >> 8) ^ table[(fp ^ b) & 0xFF]
    return fp


def test_reference_crc_matches_the_spec_vector() -> None:
    # Avro's schema-tests vector: "null" -> 7195948357588979594 (signed 64-bit)
    fp = crc64_avro(b'"null"')
    assert int.from_bytes(fp.to_bytes(8, "little"), "little", signed=True) == 7195948357588979594


@pytest.mark.parametrize("name", ALL_NAMES)
def test_header_is_magic_plus_little_endian_crc64_of_canonical_form(name: str) -> None:
    from fastavro.schema import to_parsing_canonical_form

    sv = default_index().latest(name)
    expected = crc64_avro(to_parsing_canonical_form(sv.parsed).encode()).to_bytes(8, "little")
    codec = RecordCodec(name)
    record = next(iter(generate_many(sv.parsed, 1)))
    data = codec.encode(record)
    assert data[:2] == MAGIC == b"\xc3\x01"
    assert data[2:10] == expected == sv.fingerprint


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_schema_round_trips_generated_records(name: str) -> None:
    random.seed(7)
    codec = RecordCodec(name)
    for record in generate_many(codec.writer.parsed, 50):
        data = codec.encode(record)
        back = codec.decode(data)
        assert codec.encode(back) == data  # stable bytes: nothing lost or changed on the way back


def test_generation_step_decodes_equal() -> None:
    codec = RecordCodec("GenerationStep")
    rec = generation_step(3, "trace-a", layers=6, heads=8)
    assert codec.decode(codec.encode(rec)) == rec


def test_bad_magic_is_named() -> None:
    codec = RecordCodec("GenerationStep")
    data = bytearray(codec.encode(generation_step(0, "t")))
    data[0] = 0x00
    with pytest.raises(BadMagicError, match="bad magic 0001"):
        codec.decode(bytes(data))


def test_json_is_not_avro() -> None:
    with pytest.raises(BadMagicError):
        RecordCodec("GenerationStep").decode(b'{"trace_id": "x", "step": 1}')


@pytest.mark.parametrize("cut", [0, 1, 5, 9])
def test_truncated_header(cut: int) -> None:
    data = RecordCodec("Completion").encode(next(iter(generate_many(RecordCodec("Completion").writer.parsed, 1))))
    with pytest.raises(TruncatedRecordError):
        RecordCodec("Completion").decode(data[:cut])


def test_truncated_body() -> None:
    codec = RecordCodec("GenerationStep")
    data = codec.encode(generation_step(1, "trace"))
    for cut in (11, len(data) // 2, len(data) - 1):
        with pytest.raises(TruncatedRecordError, match="bytes end inside the record"):
            codec.decode(data[:cut])


def test_trailing_garbage_is_an_error() -> None:
    codec = RecordCodec("GenerationStep")
    with pytest.raises(DecodeError, match="3 bytes left after the record"):
        codec.decode(codec.encode(generation_step(1, "trace")) + b"\x00\x01\x02")


def test_unknown_fingerprint() -> None:
    codec = RecordCodec("GenerationStep")
    data = codec.encode(generation_step(1, "trace"))
    forged = data[:2] + bytes(8) + data[10:]
    with pytest.raises(UnknownFingerprintError, match="0000000000000000"):
        codec.decode(forged)


def test_record_of_another_type_is_refused() -> None:
    completion = RecordCodec("Completion")
    data = completion.encode(next(iter(generate_many(completion.writer.parsed, 1))))
    with pytest.raises(DecodeError, match="is a Completion"):
        RecordCodec("GenerationStep").decode(data)


def test_encode_error_names_the_field() -> None:
    rec = generation_step(1, "trace")
    rec["step"] = "one"
    with pytest.raises(EncodeError, match="step"):
        RecordCodec("GenerationStep").encode(rec)
    del rec["trace_id"]
    with pytest.raises(EncodeError, match="trace_id"):
        RecordCodec("GenerationStep").encode(generation_step(1, "t") | {"trace_id": None})


def test_old_records_decode_after_the_schema_gains_fields() -> None:
    old_world = SchemaIndex([SchemaIndex.from_directory(DATA / "evolving").versions("Reading")[0]])
    new_world = SchemaIndex.from_directory(DATA / "evolving")
    old_bytes = RecordCodec("Reading", old_world).encode({"sensor": "s1", "value": 21.5})

    back = RecordCodec("Reading", new_world).decode(old_bytes)
    assert back == {"sensor": "s1", "value": 21.5, "unit": "celsius", "tags": []}
    # and a reader pinned to v1 reads what v2 writes, dropping the new fields
    new_bytes = RecordCodec("Reading", new_world).encode({"sensor": "s2", "value": 1.0, "unit": "K", "tags": ["a"]})
    assert RecordCodec("Reading", new_world, reader_version=1).decode(new_bytes) == {
        "sensor": "s2",
        "value": 1.0,
    }


def test_old_process_does_not_know_new_fingerprint() -> None:
    old_world = SchemaIndex([SchemaIndex.from_directory(DATA / "evolving").versions("Reading")[0]])
    new_bytes = RecordCodec("Reading", SchemaIndex.from_directory(DATA / "evolving")).encode(
        {"sensor": "s", "value": 2.0, "unit": "K", "tags": []}
    )
    with pytest.raises(UnknownFingerprintError, match="newer evostream"):
        RecordCodec("Reading", old_world).decode(new_bytes)


def test_decode_or_skip_skips_what_is_not_a_record_of_its_type() -> None:
    codec = RecordCodec("GenerationStep")
    rec = generation_step(1, "t")
    assert codec.decode_or_skip(codec.encode(rec)) == codec.decode(codec.encode(rec))
    assert codec.decode_or_skip(b"not avro at all") is None
    assert codec.decode_or_skip(None) is None
