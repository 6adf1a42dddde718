"""The project's exception hierarchy: driver and library errors are translated into these at boundaries.

The base class and the contract's errors live in ``evostream.schemas.errors`` (the contract imports nothing above
it) and are re-exported here, so ``from evostream.core.errors import X`` works for every X."""

from __future__ import annotations

from evostream.schemas.errors import (
    BadMagicError,
    DecodeError,
    EncodeError,
    EvoError,
    SchemaError,
    TruncatedRecordError,
    UnknownFingerprintError,
)

__all__ = [
    "ArtifactError",
    "AuthenticationError",
    "AuthorizationError",
    "BadMagicError",
    "BrokerStartError",
    "BrokerUnavailableError",
    "ConflictError",
    "ConsumeError",
    "DecodeError",
    "DeliveryError",
    "EncodeError",
    "EvoError",
    "EvolutionError",
    "GovernanceError",
    "JavaNotFoundError",
    "MavenError",
    "PolicyViolationError",
    "PortInUseError",
    "SchemaError",
    "StackError",
    "TamperError",
    "TruncatedRecordError",
    "UnauthorizedError",
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


class AuthenticationError(BrokerUnavailableError):
    """The broker refused the client's login (wrong or missing credentials)."""


# --- Kafka I/O --------------------------------------------------------------------------------------
class DeliveryError(EvoError):
    """A record was not acknowledged by the broker."""


class AuthorizationError(DeliveryError):
    """The broker's ACLs refuse the client's principal this operation (for example a write to the governance log by
    any principal but ``governance``)."""


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


# --- governance ---------------------------------------------------------------------------------------
class GovernanceError(EvoError):
    """A governance event, key or command is invalid (bad payload, unknown actor, missing key...)."""


class UnauthorizedError(GovernanceError):
    """The actor is unknown, revoked, or lacks the role the event needs."""


class ConflictError(GovernanceError):
    """Another writer appended first: the log's head is not the one this append was built on. Re-read and retry."""


class PolicyViolationError(GovernanceError):
    """The event breaks the governance policy (e.g. production without the required approvals)."""


class TamperError(GovernanceError):
    """Replay found an altered, forged, dropped, inserted or reordered event; the projection stops before it."""


class ArtifactError(GovernanceError):
    """A model artifact is missing, or its bytes do not match its registered hash: it is never served."""


class EvolutionError(EvoError):
    """An evolution step cannot be done as asked: an operator's plan does not fit the model, a family is not
    supported, a candidate cannot be built, measured or validated."""


class SinkError(EvoError):
    """A sink cannot run: unknown name, a class of the wrong type, a missing optional dependency, bad settings."""


class SinkConfigError(SinkError):
    """A sink's settings are missing or invalid (says which setting and what it expects)."""


class NotFoundError(EvoError):
    """What was asked for does not exist (an unknown model version, a trace no completion names)."""


class UnknownVersionError(NotFoundError, GovernanceError):
    """No model in the registry has this version."""


class InvalidTokenError(UnauthorizedError):
    """An HTTP API token that is malformed, forged, or of a revoked actor or key."""
