"""The head of the governance log anchored outside Kafka: a log recreated with a prefix of its events (which would
bring a revoked actor back) is refused by the writer, the serving path and the API's key check, with the way out;
pure checks on signed chains in memory, then the whole story on the real broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from starlette.requests import Request

from bench.replay import ADMIN, Chain
from evostream.api.auth import Auth, RegistryCache
from evostream.consumers.governance.anchor import advance_anchor, anchor_path, check_anchor, read_anchor
from evostream.consumers.governance.api_keys import token_for
from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.projection import replay
from evostream.consumers.governance.service import init, key_path, load_actor
from evostream.core.bus.admin import delete_topics, ensure_topics
from evostream.core.bus.producer import EventProducer
from evostream.core.errors import StackError, TamperError
from evostream.core.settings import load_settings
from evostream.schemas.catalog import GOVERNANCE, topic_spec
from evostream.schemas.codec import RecordCodec
from evostream.views.governance import GovernanceView, anchor_file, checkpoints_path
from evostream.wiring.governed import ensure_genesis

CLI = [sys.executable, "-m", "evostream.cli"]


def chain(seed: int = 31) -> Chain:
    c = Chain(seed=seed)
    c.genesis()
    c.enroll("alice", ["approver"])
    c.append("ActorRevoked", ADMIN, {"actor_id": "alice"})
    return c


def anchored_at_head(c: Chain, tmp_path: Path) -> Path:
    path = anchor_path(tmp_path, "evo.governance")
    reg, found = replay(c.log())
    assert found == [] and advance_anchor(path, reg)
    return path


def detail(c: Chain, events: list[tuple[int | None, object]], path: Path) -> str:
    reg, _ = replay(events)  # type: ignore[arg-type]
    f = check_anchor(read_anchor(path), reg, events, path)  # type: ignore[arg-type]
    assert f is not None and f.kind == "truncated"
    assert "evostream governance anchor --reset" in f.detail and str(path) in f.detail
    return f.detail


def test_the_log_as_verified_passes_and_the_anchor_only_moves_forward(tmp_path: Path) -> None:
    c = chain()
    path = anchored_at_head(c, tmp_path)
    reg, _ = replay(c.log())
    assert check_anchor(read_anchor(path), reg, c.log(), path) is None  # type: ignore[arg-type]
    shorter, _ = replay(c.log()[:2])
    assert not advance_anchor(path, shorter)  # never backwards
    assert read_anchor(path) is not None and read_anchor(path).sequence == 2  # type: ignore[union-attr]
    c.append("PolicyChanged", ADMIN, {"policy": {"production_approvals": 2}})
    longer, _ = replay(c.log())
    assert check_anchor(read_anchor(path), longer, c.log(), path) is None  # type: ignore[arg-type]


def test_a_prefix_an_empty_log_another_log_and_a_rewritten_one_are_refused(tmp_path: Path) -> None:
    c = chain()
    path = anchored_at_head(c, tmp_path)
    assert "the log ends at sequence 1 (offset 2), but this machine verified it up to sequence 2" in detail(
        c, c.log()[:2], path
    )
    assert "the log is empty" in detail(c, [], path)
    other = chain(seed=32)
    assert "it is another log" in detail(c, other.log(), path)  # type: ignore[arg-type]
    rewritten = Chain(seed=31)  # the same admin key, the same first events, then another #2
    rewritten.genesis()
    rewritten.enroll("alice", ["approver"])
    rewritten.append("PolicyChanged", ADMIN, {"policy": {"production_approvals": 1}})
    assert rewritten.events[1].hash == c.events[1].hash
    assert "event #2 of the log now has hash" in detail(c, rewritten.log(), path)  # type: ignore[arg-type]


def request(token: str) -> Request:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "client": ("127.0.0.1", 5)})


@pytest.mark.integration
def test_a_topic_recreated_with_a_prefix_does_not_bring_a_revoked_actor_back(kafka: str, tmp_path: Path) -> None:
    topic = f"test-governance-anchor-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        bootstrap_servers=kafka, governance_dir=tmp_path / "gov", artifacts_dir=tmp_path / "a", governance_topic=topic
    )
    keys = settings.governance_dir / "keys"
    glog = GovernanceLog(kafka, topic=topic)
    admin, _ = init(glog, keys, "admin", checkpoints=checkpoints_path(settings), anchor=anchor_file(settings))
    alice = ActorKey.generate()
    admin.enroll("alice", alice.public_hex, alice.key_id, ["approver"])
    genesis = admin.state().registry.genesis_hash
    token = token_for(alice, "alice", genesis)
    view = GovernanceView(kafka, settings)
    auth = Auth(RegistryCache(view, ttl_s=0))
    assert auth.writer(request(token)).name == "alice"  # the API verified the log with alice in it
    prefix = [rec for _, rec in glog.records()]
    admin.revoke("alice", reason="left the team")
    with pytest.raises(Exception, match="revoked"):
        auth.writer(request(token))
    glog.close()

    # someone with access to the broker recreates the topic with the events from before the revocation
    delete_topics(kafka, [topic])
    deadline = time.monotonic() + 60
    while True:  # the deletion completes in the background: create it again once it has
        try:
            if ensure_topics(kafka, [replace(topic_spec(GOVERNANCE), name=topic)]):
                break
        except StackError:
            pass
        assert time.monotonic() < deadline, "the topic could not be created again"
        time.sleep(0.5)
    codec = RecordCodec("GovernanceEvent")
    producer = EventProducer(kafka)
    for ev in prefix:
        producer.send(topic, ev.model_name, codec.encode(ev.to_record()))  # type: ignore[union-attr]
    producer.flush()
    with GovernanceLog(kafka, topic=topic) as again:
        assert [ev.type for _, ev in again.read()] == ["ActorEnrolled", "PolicyChanged", "ActorEnrolled"]

    with pytest.raises(TamperError, match="cut short or recreated"):  # the API's key check: 409, not alice
        auth.writer(request(token))
    with pytest.raises(TamperError, match="cut short or recreated"):  # `serve --governed` starting
        ensure_genesis(settings, kafka, lambda _: None)
    writer = load_actor(
        GovernanceLog(kafka, topic=topic),
        keys,
        "admin",
        checkpoints=checkpoints_path(settings),
        anchor=anchor_file(settings),
    )
    with pytest.raises(TamperError, match="cut short or recreated"):  # a governance write
        writer.set_policy({"production_approvals": 1}, reason="x")
    assert key_path(keys, "admin").exists()

    env = {
        **os.environ,
        "EVOSTREAM_GOVERNANCE_DIR": str(settings.governance_dir),
        "EVOSTREAM_GOVERNANCE_TOPIC": topic,
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
    }
    checked = subprocess.run([*CLI, "governance", "anchor"], env=env, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 2 and "governance anchor --reset" in checked.stderr, checked.stderr
    verify = subprocess.run([*CLI, "replay", "--verify"], env=env, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 2 and "cut short" in verify.stdout, verify.stdout
    # replaced on purpose: the operator accepts the log as it is, and writes go on
    reset = subprocess.run(
        [*CLI, "governance", "anchor", "--reset"], env=env, capture_output=True, text=True, timeout=120
    )
    assert reset.returncode == 0, reset.stderr
    writer.set_policy({"production_approvals": 1}, reason="after the reset")


def test_a_forged_event_linking_to_itself_is_no_chain_to_walk(tmp_path: Path) -> None:
    # a copy of the last event claiming the next sequence, its hash kept: its prev_hash is its own hash
    c = chain()
    path = anchored_at_head(c, tmp_path)
    last = c.events[-1]
    forged = replace(last, sequence=last.sequence + 1, prev_hash=last.hash)
    events = [*c.log(), (2 * len(c.events), forged)]
    reg, found = replay(events)
    assert [f.kind for f in found] == ["altered"]
    assert check_anchor(read_anchor(path), reg, events, path) is None  # type: ignore[arg-type]
