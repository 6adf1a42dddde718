"""Snapshots of the projection on the compacted topic: what is published is the verified projection, per log, and
since a snapshot is not signed nothing folds onto one (a snapshot that says what the log does not changes nothing)."""

from __future__ import annotations

from typing import Any

import evostream.consumers.governance.snapshot as snapshot_module
from evostream.consumers.governance.events import GovEvent
from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.projection import replay
from evostream.consumers.governance.snapshot import SCHEMA, snapshots, write_snapshot
from evostream.core.bus.producer import EventProducer
from evostream.schemas.catalog import GOVERNANCE_SNAPSHOTS, topic_spec
from tests.consumers.governance.test_log import ADMIN, fresh_topic, fresh_writer_id, genesis, on_head

PROPOSER = ActorKey.from_seed(b"\x02" * 32)
MODEL = "demo"


def ev(type_: str, key: ActorKey, actor: str, model: str = MODEL, **payload: Any) -> GovEvent:
    return GovEvent(type_, actor, key.key_id, payload, model, f"{type_} {payload.get('version', '')}")


def lifecycle() -> list[tuple[GovEvent, ActorKey]]:
    """A model's life: enrol a proposer, v1 registered, validated, staged, approved, production; v2 the same; then a
    rollback to v1. Each event with the key that signs it."""
    admin = ("admin", ADMIN)
    prop = ("prop", PROPOSER)

    def by(who: tuple[str, ActorKey], type_: str, model: str = MODEL, **payload: Any) -> tuple[GovEvent, ActorKey]:
        return ev(type_, who[1], who[0], model, **payload), who[1]

    out = [
        (genesis(), ADMIN),
        by(
            admin,
            "ActorEnrolled",
            "*",
            actor_id="prop",
            key_id=PROPOSER.key_id,
            public_key=PROPOSER.public_hex,
            roles=["proposer"],
        ),
    ]
    for version, parent in (("v1", None), ("v2", "v1")):
        out += [
            by(
                prop,
                "ModelRegistered",
                version=version,
                artifact_uri=f"file:///m/{version}",
                artifact_sha256="0" * 64,
                parent=parent,
                operator=None,
                operator_params={},
                metrics={"accuracy": 0.9},
            ),
            by(prop, "ValidationCompleted", version=version, passed=True, gates={"accuracy": True}),
            by(prop, "Promoted", version=version, stage="staging", alias=None),
            by(prop, "ApprovalRequested", version=version, stage="production"),
            by(admin, "ApprovalGranted", version=version, stage="production"),
            by(admin, "Promoted", version=version, stage="production", alias=None),
        ]
    out.append(by(admin, "RolledBack", version="v1", from_version="v2"))
    return out


SNAPSHOT_AFTER = 7
"""The snapshot is taken after event #7 (v1 in production); the tail holds v2's life and the rollback."""


def build_log(glog: GovernanceLog) -> list[tuple[int, GovEvent]]:
    written = []
    for event, key in lifecycle():
        head = glog.head()
        linked = on_head(event, head, key)
        written.append((glog.append(linked, head[:2]), linked))
    return written


def test_the_lifecycle_is_a_valid_log() -> None:
    events: list[tuple[int | None, GovEvent]] = []
    head = (-1, "")
    for event, key in lifecycle():
        linked = on_head(event, head, key)
        events.append((None, linked))
        head = (linked.sequence, linked.hash)
    reg, findings = replay(events)
    assert findings == []
    assert (reg.production(MODEL), reg.version(MODEL, "v2")["stage"], reg.head_sequence) == ("v1", "archived", 14)


def test_the_snapshots_topic_is_compacted_with_one_partition() -> None:
    spec = topic_spec(GOVERNANCE_SNAPSHOTS)
    assert (spec.partitions, spec.value_schema, spec.key) == (1, SCHEMA, "log_topic")
    assert spec.config() == {"cleanup.policy": "compact", "retention.ms": "-1"}


def test_a_published_snapshot_is_the_verified_projection_and_round_trips(kafka: str) -> None:
    snap_topic = fresh_topic()
    with GovernanceLog(kafka, topic=fresh_topic(), transactional_id=fresh_writer_id()) as glog:
        written = build_log(glog)
        assert len(written) == 15
        at_snapshot, _ = replay(written[: SNAPSHOT_AFTER + 1])
        snap = write_snapshot(kafka, at_snapshot, topic=snap_topic, log_topic=glog.topic)
        assert snapshots(kafka, topic=snap_topic, log_topic=glog.topic) == [snap]
    assert (snap.offset, snap.sequence, snap.head_hash) == (
        written[SNAPSHOT_AFTER][0],
        SNAPSHOT_AFTER,
        written[SNAPSHOT_AFTER][1].hash,
    )
    assert snap.registry() == at_snapshot


def test_nothing_folds_onto_an_unsigned_snapshot(kafka: str) -> None:
    # a snapshot that names a real event of the log but says what the log does not (a policy mark, no actors)
    snap_topic = fresh_topic()
    with GovernanceLog(kafka, topic=fresh_topic(), transactional_id=fresh_writer_id()) as glog:
        written = build_log(glog)
        marked, _ = replay(written[: SNAPSHOT_AFTER + 1])
        marked.policy["production_approvals"] = 3
        marked.actors = {}
        write_snapshot(kafka, marked, topic=snap_topic, log_topic=glog.topic)
        # no reader of the projection takes it: the old load_projection folded the tail onto it, and the marked
        # policy showed through (v2's one-approver promotion refused as a "policy" finding)
        assert not hasattr(snapshot_module, "load_projection")
        assert not hasattr(snapshot_module, "latest_snapshot")
        full, findings = replay(glog.items())
    assert findings == [] and full.policy["production_approvals"] == 1 and "prop" in full.actors


def test_snapshots_are_per_log_and_a_junk_record_is_passed_over(kafka: str) -> None:
    snap_topic = fresh_topic()
    assert snapshots(kafka, topic=snap_topic, log_topic="evo.nothing") == []
    with GovernanceLog(kafka, topic=fresh_topic(), transactional_id=fresh_writer_id()) as glog:
        written = build_log(glog)
        first, _ = replay(written[:3])
        second, _ = replay(written[:9])
        write_snapshot(kafka, first, topic=snap_topic, log_topic=glog.topic)
        write_snapshot(kafka, second, topic=snap_topic, log_topic="evo.other-log")
        junk = EventProducer(kafka)
        junk.send(snap_topic, glog.topic, b"not avro")
        junk.flush()
        write_snapshot(kafka, second, topic=snap_topic, log_topic=glog.topic)
        got = snapshots(kafka, topic=snap_topic, log_topic=glog.topic)
    assert [(s.offset, s.registry()) for s in got] == [(written[2][0], first), (written[8][0], second)]
    assert [s.log_topic for s in snapshots(kafka, topic=snap_topic, log_topic="evo.other-log")] == ["evo.other-log"]
