"""Which login a client gets, the credentials file, the ACL rule and the broker's listeners (no broker needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from confluent_kafka.admin._acl import AclOperation
from confluent_kafka.admin._resource import ResourceType

from evostream.consumers.governance.log import WRITER_ID
from evostream.core.bus import security
from evostream.core.bus.acls import policy
from evostream.core.bus.security import GOVERNANCE_WRITER_ID, PRINCIPALS, SUPER_USER, CredentialsFile
from evostream.core.errors import StackError
from evostream.core.settings import load_settings
from evostream.core.stack.config import compose_broker_env, plain_jaas, server_properties

BROKER = "127.0.0.1:19092"


@pytest.fixture
def creds(tmp_path: Path) -> tuple[Path, CredentialsFile]:
    path = tmp_path / "stack" / "credentials.json"
    return path, CredentialsFile.ensure(path, BROKER)


def test_the_credentials_file_is_private_and_keeps_its_passwords(creds: tuple[Path, CredentialsFile]) -> None:
    path, made = creds
    assert path.stat().st_mode & 0o777 == 0o600
    assert set(made.passwords) == {SUPER_USER, *PRINCIPALS}
    assert len(set(made.passwords.values())) == len(made.passwords)  # one random password each
    again = CredentialsFile.ensure(path, "127.0.0.1:29092")  # a restart on another port: same passwords
    assert again.passwords == made.passwords and again.bootstrap == "127.0.0.1:29092"


def test_a_client_logs_in_as_its_role_from_the_file(
    creds: tuple[Path, CredentialsFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, made = creds
    monkeypatch.setenv("EVOSTREAM_KAFKA_CREDENTIALS", str(path))
    monkeypatch.setenv("EVOSTREAM_KAFKA_ROLE", "admin")  # and act_as's change below is undone after the test
    login = security.credentials(BROKER)
    assert login is not None and login.username == "admin" and login.password == made.passwords["admin"]
    assert login.mechanism == "SCRAM-SHA-512"
    assert security.client_config(BROKER, "sinks")["sasl.username"] == "sinks"
    # the governance writer is known by its transactional id, whatever the process is
    writer = security.credentials(BROKER, transactional_id=GOVERNANCE_WRITER_ID)
    assert writer is not None and writer.username == "governance"
    security.act_as("inference")
    assert security.client_config(BROKER)["sasl.username"] == "inference"
    with pytest.raises(StackError, match="unknown Kafka principal 'root'"):
        security.act_as("root")


def test_the_writer_id_is_the_governance_logs() -> None:
    assert GOVERNANCE_WRITER_ID == WRITER_ID


def test_a_plain_broker_gets_no_credentials(
    creds: tuple[Path, CredentialsFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = creds
    monkeypatch.setenv("EVOSTREAM_STACK_DIR", str(path.parent))
    monkeypatch.delenv("EVOSTREAM_KAFKA_CREDENTIALS", raising=False)
    assert security.client_config(BROKER)["sasl.username"] == "admin"  # the local stack's file serves its address
    assert security.client_config("kafka.example:9092") == {}  # another broker: plaintext, as before
    monkeypatch.setenv("EVOSTREAM_KAFKA_CREDENTIALS", str(path))
    assert security.client_config("kafka.example:9092") == {}  # a file bound to one address is used for it only


def test_explicit_username_and_password_win(
    creds: tuple[Path, CredentialsFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = creds
    monkeypatch.setenv("EVOSTREAM_KAFKA_CREDENTIALS", str(path))
    monkeypatch.setenv("EVOSTREAM_KAFKA_USERNAME", "svc-inference")
    with pytest.raises(StackError, match="EVOSTREAM_KAFKA_PASSWORD"):
        security.client_config(BROKER)
    monkeypatch.setenv("EVOSTREAM_KAFKA_PASSWORD", "s3cret")
    monkeypatch.setenv("EVOSTREAM_KAFKA_MECHANISM", "SCRAM-SHA-256")
    config = security.client_config("kafka.example:9092", "governance")
    assert config == {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "svc-inference",
        "sasl.password": "s3cret",
    }
    assert "s3cret" not in repr(load_settings()) and "s3cret" not in repr(security.credentials(BROKER))


def test_only_governance_may_write_the_governance_log() -> None:
    grants = policy({"evo.governance"})
    denied = {(g.principal, g.name, g.operation) for g in grants if not g.allow and g.resource == ResourceType.TOPIC}
    for p in PRINCIPALS:
        if p == "governance":
            assert not [g for g in grants if g.principal == p and not g.allow]
        else:
            assert (p, "evo.governance", AclOperation.WRITE) in denied
            assert (p, "evo.governance", AclOperation.DELETE) in denied
            assert any(
                not g.allow and g.resource == ResourceType.TRANSACTIONAL_ID and g.name == WRITER_ID
                for g in grants
                if g.principal == p
            )
    # no client principal may alter the cluster: changing ACLs or SCRAM users is the super user's alone
    cluster = [g for g in grants if g.resource == ResourceType.BROKER]
    assert {g.operation for g in cluster} == {
        AclOperation.CREATE,
        AclOperation.DESCRIBE,
        AclOperation.DESCRIBE_CONFIGS,
        AclOperation.IDEMPOTENT_WRITE,
    }
    assert SUPER_USER not in {g.principal for g in grants}


def test_the_broker_has_no_plaintext_listener_and_stays_on_loopback(tmp_path: Path) -> None:
    props = dict(
        line.split("=", 1) for line in server_properties(9092, 9093, tmp_path, "pw").splitlines() if "=" in line
    )
    assert props["listeners"] == "CLIENT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert set(props["listener.security.protocol.map"].split(",")) == {
        "CLIENT:SASL_PLAINTEXT",
        "CONTROLLER:SASL_PLAINTEXT",
    }
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == f"User:{SUPER_USER}"


def test_the_compose_brokers_settings_read_back_through_a_shell(tmp_path: Path) -> None:
    env_file = tmp_path / "kafka.env"
    env_file.write_text(compose_broker_env("p4ss-word_1"))
    done = subprocess.run(
        ["bash", "-c", f"set -a && . {env_file} && env"], capture_output=True, text=True, check=True, timeout=30
    )
    got = dict(line.split("=", 1) for line in done.stdout.splitlines() if line.startswith("KAFKA_LISTENER_NAME_"))
    assert got["KAFKA_LISTENER_NAME_CONTROLLER_PLAIN_SASL_JAAS_CONFIG"] == plain_jaas("p4ss-word_1")
    assert got["KAFKA_LISTENER_NAME_INTERNAL_PLAIN_SASL_JAAS_CONFIG"] == plain_jaas("p4ss-word_1")
    assert "KAFKA_LISTENER_NAME_EXTERNAL_SCRAM___SHA___512_SASL_JAAS_CONFIG" in got  # the image's "scram-sha-512"
