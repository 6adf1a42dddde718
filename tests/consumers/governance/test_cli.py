"""The governance commands as a user runs them (real processes, real broker): who may do what, what the registry
says now and earlier, the audit trail, rollback, and tampering found by `replay --verify` with its offset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from evostream.consumers.governance.events import GovEvent
from evostream.core.bus.producer import EventProducer
from evostream.schemas.codec import RecordCodec
from tests.producers.models import tiny

CLI = [sys.executable, "-m", "evostream.cli"]


def test_governance_commands_end_to_end(kafka: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    topic = f"test-governance-cli-{run}"
    env = {
        **os.environ,
        "EVOSTREAM_GOVERNANCE_DIR": str(tmp_path / "gov"),
        "EVOSTREAM_GOVERNANCE_TOPIC": topic,
        "EVOSTREAM_ARTIFACTS_DIR": str(tmp_path / "a"),
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
        "HF_HUB_OFFLINE": "1",
    }

    def cli(*args: str, ok: bool = True, home: str = "gov") -> subprocess.CompletedProcess[str]:
        where = {**env, "EVOSTREAM_GOVERNANCE_DIR": str(tmp_path / home)}  # bob keeps his key on his own machine
        done = subprocess.run([*CLI, *args], env=where, capture_output=True, text=True, timeout=120)
        assert (done.returncode == 0) == ok, (args, done.stdout, done.stderr)
        return done

    model = f"m-{run}"
    folders = []
    for seed in (1, 2):
        lm = tiny("gpt2", seed=seed, varied=True)
        folders.append(tmp_path / f"v{seed}")
        lm.model.save_pretrained(folders[-1])
        lm.tokenizer.save_pretrained(folders[-1])

    cli("governance", "init")
    key = tmp_path / "gov" / "keys" / "admin.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_text() not in cli("audit").stdout  # the private key is never printed
    # bob makes his key on his machine; the admin enrolls its public half, and never holds bob's private key
    enroll = cli("governance", "keygen", "bob", home="bob").stdout.split()
    assert enroll[:4] == ["evostream", "governance", "enroll", "bob"] and enroll[4] == "--public-key", enroll
    assert (tmp_path / "bob" / "keys" / "bob.key").stat().st_mode & 0o777 == 0o600
    assert "already holds a key" in cli("governance", "keygen", "bob", home="bob", ok=False).stderr
    refused = cli("governance", "enroll", "bob", "--public-key", "abcd", ok=False)
    assert "32 bytes" in refused.stderr, refused.stderr
    cli("governance", "enroll", "bob", "--roles", "approver", "--public-key", enroll[5], "--reason", "reviewer")
    assert not (tmp_path / "gov" / "keys" / "bob.key").exists()
    cli("governance", "enroll", "carol", "--roles", "proposer")
    cli("governance", "policy", "--approvals", "1", "--reason", "one reviewer is enough")
    cli("register", model, f"{model}@1", "--artifact", str(folders[0]), "--metrics", '{"parameters": 42}')
    refused = cli("promote", model, f"{model}@1", "--stage", "staging", ok=False)  # not validated yet
    assert "valid" in refused.stderr, refused.stderr
    failed = cli("validate", model, f"{model}@1", "--per-task", "2", "--actor", "carol")  # random weights: 0 right
    assert "FAIL" in failed.stderr
    cli("validate", model, f"{model}@1", "--per-task", "2", "--min-accuracy", "0", "--actor", "carol")
    # a proposer may not approve, an approver may not promote to production
    refused = cli("approve", model, f"{model}@1", "--actor", "carol", ok=False)
    assert "carol" in refused.stderr and "approver" in refused.stderr, refused.stderr
    refused = cli("promote", model, f"{model}@1", "--stage", "production", "--actor", "bob", ok=False, home="bob")
    assert "error:" in refused.stderr
    refused = cli("promote", model, f"{model}@1", "--stage", "production", ok=False)  # no approval yet
    assert "approv" in refused.stderr, refused.stderr
    cli("approve", model, f"{model}@1", "--actor", "bob", "--reason", "reviewed", home="bob")
    cli("promote", model, f"{model}@1", "--stage", "production", "--reason", "first")
    first = json.loads(cli("registry", "show", f"{model}@1").stdout)
    assert first["stage"] == "production" and first["metrics"] == {"parameters": 42}
    cli("register", model, f"{model}@2", "--artifact", str(folders[1]), "--parent", f"{model}@1")
    cli("validate", model, f"{model}@2", "--per-task", "2", "--min-accuracy", "0")
    cli("request-approval", model, f"{model}@2", "--actor", "carol", "--reason", "ready")
    assert f"pending: {model}@2 -> production: 0/1 approvals" in cli("registry").stdout
    cli("approve", model, f"{model}@2", "--actor", "bob", home="bob")
    cli("promote", model, f"{model}@2", "--stage", "production")
    now = cli("registry").stdout
    assert f"{model}: production {model}@2" in now, now
    cli("rollback", model, "--to", "previous", "--reason", "v2 answers worse")
    assert f"{model}: production {model}@1" in cli("registry").stdout
    # as of the offset of v2's promotion, v2 served
    audit = cli("audit").stdout.splitlines()
    promoted_v2 = next(line for line in audit if f"promoted {model}@2 to production" in line)
    offset = promoted_v2.split()[1].lstrip("@")
    assert f"{model}: production {model}@2" in cli("registry", "--as-of", offset).stdout
    assert [line.split(maxsplit=5)[4] for line in cli("audit", "--actor", "bob").stdout.splitlines()] == ["bob"] * 2
    # genesis (2), 2 enrolments, policy, v1 (register, failed and passed validation, staging, approval, production),
    # v2 (register, validation, staging, request, approval, production), the rollback
    assert len(audit) == 2 + 2 + 1 + 6 + 6 + 1, audit
    assert cli("replay", "--verify").stdout.endswith("0 finding(s)\n")

    # tampering: an altered copy of the last event (its reason edited, hash and signature kept) appended by hand
    codec = RecordCodec("GovernanceEvent")
    from evostream.consumers.governance.log import GovernanceLog

    with GovernanceLog(kafka, topic=topic) as glog:
        last_offset, last = glog.read()[-1]
    forged = GovEvent(
        **{**last.__dict__, "reason": "nothing to see", "sequence": last.sequence + 1, "prev_hash": last.hash}
    )
    producer = EventProducer(kafka)
    producer.send(topic, model, codec.encode(forged.to_record()))
    producer.flush()
    bad = cli("replay", "--verify", ok=False)
    assert bad.returncode == 2
    assert f"sequence {last.sequence + 1}: altered" in bad.stdout, bad.stdout
    assert "TAMPERED" in cli("audit", ok=False).stderr
    refused = cli("rollback", model, "--to", f"{model}@2", "--reason", "x", ok=False)
    assert "failed verification" in refused.stderr  # nothing is built on a tampered log
    assert last_offset >= 0
