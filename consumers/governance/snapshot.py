"""Snapshots of the governance projection on the compacted topic ``evo.governance.snapshots``.

A snapshot is the Registry folded up to one event of the log (its offset, sequence and hash), so a reader can fold only
the tail after it instead of the whole log. It is a cache, never the truth: ``load_projection`` uses a snapshot only
if the log still holds, at the snapshot's offset, the event with the snapshot's sequence and hash; otherwise it
replays the whole log. Audit always replays from the start.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace

from evostream.consumers.governance.events import GovEvent, canonical_json
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.projection import Finding, Registry, replay
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


def latest_snapshot(
    bootstrap: str, *, topic: str = GOVERNANCE_SNAPSHOTS, log_topic: str = GOVERNANCE, timeout_s: float = 30.0
) -> tuple[int, Registry] | None:
    """(offset, projection) of the latest snapshot of ``log_topic``, or None if there is none."""
    found = snapshots(bootstrap, topic=topic, log_topic=log_topic, timeout_s=timeout_s)
    if not found:
        return None
    return found[-1].offset, found[-1].registry()


def load_projection(
    glog: GovernanceLog, *, topic: str = GOVERNANCE_SNAPSHOTS, verify: bool = True
) -> tuple[Registry, list[Finding], Snapshot | None]:
    """The projection of the whole log: the latest snapshot plus a replay of the tail after it, or a full replay when
    there is no snapshot or the log no longer holds the snapshot's event at its offset. Returns the projection, the
    replay's findings, and the snapshot used (None: full replay)."""
    found = snapshots(glog.bootstrap, topic=topic, log_topic=glog.topic, timeout_s=glog.timeout_s)
    snap = found[-1] if found else None
    if snap is not None:
        tail = glog.items(snap.offset)
        if _anchored(snap, tail):
            registry, findings = replay(tail[1:], verify=verify, start=snap.registry())
            return registry, findings, snap
        log.warning(
            "the snapshot of %s at offset %d does not match the log there: replaying the whole log",
            glog.topic,
            snap.offset,
        )
    registry, findings = replay(glog.items(0), verify=verify)
    return registry, findings, None


def _anchored(snap: Snapshot, items: list[tuple[int, GovEvent | Finding]]) -> bool:
    """Whether the log holds, at the snapshot's offset, the event the snapshot was folded up to."""
    if not items or items[0][0] != snap.offset:
        return False
    ev = items[0][1]
    return isinstance(ev, GovEvent) and ev.sequence == snap.sequence and ev.hash == snap.head_hash
