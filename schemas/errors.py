"""The contract's own errors: the base of every evostream error, and what reading or writing a record can raise.

They live with the contract so that it imports nothing above it; ``evostream.core.errors`` re-exports them."""

from __future__ import annotations


class EvoError(Exception):
    """Base class of every error evostream raises on purpose."""


# --- the contract -----------------------------------------------------------------------------------
class SchemaError(EvoError):
    """A schema file is missing, malformed, or breaks the compatibility rules."""


class EncodeError(EvoError):
    """A record does not fit the schema it is written with."""


class DecodeError(EvoError):
    """Bytes could not be turned back into a record."""


class BadMagicError(DecodeError):
    """The bytes do not start with the Avro single-object marker C3 01."""


class UnknownFingerprintError(DecodeError):
    """The writer schema's fingerprint is not one this process knows."""


class TruncatedRecordError(DecodeError):
    """The bytes end before the record does, or carry bytes after it."""
