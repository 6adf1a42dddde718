"""What the sink fan-out runner and a sink agree on: the records a sink is handed, the result of each call, and the
shape of a sink. The runner (this service) depends only on this; ``plugins.api.Sink`` is the base class plugin
authors subclass, and it satisfies ``SinkLike``.

The promises, which the shared contract test (``tests/plugins/contract.py``) checks for every sink:

- ``write(records)`` applies a batch. Writing a record again (same ``Record.key``) changes nothing: the runner
  delivers at least once, so a restart may hand a sink records it already wrote.
- A ``Result`` says what happened to the whole batch: ``OK`` (accepted), ``RETRYABLE`` (nothing of it is durable;
  the runner tries the same batch again after a backoff, for as long as it takes, and commits nothing meanwhile), or
  ``FAILED`` (the records in ``poison``, or every record when ``poison`` is empty, can never be written: the runner
  sends each to ``evo.dlq`` with the reason and goes on; the rest of the batch was applied).
- ``flush()`` makes everything written so far durable; the runner commits positions only after a flush that
  returned ``OK``.
- ``positions()``: a sink whose store keeps its consumed positions in the same transaction as its rows (SQLite)
  returns them (the next offset to read per partition) and the runner starts there; every other sink returns ``{}``
  and the runner's committed offsets are the positions.
- ``close()`` flushes what it can and releases everything; it is called once, also after a failure.
- A sink raises ``evostream.plugins.api.SinkError`` (or a subclass) for a misconfiguration it cannot run with, never a
  library's own exception type."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class Status(enum.Enum):
    OK = "ok"
    RETRYABLE = "retryable"
    FAILED = "failed"


@dataclass(frozen=True)
class Record:
    """One decoded record of a topic a sink reads."""

    topic: str
    partition: int
    offset: int
    schema: str
    """The Avro record name of ``value`` (e.g. ``RiskReport``)."""
    value: Mapping[str, Any]
    timestamp_us: int
    """The broker's timestamp of the record."""
    raw_key: bytes | None = None

    @property
    def key(self) -> str:
        """The record's identity for idempotent writes: where it sits in the log."""
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True)
class Result:
    status: Status
    reason: str = ""
    poison: tuple[Record, ...] = field(default=())
    """With ``FAILED``: the records that can never be written (empty: all of the batch)."""

    @staticmethod
    def ok() -> Result:
        return Result(Status.OK)

    @staticmethod
    def retry(reason: str) -> Result:
        return Result(Status.RETRYABLE, reason)

    @staticmethod
    def failed(reason: str, poison: Sequence[Record] = ()) -> Result:
        return Result(Status.FAILED, reason, tuple(poison))


Positions = Mapping[tuple[str, int], int]
"""(topic, partition) -> the next offset to read."""


@runtime_checkable
class SinkLike(Protocol):
    name: str

    @property
    def topics(self) -> tuple[str, ...]: ...

    def write(self, records: Sequence[Record]) -> Result: ...

    def flush(self) -> Result: ...

    def positions(self) -> Positions: ...

    def close(self) -> None: ...
