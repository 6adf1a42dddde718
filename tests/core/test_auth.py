"""Authentication and ACLs on the broker the launcher starts (issue 26, finding 1): a client without credentials or
with a wrong password is refused, only the governance principal may write the governance log, and the issue's
reproduction (a 4-byte record on evo.governance after the genesis) can no longer stop governance.

A private broker: these tests write the governance log of ``evo.governance`` itself, the one the ACLs guard."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from evostream.core.bus.admin import cluster_metadata
from evostream.core.bus.producer import EventProducer
from evostream.core.bus.security import GOVERNANCE_WRITER_ID, Credentials, CredentialsFile
from evostream.core.bus.transactional import TransactionalProducer
from evostream.core.errors import AuthenticationError, AuthorizationError
from evostream.core.stack import LocalStack
from evostream.schemas.catalog import GOVERNANCE, REQUESTS
from tests.conftest import stack_settings

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "evostream.cli"]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, str]]:
    stack = LocalStack(stack_settings(tmp_path_factory.mktemp("auth")))
    state = stack.up()
    try:
        yield stack, state.bootstrap
    finally:
        stack.down()


def _anonymous_write(bootstrap: str, topic: str, value: bytes) -> bool:
    """What the issue's attacker did: a plain client, no credentials, one record; whether the broker took it."""
    producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 8000, "log_level": 0})
    outcome: list[object] = []
    producer.produce(topic, value, on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(15)
    assert len(outcome) == 1, "the delivery report did not come"
    return outcome[0] is None


def test_a_client_without_credentials_is_refused(secured: tuple[LocalStack, str]) -> None:
    _, bootstrap = secured
    assert not _anonymous_write(bootstrap, REQUESTS, b"junk")
    with pytest.raises(KafkaException):
        AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=5)


def test_a_wrong_password_is_refused(secured: tuple[LocalStack, str]) -> None:
    stack, bootstrap = secured
    assert stack.credentials_file.stat().st_mode & 0o777 == 0o600
    right = CredentialsFile.load(stack.credentials_file).login("admin")
    assert GOVERNANCE in cluster_metadata(bootstrap, 10, login=right).topics
    with pytest.raises(AuthenticationError, match=r"refused the login of principal 'admin'.*invalid credentials"):
        cluster_metadata(bootstrap, 10, login=Credentials("admin", right.password + "x"))


def test_only_the_governance_principal_may_write_the_governance_log(secured: tuple[LocalStack, str]) -> None:
    _, bootstrap = secured
    producer = EventProducer(bootstrap, role="inference")
    producer.send(REQUESTS, b"k", b"v")  # its own topics: allowed
    producer.flush(15)
    producer.send(GOVERNANCE, b"k", b"junk")
    with pytest.raises(AuthorizationError, match=r"principal 'inference' to write to evo\.governance.*`governance`"):
        producer.flush(15)
    # nor may another principal take the governance writer's transactional id (that would fence the writer)
    writer = TransactionalProducer(bootstrap, GOVERNANCE_WRITER_ID, role="api", timeout_s=15)
    try:
        with pytest.raises(AuthorizationError, match="principal 'api' to use transactional id"):
            writer.init()
    finally:
        writer.close()


def test_a_junk_record_on_the_governance_log_is_refused_so_governance_goes_on(
    secured: tuple[LocalStack, str], tmp_path: Path
) -> None:
    """The issue's reproduction: after the genesis, a 4-byte record produced to evo.governance by a client with no
    credentials made every later governance write fail ("evo.governance offset N is not a governance event")."""
    stack, bootstrap = secured
    env = {
        **os.environ,
        "EVOSTREAM_BOOTSTRAP_SERVERS": bootstrap,
        "EVOSTREAM_KAFKA_CREDENTIALS": str(stack.credentials_file),
        "EVOSTREAM_GOVERNANCE_DIR": str(tmp_path / "gov"),
        "EVOSTREAM_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    cli("governance", "init")  # the genesis, written by the governance principal
    assert not _anonymous_write(bootstrap, GOVERNANCE, b"junk")
    cli("governance", "policy", "--approvals", "1", "--reason", "after the junk write")
    audit = cli("audit")  # exit 0: every record of the log is a verified event, no TAMPERED finding
    events = audit.stdout.splitlines()  # the genesis's two events, then the policy written after the junk write
    assert len(events) == 3 and "after the junk write" in events[-1], audit.stdout
