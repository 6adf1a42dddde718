"""The governance log on the real broker: append and read back, conflicts on a stale head, one winner per sequence
between two real writer processes, and a fenced (zombie) writer that can never commit."""

from __future__ import annotations

import json
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from evostream.consumers.governance.events import ALL_MODELS, GovEvent, chain_hash
from evostream.consumers.governance.keys import ActorKey, sign_event, verify_signature
from evostream.consumers.governance.log import EMPTY_HEAD, GovernanceLog, Undecodable
from evostream.consumers.governance.projection import replay
from evostream.core.bus.producer import EventProducer
from evostream.core.bus.transactional import TRANSACTION_TIMEOUT_MS, PartitionReader
from evostream.core.clock import now_us
from evostream.core.errors import ConflictError, GovernanceError, TamperError

ROOT = Path(__file__).resolve().parents[3]
ADMIN = ActorKey.from_seed(bytes(range(32)))


# --- helpers shared with test_checkpoint and test_snapshot ---------------------------------------------
def genesis(key: ActorKey = ADMIN, actor: str = "admin") -> GovEvent:
    """Event 0: the first admin enrolls itself."""
    payload = {"actor_id": actor, "key_id": key.key_id, "public_key": key.public_hex, "roles": ["admin"]}
    return GovEvent("ActorEnrolled", actor, key.key_id, payload, ALL_MODELS, "bootstrap")


def policy(note: str, key: ActorKey = ADMIN, actor: str = "admin", approvals: int = 1) -> GovEvent:
    """An admin's PolicyChanged; ``note`` goes into the reason, so each event of a test is told apart."""
    rules = {"production_approvals": approvals, "auto_promote_staging": True, "auto_promote_production": False}
    return GovEvent("PolicyChanged", actor, key.key_id, {"policy": rules}, ALL_MODELS, note)


def on_head(ev: GovEvent, head: tuple[int, str] | tuple[int, str, int], key: ActorKey = ADMIN) -> GovEvent:
    """``ev`` linked after ``head`` and signed."""
    return sign_event(ev.linked(head[0] + 1, head[1], now_us()), key)


def append_all(glog: GovernanceLog, events: list[GovEvent], key: ActorKey = ADMIN) -> list[tuple[int, GovEvent]]:
    """Append each event on the log's current head; return (offset, event as appended)."""
    out = []
    for ev in events:
        head = glog.head()
        linked = on_head(ev, head, key)
        out.append((glog.append(linked, head[:2]), linked))
    return out


def fresh_topic() -> str:
    return f"test.governance.{uuid.uuid4().hex[:10]}"


def fresh_writer_id() -> str:
    return f"test-governance-writer-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def glog(kafka: str) -> Iterator[GovernanceLog]:
    with GovernanceLog(kafka, topic=fresh_topic(), transactional_id=fresh_writer_id()) as g:
        yield g


def assert_one_chain(events: list[tuple[int, GovEvent]]) -> None:
    """Sequences 0..n-1 each exactly once, in order; each prev_hash is the previous hash; each hash is its content's;
    each signature verifies."""
    assert [ev.sequence for _, ev in events] == list(range(len(events)))
    prev = ""
    for _, ev in events:
        assert ev.prev_hash == prev
        assert ev.hash == chain_hash(prev, ev)
        assert verify_signature(ADMIN.public_hex, ev.hash, ev.signature)
        prev = ev.hash


# --- one process ----------------------------------------------------------------------------------------------
def test_appended_events_read_back_whole_and_in_order(glog: GovernanceLog) -> None:
    assert glog.head() == EMPTY_HEAD
    assert glog.read() == []
    written = append_all(glog, [genesis(), policy("one"), policy("two")])
    assert glog.read() == written  # offsets and events, field for field
    assert_one_chain(glog.read())
    last_offset, last = written[-1]
    assert glog.head() == (2, last.hash, last_offset)
    assert glog.read(from_offset=written[1][0]) == written[1:]
    assert glog.read(until=written[1][0]) == written[:2]  # the bound is included, as in replay's until_offset
    assert glog.registrations == 1  # one writer registration serves every append while no one else registers


