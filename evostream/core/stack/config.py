"""Render the broker's server.properties for a KRaft node on loopback (one alone, or one of a local cluster), with
authentication and ACLs."""

from __future__ import annotations

from pathlib import Path

from evostream.core.bus.security import CLIENT_MECHANISM, SUPER_USER
from evostream.core.stack.ports import HOST

_PLAIN = "org.apache.kafka.common.security.plain.PlainLoginModule"
_SCRAM = "org.apache.kafka.common.security.scram.ScramLoginModule"


def server_properties(
    broker_port: int,
    controller_port: int,
    data_dir: Path,
    super_password: str,
    *,
    node_id: int = 1,
    voters: str | None = None,
    replication: int = 1,
    min_insync: int = 1,
) -> str:
    """server.properties for one node acting as broker and controller.

    The quorum is static (controller.quorum.voters, ``voters`` or this node alone) so a formatted data folder
    survives a change of ports. The internal topics and topics created without a replication factor get
    ``replication`` replicas and need ``min_insync`` of them in sync (1 and 1 for a node alone; a local cluster,
    ``core/stack/cluster.py``, passes 3 and 2).

    Both listeners are SASL_PLAINTEXT on loopback. Clients log in with SCRAM-SHA-512 (their credentials live in the
    cluster's metadata, set by the launcher). The broker's own principal (``SUPER_USER``) logs in with PLAIN against
    the static user below: it needs nothing from the metadata, so the controller listener (where KRaft allows no
    SCRAM) and a freshly formatted or older data folder work the same, and the launcher uses it to set up the SCRAM
    principals and the ACLs. ``StandardAuthorizer`` refuses whatever no ACL allows.
    """
    plain = plain_jaas(super_password)
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": voters or f"{node_id}@{HOST}:{controller_port}",
        "listeners": f"CLIENT://{HOST}:{broker_port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"CLIENT://{HOST}:{broker_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "CLIENT",
        "listener.security.protocol.map": "CONTROLLER:SASL_PLAINTEXT,CLIENT:SASL_PLAINTEXT",
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.client.sasl.enabled.mechanisms": f"{CLIENT_MECHANISM},PLAIN",
        f"listener.name.client.{CLIENT_MECHANISM.lower()}.sasl.jaas.config": f"{_SCRAM} required;",
        "listener.name.client.plain.sasl.jaas.config": plain,
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": plain,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{SUPER_USER}",
        "allow.everyone.if.no.acl.found": "false",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "default.replication.factor": str(replication),
        "min.insync.replicas": str(min_insync),
        "offsets.topic.replication.factor": str(replication),
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": str(replication),
        "transaction.state.log.min.isr": str(min_insync),
        "transaction.state.log.num.partitions": "3",
        "share.coordinator.state.topic.replication.factor": str(replication),
        "share.coordinator.state.topic.min.isr": str(min_insync),
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def plain_jaas(super_password: str) -> str:
    """The JAAS line of the broker's static PLAIN user: it logs in with it, and accepts only it."""
    login = f'username="{SUPER_USER}" password="{super_password}"'
    return f'{_PLAIN} required {login} user_{SUPER_USER}="{super_password}";'


def compose_broker_env(super_password: str) -> str:
    """The SASL settings of docker-compose.yml's broker as the apache/kafka image reads them (KAFKA_* variables, a
    shell file its command sources): the same scheme as ``server_properties``, on its INTERNAL, EXTERNAL and
    CONTROLLER listeners."""
    plain = plain_jaas(super_password)
    scram = f"{_SCRAM} required;"
    mech = CLIENT_MECHANISM.replace("-", "___")  # the image's spelling of "-" in a property name
    env = {
        "KAFKA_LISTENER_NAME_INTERNAL_PLAIN_SASL_JAAS_CONFIG": plain,
        f"KAFKA_LISTENER_NAME_INTERNAL_{mech}_SASL_JAAS_CONFIG": scram,
        f"KAFKA_LISTENER_NAME_EXTERNAL_{mech}_SASL_JAAS_CONFIG": scram,
        "KAFKA_LISTENER_NAME_CONTROLLER_PLAIN_SASL_JAAS_CONFIG": plain,
    }
    return "".join(f"{k}='{v}'\n" for k, v in env.items())
