"""Signed checkpoints outside the topic: a cut or rewritten tail, which the hash chain alone cannot show, is found."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from evostream.consumers.governance.checkpoint import Checkpoint, read_checkpoints, verify_checkpoints, write_checkpoint
from evostream.consumers.governance.events import GovEvent
from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.projection import Finding, replay
from evostream.core.bus.admin import cluster_metadata, delete_topics
from evostream.core.errors import GovernanceError
from tests.consumers.governance.test_log import (
    ADMIN,
    append_all,
    fresh_topic,
    fresh_writer_id,
    genesis,
    on_head,
    policy,
)

OUTSIDER = ActorKey.from_seed(b"\x07" * 32)


def chain(n: int, first_note: str = "p") -> list[tuple[int | None, GovEvent]]:
    """(offset, event) of a valid n-event log built in memory: genesis, then admin policy changes; offset = 2 x seq
    (each event followed by its transaction marker, as on the broker)."""
    events = [on_head(genesis(), (-1, ""))]
    for i in range(1, n):
        events.append(on_head(policy(f"{first_note}{i}"), (events[-1].sequence, events[-1].hash)))
    return [(2 * ev.sequence, ev) for ev in events]


def head_of(events: list[tuple[int | None, GovEvent]]) -> tuple[int, str, int]:
    offset, ev = events[-1]
    assert offset is not None
    return ev.sequence, ev.hash, offset


def test_a_checkpoint_the_log_still_reaches_gives_no_finding(tmp_path: Path) -> None:
    events = chain(6)
    path = tmp_path / "checkpoints.jsonl"
    cp1 = write_checkpoint(path, head_of(events[:3]), ADMIN, at_us=1)
    cp2 = write_checkpoint(path, head_of(events), ADMIN, at_us=2)
    assert read_checkpoints(path) == ([(1, cp1), (2, cp2)], [])
    assert (cp2.sequence, cp2.head_hash, cp2.offset, cp2.key_id) == (5, events[5][1].hash, 10, ADMIN.key_id)
    assert verify_checkpoints(path, events) == []
    assert verify_checkpoints(tmp_path / "none.jsonl", events) == []  # no file: nothing to hold the log to


def test_a_cut_tail_is_truncated_though_the_chain_alone_is_fine(tmp_path: Path) -> None:
    events = chain(6)
    path = tmp_path / "checkpoints.jsonl"
    write_checkpoint(path, head_of(events[:3]), ADMIN)
    write_checkpoint(path, head_of(events), ADMIN)
    cut = events[:4]
    assert replay(cut)[1] == []  # a prefix of a chain is a valid chain: only the checkpoint can tell
    findings = verify_checkpoints(path, cut)
    assert [(f.offset, f.sequence, f.kind) for f in findings] == [(10, 5, "truncated")]
    assert "the log ends at #3, before this checkpoint" in findings[0].detail


def test_a_tail_cut_and_written_again_differs_at_the_checkpoint(tmp_path: Path) -> None:
    events = chain(6)
    path = tmp_path / "checkpoints.jsonl"
    write_checkpoint(path, head_of(events), ADMIN)
    rewritten = events[:3]
    for i in range(3, 7):  # as long as before and longer, but other events from #3 on
        prev = rewritten[-1][1]
        rewritten.append((2 * i, on_head(policy(f"rewritten {i}"), (prev.sequence, prev.hash))))
    assert replay(rewritten)[1] == []
    findings = verify_checkpoints(path, rewritten)
    assert [(f.offset, f.sequence, f.kind) for f in findings] == [(10, 5, "truncated")]
    assert f"event #5 now has hash {rewritten[5][1].hash[:16]}" in findings[0].detail


def test_an_edited_checkpoint_is_forged_and_proves_nothing(tmp_path: Path) -> None:
    events = chain(4)
    path = tmp_path / "checkpoints.jsonl"
    write_checkpoint(path, head_of(events), ADMIN)
    d = json.loads(path.read_text())
    d["sequence"] = 40  # someone claims the log went further than it did
    path.write_text(json.dumps(d) + "\n")
    findings = verify_checkpoints(path, events)
    assert [(f.offset, f.sequence, f.kind) for f in findings] == [(6, 40, "forged")]


def test_a_checkpoint_of_a_key_the_log_does_not_enroll(tmp_path: Path) -> None:
    events = chain(4)
    path = tmp_path / "checkpoints.jsonl"
    write_checkpoint(path, head_of(events), OUTSIDER)
    findings = verify_checkpoints(path, events)
    assert [(f.sequence, f.kind) for f in findings] == [(3, "unknown_actor")]
    # a key given as trusted is checked like an enrolled one
    assert verify_checkpoints(path, events, keys={OUTSIDER.key_id: OUTSIDER.public_hex}) == []
    # still compared with the log: an unverifiable checkpoint beyond the head is reported, saying so
    findings = verify_checkpoints(path, events[:2])
    assert [(f.sequence, f.kind) for f in findings] == [(3, "truncated")]
    assert "could not be checked" in findings[0].detail


def test_a_line_that_is_not_a_checkpoint_is_a_finding(tmp_path: Path) -> None:
    events = chain(3)
    path = tmp_path / "checkpoints.jsonl"
    write_checkpoint(path, head_of(events), ADMIN)
    with path.open("a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"sequence": "2"}) + "\n")
    good, bad = read_checkpoints(path)
    assert [n for n, _ in good] == [1]
    assert [(f.offset, f.sequence, f.kind) for f in bad] == [(None, -1, "undecodable"), (None, -1, "undecodable")]
    assert f"{path} line 2 is not a checkpoint" in bad[0].detail
    assert "'sequence' must be int" in bad[1].detail
    assert verify_checkpoints(path, events) == bad


def test_an_empty_log_has_no_head_to_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(GovernanceError, match="empty"):
        write_checkpoint(tmp_path / "c.jsonl", (-1, "", -1), ADMIN)
    assert not (tmp_path / "c.jsonl").exists()


def test_checkpoint_signature_covers_every_field() -> None:
    cp = Checkpoint(3, "ab" * 32, 6, 1, ADMIN.key_id)
    digests = {cp.digest()}
    for change in (
        {"sequence": 4},
        {"head_hash": "cd" * 32},
        {"offset": 7},
        {"written_at_us": 2},
        {"key_id": OUTSIDER.key_id},
    ):
        digests.add(Checkpoint(**{**cp.__dict__, **change}).digest())
    assert len(digests) == 6
    assert Checkpoint(**{**cp.__dict__, "signature": "00"}).digest() == cp.digest()


def test_a_topic_cut_on_the_broker_is_found(kafka: str, tmp_path: Path) -> None:
    topic, writer_id = fresh_topic(), fresh_writer_id()
    path = tmp_path / "checkpoints.jsonl"
    with GovernanceLog(kafka, topic=topic, transactional_id=writer_id) as glog:
        written = append_all(glog, [genesis()] + [policy(f"p{i}") for i in range(1, 6)])
        write_checkpoint(path, glog.head(), ADMIN)
        assert verify_checkpoints(path, glog.read()) == []
    # someone with admin rights on the cluster deletes the topic and writes back its first four events
    delete_topics(kafka, [topic])
    deadline = time.monotonic() + 30
    while topic in cluster_metadata(kafka, 10).topics and time.monotonic() < deadline:
        time.sleep(0.1)
    with GovernanceLog(kafka, topic=topic, transactional_id=writer_id) as glog:
        for _, ev in written[:4]:
            head = glog.head()
            glog.append(ev, head[:2])
        cut = glog.read()
    assert [ev for _, ev in cut] == [ev for _, ev in written[:4]]
    assert replay(cut)[1] == []
    findings = verify_checkpoints(path, cut)
    assert findings == [
        Finding(
            written[5][0],
            5,
            "truncated",
            f"checkpoint at {path}:1 (#5, offset {written[5][0]}, key {ADMIN.key_id}): the log ends at #3, before "
            "this checkpoint: events were cut",
        )
    ]
