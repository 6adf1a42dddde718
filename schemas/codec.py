"""Avro single-object encoding: ``C3 01`` + 8-byte CRC-64-AVRO fingerprint (little-endian) + schemaless body.

The writer schema is found by fingerprint, so a record written with an older version of a schema keeps
decoding (resolved into the newest version) after the schema gains fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from io import BytesIO
from typing import Any, Generic, cast

from fastavro import schemaless_reader, schemaless_writer
from fastavro.validation import validate
from typing_extensions import TypeVar

from evostream.schemas.errors import (
    BadMagicError,
    DecodeError,
    EncodeError,
    TruncatedRecordError,
)
from evostream.schemas.fingerprints import SchemaIndex, SchemaVersion, default_index

MAGIC = b"\xc3\x01"
HEADER_LEN = len(MAGIC) + 8

Record = dict[str, Any]
R = TypeVar("R", default=Record)
"""What ``decode`` returns: a TypedDict of ``evostream.schemas.records`` for a codec made with ``RecordCodec.of``."""
T = TypeVar("T")


def split_header(data: bytes) -> tuple[bytes, memoryview]:
    """Return (fingerprint, body) of a single-object encoded value, or raise a DecodeError naming the cause."""
    if len(data) < HEADER_LEN:
        if len(data) >= 2 and data[:2] != MAGIC:
            raise BadMagicError(f"bad magic {bytes(data[:2]).hex()} (expected c301): not an Avro single-object record")
        raise TruncatedRecordError(f"{len(data)} bytes is shorter than the {HEADER_LEN}-byte single-object header")
    if data[:2] != MAGIC:
        raise BadMagicError(f"bad magic {bytes(data[:2]).hex()} (expected c301): not an Avro single-object record")
    view = memoryview(data)
    return bytes(view[2:HEADER_LEN]), view[HEADER_LEN:]


class RecordCodec(Generic[R]):
    """Encodes and decodes one record type; the writer is its newest schema, the reader too unless pinned.

    ``RecordCodec.of(Completion)`` (a TypedDict of ``evostream.schemas.records``) decodes typed records, so mypy
    refuses a misspelled field; ``RecordCodec("Completion")`` decodes plain dicts."""

    @classmethod
    def of(cls, record: type[T], index: SchemaIndex | None = None) -> RecordCodec[T]:
        """The codec of the record ``record`` types (its class name is the schema's record name)."""
        return RecordCodec[T](record.__name__, index)

    def __init__(self, name: str, index: SchemaIndex | None = None, reader_version: int | None = None):
        self.schemas = index or default_index()
        versions = self.schemas.versions(name)
        self.writer: SchemaVersion = versions[-1]
        self.reader: SchemaVersion = versions[-1] if reader_version is None else versions[reader_version - 1]
        self._header = MAGIC + self.writer.fingerprint

    @property
    def name(self) -> str:
        return self.reader.name

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Serialize ``record`` with the writer schema; raise EncodeError saying which field is wrong."""
        buf = BytesIO()
        buf.write(self._header)
        try:
            schemaless_writer(buf, self.writer.parsed, record)
        except Exception as e:  # fastavro raises ValueError, TypeError, KeyError, AttributeError...
            raise EncodeError(f"{self.writer.short_name}: {self._explain(record, e)}") from e
        return buf.getvalue()

    def decode_or_skip(self, data: bytes | None) -> R | None:
        """The record, or None for bytes that are not one: for readers that search a shared topic for their own
        records, where a malformed one is someone else's (the processors dead-letter it with the reason)."""
        try:
            return self.decode(data or b"")
        except DecodeError:
            return None

    def decode(self, data: bytes) -> R:
        """Parse single-object bytes written with any known version of this record."""
        fp, body = split_header(data)
        if fp == self.reader.fingerprint:
            writer = self.reader
        else:
            writer = self.schemas.by_fingerprint(fp)
            if writer.name != self.reader.name:
                raise DecodeError(
                    f"record is a {writer.short_name} (v{writer.version}), expected {self.reader.short_name}"
                )
        buf = BytesIO(body)
        try:
            if writer is self.reader:
                record = schemaless_reader(buf, writer.parsed, None)
            else:
                record = schemaless_reader(buf, writer.parsed, self.reader.parsed)
        except (EOFError, StopIteration, IndexError) as e:  # fastavro's ways of running out of input
            raise TruncatedRecordError(
                f"{writer.short_name} v{writer.version}: bytes end inside the record ({len(body)} body bytes): "
                "truncated, or a corrupt length prefix"
            ) from e
        except Exception as e:
            raise DecodeError(f"{writer.short_name} v{writer.version}: corrupt body: {type(e).__name__}: {e}") from e
        left = len(body) - buf.tell()
        if left:
            raise DecodeError(
                f"{writer.short_name} v{writer.version}: {left} bytes left after the record: corrupt bytes"
            )
        if not isinstance(record, dict):
            raise DecodeError(f"{writer.short_name}: body did not decode to a record")
        return cast(R, record)  # the reader schema's record: the shape evostream.schemas.records derives from it

    def _explain(self, record: Mapping[str, Any], error: Exception) -> str:
        try:
            validate(record, self.writer.parsed, raise_errors=True)
        except Exception as detail:  # ValidationError carries the field path
            return str(detail)
        return f"{type(error).__name__}: {error}"