def test_a_stale_head_is_a_conflict_and_writes_nothing(glog: GovernanceLog, kafka: str) -> None:
    append_all(glog, [genesis()])
    offsets = PartitionReader(kafka, glog.topic)
    before = offsets.bounds()
    stale = on_head(genesis(), EMPTY_HEAD)  # well linked and signed, on a head the log has left behind
    with pytest.raises(ConflictError, match=r"head is now #0 .*another writer appended first"):
        glog.append(stale, EMPTY_HEAD[:2])
    assert offsets.bounds() == before  # not even an aborted record: the head is checked before the transaction
    assert [ev.sequence for _, ev in glog.read()] == [0]
    offsets.close()


def test_an_event_not_linked_on_the_expected_head_or_unsigned_is_refused(glog: GovernanceLog) -> None:
    first = on_head(genesis(), EMPTY_HEAD)
    with pytest.raises(GovernanceError, match=r"linked as #0 .*not after head #4"):
        glog.append(first, (4, "ab" * 32))
    unsigned = genesis().linked(0, "", now_us())
    with pytest.raises(GovernanceError, match="not signed"):
        glog.append(unsigned, EMPTY_HEAD[:2])
    with pytest.raises(GovernanceError, match="does not match its content"):
        glog.append(replace(first, reason="changed after signing"), EMPTY_HEAD[:2])
    assert glog.read() == []


def test_a_record_that_is_not_an_event_is_reported_never_skipped(glog: GovernanceLog, kafka: str) -> None:
    written = append_all(glog, [genesis()])
    junk = EventProducer(kafka)
    junk.send(glog.topic, "*", b"\xc3\x01 not an avro body")
    junk.flush()
    records = glog.records()
    assert records[0] == written[0]
    bad_offset, bad = records[1]
    assert len(records) == 2 and isinstance(bad, Undecodable) and bad_offset > written[0][0]
    reg, findings = replay(glog.items())  # what audit reads: the record is a finding, and the projection stops
    assert [(f.offset, f.sequence, f.kind) for f in findings] == [(bad_offset, -1, "undecodable")]
    assert reg.head_sequence == 0
    with pytest.raises(TamperError, match=f"offset {bad_offset} is not a governance event"):
        glog.read()
    with pytest.raises(TamperError, match=f"last record of {glog.topic} \\(offset {bad_offset}\\)"):
        glog.head()
    with pytest.raises(TamperError):
        glog.append(on_head(policy("after junk"), (0, written[0][1].hash)), (0, written[0][1].hash))


def test_a_writer_fenced_by_another_conflicts_once_then_registers_again(kafka: str) -> None:
    topic, writer_id = fresh_topic(), fresh_writer_id()
    with (
        GovernanceLog(kafka, topic=topic, transactional_id=writer_id) as a,
        GovernanceLog(kafka, topic=topic, transactional_id=writer_id) as b,
    ):
        append_all(a, [genesis()])
        append_all(b, [policy("b registers, fencing a")])
        head = a.head()
        assert head[0] == 1  # a reads b's event: its head check is right ...
        with pytest.raises(ConflictError, match="fenced"):
            a.append(on_head(policy("a, fenced"), head), head[:2])  # ... but it may not commit on it
        a.append(on_head(policy("a, registered again"), head), head[:2])
        assert (a.registrations, b.registrations) == (2, 1)
        events = a.read()
        assert_one_chain(events)
        assert [ev.reason for _, ev in events] == ["bootstrap", "b registers, fencing a", "a, registered again"]


