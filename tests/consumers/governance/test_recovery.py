"""Recovering a governance log from a bad record, as a user would (real broker, real processes): a 4-byte record
produced by a plain client after the genesis stops every governance write and the governed serving; an admin's
`governance void` of that offset lets the policy write, `replay --verify` and the serving's loading work again."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from evostream.consumers.governance.log import GovernanceLog
from evostream.core.bus.producer import EventProducer
from evostream.core.errors import TamperError
from evostream.core.settings import load_settings
from evostream.models.default_model import MODEL_ID
from evostream.wiring.governed import GovernedModel, ensure_genesis

CLI = [sys.executable, "-m", "evostream.cli"]

pytestmark = pytest.mark.integration


def test_a_junk_record_is_voided_and_governance_and_serving_go_on(kafka: str, tmp_path: Path) -> None:
    topic = f"test-governance-recovery-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "EVOSTREAM_GOVERNANCE_DIR": str(tmp_path / "gov"),
        "EVOSTREAM_GOVERNANCE_TOPIC": topic,
        "EVOSTREAM_ARTIFACTS_DIR": str(tmp_path / "a"),
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
        "HF_HUB_OFFLINE": "1",
    }
    settings = load_settings(
        bootstrap_servers=kafka,
        governance_dir=tmp_path / "gov",
        artifacts_dir=tmp_path / "a",
        governance_topic=topic,
    )

    def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)
        assert (done.returncode == 0) == ok, (args, done.stdout, done.stderr)
        return done

    version = ensure_genesis(settings, kafka, lambda _: None)  # what `serve --governed` does on an empty log
    cli("governance", "enroll", "bob", "--roles", "approver")
    # a client with no credentials writes 4 bytes to the log
    junk = EventProducer(kafka)
    junk.send(topic, "x", b"\x00\x01\x02\x03")
    junk.flush()
    with GovernanceLog(kafka, topic=topic) as glog:
        bad = glog.records()[-1][0]

    refused = cli("governance", "policy", "--approvals", "1", ok=False)
    assert f"offset {bad}" in refused.stderr and "not a governance event" in refused.stderr, refused.stderr
    assert f"governance void --offset {bad}" in refused.stderr  # the error names the way out
    with pytest.raises(TamperError, match="not a governance event"):
        ensure_genesis(settings, kafka, lambda _: None)  # `serve --governed` after a restart
    assert cli("replay", "--verify", ok=False).returncode == 2

    # only an admin's void, and only of a record that is no event of the chain
    assert (
        "needs role admin"
        in cli("governance", "void", "--offset", str(bad), "--reason", "x", "--actor", "bob", ok=False).stderr
    )
    valid = cli("governance", "void", "--offset", "0", "--offset", str(bad), "--reason", "x", ok=False).stderr
    assert "offset 0: ActorEnrolled #0 by admin: a valid event of the chain" in valid and "--force" in valid, valid

    said = cli("governance", "void", "--offset", str(bad), "--reason", "4 junk bytes from an unauthenticated client")
    assert f"voided offset(s) {bad}" in said.stderr
    cli("governance", "policy", "--approvals", "1", "--reason", "after the void")
    verified = cli("replay", "--verify").stdout
    assert verified.endswith("0 finding(s)\n"), verified
    assert f"voided offset(s) {bad}" in cli("audit").stdout
    again = cli("governance", "void", "--offset", str(bad), "--reason", "twice", ok=False).stderr
    assert "voided already" in again, again

    assert ensure_genesis(settings, kafka, lambda _: None) == version  # serving starts again
    served = GovernedModel(kafka, settings, MODEL_ID, poll_s=0.2)
    try:
        assert served.current().version == version
    finally:
        served.close()
