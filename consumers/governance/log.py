"""The governance log on Kafka: read its events, find its head, and append one event at a time from one writer.

Single writer: every ``GovernanceLog`` appends through a transactional producer with the same fixed
``transactional.id``. Its ``init`` fences every other instance (their open transaction is aborted, and they can never
commit again); only then does ``append`` re-read the head, read_committed, and compare it with the head the event was
built on. A different head is a ConflictError and nothing is written; the same head is produced and committed in the
transaction. If another writer registers in between, ours is fenced and its commit fails (ConflictError, nothing
visible); if our commit completed first, the other writer's head read sees our event. So each sequence has exactly one
winner and the chain never forks.

A writer keeps its producer between appends: while no other instance has registered since, nothing but this writer
can have committed, so the head check stays sound; a writer that was fenced meanwhile learns it at commit
(ConflictError) and registers again on its next append. An append returns only once its event is visible to
read_committed readers: the coordinator answers a commit before the commit marker is written, and a registration
waits for that marker, but a writer's own next head read does not.

Readers read_committed only: records of an aborted (fenced) transaction stay in the partition but are never events.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from evostream.consumers.governance.events import GovEvent, chain_hash
from evostream.consumers.governance.projection import Finding
from evostream.core.bus.admin import ensure_topics
from evostream.core.bus.transactional import PartitionReader, TransactionalProducer
from evostream.core.errors import ConflictError, DecodeError, EvoError, GovernanceError, TamperError
from evostream.schemas.catalog import GOVERNANCE, topic_spec
from evostream.schemas.codec import RecordCodec

log = logging.getLogger(__name__)

WRITER_ID = "evostream-governance-writer"
"""The one transactional id of every governance writer: registering with it fences all the others."""

EMPTY_HEAD = (-1, "", -1)
"""head() of an empty log: (sequence, hash, offset)."""

_HEAD_WINDOW = 8
"""How many offsets back from the end head() looks first (a committed event is followed by its commit marker, and
fenced writers leave aborted records); it widens until it finds an event."""


@dataclass(frozen=True)
class Undecodable:
    """A record of the governance topic that is not a governance event (corrupt bytes, another schema, no value)."""

    offset: int
    error: str


class GovernanceLog:
    """Reads and appends to the governance topic (``evo.governance`` unless ``topic`` says otherwise). Not thread-safe:
    one instance per thread or process."""

    def __init__(
        self,
        bootstrap: str,
        *,
        transactional_id: str = WRITER_ID,
        topic: str = GOVERNANCE,
        timeout_s: float = 30.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.transactional_id = transactional_id
        self.topic = topic
        self.timeout_s = timeout_s
        self.codec = RecordCodec("GovernanceEvent")
        self._reader: PartitionReader | None = None
        self._writer: TransactionalProducer | None = None
        self.registrations = 0
        """How many times this instance registered its writer (fencing the others): once, plus once per fencing."""

    # --- reading ---------------------------------------------------------------------------------------
    def _partition(self) -> PartitionReader:
        if self._reader is None:
            ensure_topics(self.bootstrap, [replace(topic_spec(GOVERNANCE), name=self.topic)], self.timeout_s)
            self._reader = PartitionReader(self.bootstrap, self.topic, 0, timeout_s=self.timeout_s)
        return self._reader

    def _decode(self, offset: int, value: bytes | None) -> GovEvent | Undecodable:
        if value is None:
            return Undecodable(offset, "the record has no value")
        try:
            return GovEvent.from_record(self.codec.decode(value))
        except (DecodeError, GovernanceError) as e:
            return Undecodable(offset, str(e))

    def records(self, from_offset: int = 0, until: int | None = None) -> list[tuple[int, GovEvent | Undecodable]]:
        """Every committed record with ``from_offset <= offset <= until`` (``until`` None: to the end as of now; like
        replay's ``until_offset``, the bound is included), in order, decoded; a record that is not a governance event
        comes as ``Undecodable``, never skipped."""
        end = None if until is None else until + 1
        return [(off, self._decode(off, value)) for off, value in self._partition().read(from_offset, end)]

    def items(self, from_offset: int = 0, until: int | None = None) -> list[tuple[int, GovEvent | Finding]]:
        """``records`` as ``projection.replay`` takes them: an undecodable record is an "undecodable" Finding in its
        place, so replay reports it and stops the projection there (audit and snapshots read this)."""
        return [
            (
                off,
                Finding(off, -1, "undecodable", f"not a governance event: {rec.error}")
                if isinstance(rec, Undecodable)
                else rec,
            )
            for off, rec in self.records(from_offset, until)
        ]

    def read(self, from_offset: int = 0, until: int | None = None) -> list[tuple[int, GovEvent]]:
        """The events of ``records``; an undecodable record raises TamperError naming its offset (audit reads
        ``records`` to report it as a finding instead)."""
        out: list[tuple[int, GovEvent]] = []
        for off, rec in self.records(from_offset, until):
            if isinstance(rec, Undecodable):
                raise TamperError(
                    f"{self.topic} offset {off} is not a governance event ({rec.error}); "
                    "run `evostream audit` to see where the log breaks"
                )
            out.append((off, rec))
        return out

    def head(self, skip: frozenset[int] = frozenset()) -> tuple[int, str, int]:
        """(sequence, hash, offset) of the last committed event, passing over the offsets in ``skip`` (those an
        OffsetVoided event being appended names); ``EMPTY_HEAD`` for an empty log. TamperError if the last record is
        not an event: nothing may be built on a log whose end cannot be read."""
        part = self._partition()
        low, high = part.bounds()
        window = _HEAD_WINDOW
        while True:
            start = max(low, high - window)
            found = [(off, value) for off, value in part.read(start, high, bounds=(low, high)) if off not in skip]
            if found:
                off, value = found[-1]
                rec = self._decode(off, value)
                if isinstance(rec, Undecodable):
                    raise TamperError(
                        f"the last record of {self.topic} (offset {off}) is not a governance event ({rec.error}); "
                        "nothing can be appended after it: run `evostream audit`"
                    )
                return rec.sequence, rec.hash, off
            if start <= low:
                return EMPTY_HEAD
            window *= 8

    # --- writing ---------------------------------------------------------------------------------------
    def _registered(self) -> TransactionalProducer:
        if self._writer is not None and self._writer.fenced:  # librdkafka said so already: do not wait for a commit
            self._drop_writer()
        if self._writer is None:
            self._partition()  # the topic exists before the first transaction names it
            writer = TransactionalProducer(self.bootstrap, self.transactional_id, timeout_s=self.timeout_s)
            try:
                writer.init()
            except EvoError:
                writer.close()
                raise
            self._writer = writer
            self.registrations += 1
        return self._writer

    def _drop_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def append(self, ev: GovEvent, expected_head: tuple[int, str], skip: frozenset[int] = frozenset()) -> int:
        """Append ``ev`` (linked on ``expected_head`` = (sequence, hash) and signed) if the log's head is still
        ``expected_head``; return its offset. ConflictError, with nothing written, when another writer appended first
        or took over meanwhile: re-read the head, rebuild the event on it, and try again. ``skip``: offsets the head
        is read past (the records an OffsetVoided event voids: they are no events of the chain)."""
        _check_linked(ev, expected_head)
        writer = self._registered()
        seq, hash_, off = self.head(skip)
        if (seq, hash_) != tuple(expected_head):
            raise ConflictError(
                f"{ev.type} was built on head #{expected_head[0]} ({expected_head[1][:12] or 'empty log'}), but the "
                f"log's head is now #{seq} ({hash_[:12] or 'empty log'}, offset {off}): another writer appended first. "
                "Nothing was written; re-read the log and rebuild the event on its new head"
            )
        try:
            writer.begin()
            writer.produce(self.topic, ev.model_name, self.codec.encode(ev.to_record()))
            delivered = writer.commit()
        except EvoError:
            # fenced or failed: the producer cannot be trusted with another transaction; the next append registers
            # again (fencing whoever took over)
            self._drop_writer()
            raise
        offset = delivered[0][2]
        self._await_visible(offset)
        return offset

    def _await_visible(self, offset: int) -> None:
        """Wait until read_committed readers see the record at ``offset``. The coordinator answers a commit once it
        has decided it, and writes the commit marker that makes the record visible a moment later: without this wait,
        this writer's next head read (which, unlike another writer's, is not preceded by a registration that waits
        for that marker) could miss its own last event and link the next one on the one before."""
        part = self._partition()
        deadline = time.monotonic() + self.timeout_s
        while part.bounds()[1] <= offset:
            if time.monotonic() > deadline:
                # committed, but not visible yet: registering again before the next append waits for it
                log.warning(
                    "%s offset %d is committed but not yet visible after %.0f s", self.topic, offset, self.timeout_s
                )
                self._drop_writer()
                return
            time.sleep(0.002)

    def close(self) -> None:
        self._drop_writer()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> GovernanceLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_linked(ev: GovEvent, expected_head: tuple[int, str]) -> None:
    """The event must sit right after ``expected_head``, hash its content, and carry a signature."""
    seq, hash_ = expected_head
    if ev.sequence != seq + 1 or ev.prev_hash != hash_:
        raise GovernanceError(
            f"{ev.type} is linked as #{ev.sequence} after {ev.prev_hash[:12] or 'nothing'}, not after head #{seq} "
            f"({hash_[:12] or 'empty log'}): link it with GovEvent.linked({seq + 1}, head hash, ...)"
        )
    if not ev.hash or chain_hash(ev.prev_hash, ev) != ev.hash:
        raise GovernanceError(f"{ev.type} #{ev.sequence}: its hash does not match its content; link it again")
    if not ev.signature:
        raise GovernanceError(f"{ev.type} #{ev.sequence} is not signed: sign it (keys.sign_event) before appending")
