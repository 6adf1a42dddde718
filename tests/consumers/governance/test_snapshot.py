"""Snapshots of the projection on the compacted topic: snapshot + tail replay equals the full replay, and a snapshot
the log does not hold at its offset is not trusted."""

from __future__ import annotations

from typing import Any

from evostream.consumers.governance.events import GovEvent
from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.projection import Registry, replay
from evostream.consumers.governance.snapshot import SCHEMA, latest_snapshot, load_projection, snapshots, write_snapshot
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


def test_snapshot_plus_tail_replay_equals_full_replay(kafka: str) -> None:
    snap_topic = fresh_topic()
    with GovernanceLog(kafka, topic=fresh_topic(), transactional_id=fresh_writer_id()) as glog:
        written = build_log(glog)
        assert len(written) == 15
        at_snapshot, _ = replay(written[: SNAPSHOT_AFTER + 1])
        assert at_snapshot.offset == written[SNAPSHOT_AFTER][0]
        snap = write_snapshot(kafka, at_snapshot, topic=snap_topic, log_topic=glog.topic)
        assert latest_snapshot(kafka, topic=snap_topic, log_topic=glog.topic) == (snap.offset, at_snapshot)

        full, full_findings = replay(glog.read())
        loaded, findings, used = load_projection(glog, topic=snap_topic)
    assert full_findings == [] and findings == []
    assert used == snap
    assert loaded == full  # every actor, policy, model, version, stage and approval, and the head
    assert loaded.to_json() == full.to_json()
    assert (loaded.head_sequence, loaded.offset, loaded.production(MODEL)) == (14, written[-1][0], "v1")


def test_the_snapshot_is_what_the_tail_is_folded_onto(kafka: str) -> None:
    # proof that load_projection folds onto the snapshot rather than replaying everything: a snapshot that says
    # something the log does not (a policy mark) shows through
    snap_topic = fresh_topic()
    with GovernanceLog(kafka, topic=fresh_topic(), transactional_id=fresh_writer_id()) as glog:
        written = build_log(glog)
        marked, _ = replay(written[: SNAPSHOT_AFTER + 1])
        marked.policy["production_approvals"] = 3
        write_snapshot(kafka, marked, topic=snap_topic, log_topic=glog.topic)
        loaded, findings, used = load_projection(glog, topic=snap_topic)
    assert used is not None and used.offset == written[SNAPSHOT_AFTER][0]
    assert loaded.policy["production_approvals"] == 3
    # v2's production promotion had one approver: checked against the marked policy it is refused
    assert [(f.sequence, f.kind) for f in findings] == [(13, "policy")]


def test_a_snapshot_the_log_does_not_hold_is_not_trusted(kafka: str) -> None:
    snap_topic = fresh_topic()
    with GovernanceLog(kafka, topic=fresh_topic(), transactional_id=fresh_writer_id()) as glog:
        written = build_log(glog)
        good, _ = replay(written[: SNAPSHOT_AFTER + 1])
        write_snapshot(kafka, good, topic=snap_topic, log_topic=glog.topic)
        # a later snapshot whose head hash is not the log's event at its offset (another log's, or tampered)
        alien = Registry.from_json({**good.to_json(), "head_hash": "ee" * 32, "actors": {}})
        alien_snap = write_snapshot(kafka, alien, topic=snap_topic, log_topic=glog.topic)
        # and a record on the snapshots topic that is no snapshot at all
        junk = EventProducer(kafka)
        junk.send(snap_topic, glog.topic, b"not avro")
        junk.flush()
        assert snapshots(kafka, topic=snap_topic, log_topic=glog.topic)[-1] == alien_snap
        full, _ = replay(glog.read())
        loaded, findings, used = load_projection(glog, topic=snap_topic)
    assert used is None and findings == [] and loaded == full


def test_latest_snapshot_is_per_log_and_the_newest(kafka: str) -> None:
    snap_topic = fresh_topic()
    assert latest_snapshot(kafka, topic=snap_topic, log_topic="evo.nothing") is None
    with GovernanceLog(kafka, topic=fresh_topic(), transactional_id=fresh_writer_id()) as glog:
        written = build_log(glog)
        first, _ = replay(written[:3])
        second, _ = replay(written[:9])
        write_snapshot(kafka, first, topic=snap_topic, log_topic=glog.topic)
        write_snapshot(kafka, second, topic=snap_topic, log_topic="evo.other-log")
        write_snapshot(kafka, second, topic=snap_topic, log_topic=glog.topic)
        got = latest_snapshot(kafka, topic=snap_topic, log_topic=glog.topic)
    assert got == (written[8][0], second)
    assert [s.log_topic for s in snapshots(kafka, topic=snap_topic, log_topic="evo.other-log")] == ["evo.other-log"]