# --- real processes -----------------------------------------------------------------------------------------
WRITER = r"""
import json, sys, time
from evostream.consumers.governance.events import ALL_MODELS, GovEvent
from evostream.consumers.governance.keys import ActorKey, sign_event
from evostream.consumers.governance.log import GovernanceLog
from evostream.core.clock import now_us
from evostream.core.errors import ConflictError, EvoError

bootstrap, topic, writer_id, name = sys.argv[1:5]
key = ActorKey.from_seed(bytes(range(32)))
rules = {"production_approvals": 1, "auto_promote_staging": True, "auto_promote_production": False}
glog = GovernanceLog(bootstrap, topic=topic, transactional_id=writer_id)
glog.head()  # connect before the first round
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "quit":
        break
    seq, prev, jitter_ms = int(cmd[1]), cmd[2] if cmd[2] != "-" else "", float(cmd[3])
    time.sleep(jitter_ms / 1000)
    ev = GovEvent("PolicyChanged", "admin", key.key_id, {"policy": rules}, ALL_MODELS, f"{name} round {seq + 1}")
    ev = sign_event(ev.linked(seq + 1, prev, now_us()), key)
    t0 = time.perf_counter()
    try:
        offset = glog.append(ev, (seq, prev))
        out = {"result": "won", "offset": offset}
    except ConflictError as e:
        out = {"result": "conflict", "fenced": "fenced" in str(e), "error": str(e)}
    except EvoError as e:
        out = {"result": "error", "error": f"{type(e).__name__}: {e}"}
    out["ms"] = (time.perf_counter() - t0) * 1000
    out["registrations"] = glog.registrations
    print(json.dumps(out), flush=True)
glog.close()
"""

ZOMBIE = r"""
import sys
import tempfile
import time
from evostream.consumers.governance.events import ALL_MODELS, GovEvent
from evostream.consumers.governance.keys import ActorKey, sign_event
from evostream.core.bus.transactional import TransactionalProducer
from evostream.core.clock import now_us
from evostream.core.errors import ConflictError
from evostream.schemas.codec import RecordCodec

bootstrap, topic, writer_id, seq, prev = sys.argv[1:6]
key = ActorKey.from_seed(bytes(range(32)))
rules = {"production_approvals": 1, "auto_promote_staging": True, "auto_promote_production": False}
ev = GovEvent("PolicyChanged", "admin", key.key_id, {"policy": rules}, ALL_MODELS, "zombie")
ev = sign_event(ev.linked(int(seq) + 1, prev, now_us()), key)
writer = TransactionalProducer(bootstrap, writer_id)
writer.init()
writer.begin()
writer.produce(topic, ev.model_name, RecordCodec("GovernanceEvent").encode(ev.to_record()))
print("produced", writer.flush()[0][2], flush=True)
sys.stdin.readline()
try:
    writer.commit()
    print("committed", flush=True)
except ConflictError as e:
    print("conflict", e, flush=True)
"""


