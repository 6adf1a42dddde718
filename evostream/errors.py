"""The project's exception hierarchy: driver and library errors are translated into these at boundaries."""

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


# --- the local stack --------------------------------------------------------------------------------
class StackError(EvoError):
    """The local Kafka stack could not be resolved, started, reached or stopped."""


class JavaNotFoundError(StackError):
    """No Java runtime (17+) is on PATH."""


class MavenError(StackError):
    """Maven could not resolve the Kafka jars."""


class PortInUseError(StackError):
    """A port the broker needs is held by another process."""


class BrokerStartError(StackError):
    """The broker process exited or did not become ready before its deadline."""


class BrokerUnavailableError(StackError):
    """No broker answers at the configured bootstrap address."""


# --- Kafka I/O --------------------------------------------------------------------------------------
class DeliveryError(EvoError):
    """A record was not acknowledged by the broker."""


class ConsumeError(EvoError):
    """The consumer hit an error that is not a normal end of partition."""
