"""Snapshots of the governance projection on the compacted topic ``evo.governance.snapshots``.

A snapshot is the Registry folded up to one event of the log (its offset, sequence and hash). It is not signed, so
nothing in evostream folds onto one or decides anything from one: whoever could write to the topic could make it say
any policy, actor or production version while naming a real event of the log (an earlier ``load_projection`` did
fold the tail onto it; it was removed). Every decision replays and verifies the whole log. Snapshots stay a published
view of the verified projection for tools that want one, to be checked against the log by them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace

from evostream.consumers.governance.events import canonical_json
from evostream.consumers.governance.projection import Registry
from evostream.core.bus.admin import ensure_topics
from evostream.core.bus.producer import EventProducer
from evostream.core.bus.transactional import PartitionReader
from evostream.core.clock import now_us
from evostream.core.errors import DecodeError, GovernanceError
from evostream.schemas.catalog import GOVERNANCE, GOVERNANCE_SNAPSHOTS, topic_spec
from evostream.schemas.codec import RecordCodec

log = logging.getLogger(__name__)

SCHEMA = "GovernanceSnapshot"


@dataclass(frozen=True)
class Snapshot:
    """One snapshot record: the projection as of the event at ``offset`` of ``log_topic``."""

    log_topic: str
    offset: int
    sequence: int
    head_hash: str
    registry_json: str
    written_at_us: int

    def registry(self) -> Registry:
        return Registry.from_json(json.loads(self.registry_json))


def _ensure(bootstrap: str, topic: str, timeout_s: float) -> None:
    ensure_topics(bootstrap, [replace(topic_spec(GOVERNANCE_SNAPSHOTS), name=topic)], timeout_s)


def write_snapshot(
    bootstrap: str,
    registry: Registry,
    *,
    topic: str = GOVERNANCE_SNAPSHOTS,
    log_topic: str = GOVERNANCE,
    timeout_s: float = 30.0,
) -> Snapshot:
    """Publish ``registry`` (folded up to its ``offset``) as the latest snapshot of ``log_topic``; return it once the
    broker acknowledged it."""
    if registry.offset < 0:
        raise GovernanceError("the projection has folded no event yet: there is nothing to snapshot")
    snap = Snapshot(
        log_topic,
        registry.offset,
        registry.head_sequence,
        registry.head_hash,
        canonical_json(registry.to_json()),
        now_us(),
    )
    _ensure(bootstrap, topic, timeout_s)
    producer = EventProducer(bootstrap)
    producer.connect(topic, timeout_s)
    producer.send(topic, log_topic, RecordCodec(SCHEMA).encode(snap.__dict__))
    producer.flush(timeout_s)
    return snap


def snapshots(
    bootstrap: str, *, topic: str = GOVERNANCE_SNAPSHOTS, log_topic: str = GOVERNANCE, timeout_s: float = 30.0
) -> list[Snapshot]:
    """Every snapshot of ``log_topic`` still on ``topic``, oldest first (compaction keeps at least the latest)."""
    _ensure(bootstrap, topic, timeout_s)
    codec = RecordCodec(SCHEMA)
    reader = PartitionReader(bootstrap, topic, 0, timeout_s=timeout_s)
    try:
        raw = reader.read(0)
    finally:
        reader.close()
    out = []
    for offset, value in raw:
        try:
            rec = codec.decode(value or b"")
        except DecodeError as e:
            # a cache: a bad entry is passed over (said once), and the log is replayed instead of trusting it
            log.warning("%s offset %d is not a governance snapshot, ignored: %s", topic, offset, e)
            continue
        if rec["log_topic"] == log_topic:
            out.append(Snapshot(**rec))
    return out