class Child:
    """A python process running ``script`` from the checkout, spoken to line by line."""

    def __init__(self, script: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        # a file, not a pipe: a chatty child never blocks on it; it lives as long as the child, closed in stop()
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def line(self, timeout_s: float = 60.0) -> str:
        assert self.proc.stdout is not None
        if not self.sel.select(timeout_s):
            raise AssertionError(f"no answer within {timeout_s} s; stderr: {self.stop()[-3000:]}")
        got = self.proc.stdout.readline()
        if not got:
            raise AssertionError(f"the child exited ({self.proc.wait()}); stderr: {self.stop()[-3000:]}")
        return got.strip()

    def stop(self) -> str:
        """Close stdin, wait for the exit; return stderr (once; "" after)."""
        if self.stderr.closed:
            return ""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.seek(0)
        text = self.stderr.read()
        self.stderr.close()
        return text


ROUNDS = 40


# Quarantined 2026-12-07: in one full run of six (alone: 3 of 3 passed) round 0 ended with the loser's append
# failing as DeliveryError ("transactional writer ... could not ...", the Kafka error cut off in the report) instead
# of ConflictError; the winner won and no fork was seen. Not yet found: which Kafka error the transactional writer
# met in round 0, right after both writers registered. `scripts/test.sh -m quarantine` runs it.
@pytest.mark.quarantine
def test_two_writer_processes_never_fork_the_chain(kafka: str) -> None:
    topic, writer_id = fresh_topic(), fresh_writer_id()
    with GovernanceLog(kafka, topic=topic, transactional_id=writer_id) as glog:
        append_all(glog, [genesis()])
        writers = {name: Child(WRITER, kafka, topic, writer_id, name) for name in ("A", "B")}
        try:
            for w in writers.values():
                assert w.line(120) == "ready"
            rounds: list[dict[str, dict[str, Any]]] = []
            for r in range(ROUNDS):
                seq, prev, _ = glog.head()
                assert seq == r  # every earlier round appended exactly one event
                # a third of the rounds start both at once; the others hold one writer back 0-15 ms, each in turn
                jitter = {"A": 0.0, "B": 0.0}
                if r % 3:
                    jitter["A" if r % 3 == 1 else "B"] = (r * 7919 % 16) * 1.0
                for name, w in writers.items():
                    w.send(f"go {seq} {prev or '-'} {jitter[name]}")
                rounds.append({name: json.loads(w.line()) for name, w in writers.items()})
            for w in writers.values():
                w.send("quit")
        finally:
            errors = {name: w.stop() for name, w in writers.items()}
        assert all(w.proc.returncode == 0 for w in writers.values()), errors

        events = glog.read()
    assert_one_chain(events)
    assert len(events) == ROUNDS + 1
    winners = []
    for r, answers in enumerate(rounds):
        results = sorted(a["result"] for a in answers.values())
        # exactly one winner, and the loser got ConflictError (a str message: pytest cuts a repr to 240 characters)
        assert results == ["conflict", "won"], f"round {r}: {answers}"
        winner = next(name for name, a in answers.items() if a["result"] == "won")
        offset, ev = events[r + 1]
        assert answers[winner]["offset"] == offset and ev.reason == f"{winner} round {r + 1}", (r, answers)
        winners.append(winner)
    losses = [a for answers in rounds for a in answers.values() if a["result"] == "conflict"]
    assert len(losses) == ROUNDS
    assert {"A", "B"} <= set(winners), winners  # both sides of the race were taken
    won_ms = [a["ms"] for answers in rounds for a in answers.values() if a["result"] == "won"]
    fenced = sum(a["fenced"] for a in losses)
    print(
        f"\n{ROUNDS} rounds: A won {winners.count('A')}, B won {winners.count('B')}; {len(losses)} ConflictErrors "
        f"({fenced} fenced at commit, {len(losses) - fenced} saw the new head); append latency of the winners: "
        f"median {statistics.median(won_ms):.1f} ms, min {min(won_ms):.1f}, max {max(won_ms):.1f}; "
        f"registrations A {rounds[-1]['A']['registrations']}, B {rounds[-1]['B']['registrations']}"
    )


def test_a_zombie_writer_cannot_commit(kafka: str) -> None:
    topic, writer_id = fresh_topic(), fresh_writer_id()
    with GovernanceLog(kafka, topic=topic, transactional_id=writer_id) as glog:
        ((_, first),) = append_all(glog, [genesis()])
        zombie = Child(ZOMBIE, kafka, topic, writer_id, "0", first.hash)
        try:
            word, zombie_offset = zombie.line(120).split()
            assert word == "produced"  # the broker holds the zombie's record, in its still open transaction
            # a newer writer registers (fencing the zombie and aborting its transaction) and appends #1
            newer = on_head(policy("the newer writer"), (0, first.hash))
            t0 = time.monotonic()
            with GovernanceLog(kafka, topic=topic, transactional_id=writer_id) as other:
                newer_offset = other.append(newer, (0, first.hash))
            # at once, not after the coordinator timed the zombie's transaction out: the registration aborted it
            assert time.monotonic() - t0 < TRANSACTION_TIMEOUT_MS / 1000 / 2
            zombie.send("commit")
            answer = zombie.line()
        finally:
            stderr = zombie.stop()
        assert answer.startswith("conflict") and "fenced" in answer, (answer, stderr)
        events = glog.read()
    assert [(o, ev.reason) for o, ev in events] == [(events[0][0], "bootstrap"), (newer_offset, "the newer writer")]
    assert_one_chain(events)
    # the zombie's record is in the partition, aborted: a read_uncommitted reader still sees it
    raw = PartitionReader(kafka, topic, config={"isolation.level": "read_uncommitted"})
    try:
        assert int(zombie_offset) in {o for o, _ in raw.read(0)}
    finally:
        raw.close()
