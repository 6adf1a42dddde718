"""The project's exception hierarchy: driver and library errors are translated into these at boundaries.

The base class and the contract's errors live in ``schemas.errors`` (the contract imports nothing above it) and are
re-exported here, so ``from evostream.errors import X`` works for every X."""

from __future__ import annotations

from schemas.errors import (
    BadMagicError,
    DecodeError,
    EncodeError,
    EvoError,
    SchemaError,
    TruncatedRecordError,
    UnknownFingerprintError,
)

__all__ = [
    "BadMagicError",
    "BrokerStartError",
    "BrokerUnavailableError",
    "ConsumeError",
    "DecodeError",
    "DeliveryError",
    "EncodeError",
    "EvoError",
    "JavaNotFoundError",
    "MavenError",
    "PortInUseError",
    "SchemaError",
    "StackError",
    "TruncatedRecordError",
    "UnknownFingerprintError",
]


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


# --- the stream processors --------------------------------------------------------------------------
class PolicyError(EvoError):
    """A risk or drift policy (file or value) is malformed, or does not fit the windows it is used with."""


class CalibrationError(EvoError):
    """A reference run cannot calibrate a risk policy: too few steps, or non-finite values where numbers belong."""


class FoldError(EvoError):
    """An input does not fit what a processor folds it into (a neuron-count snapshot of another shape, a window too
    small to compare)."""
