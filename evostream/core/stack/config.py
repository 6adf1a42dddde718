"""Render the broker's server.properties for a KRaft node on loopback: one alone, or one of a local cluster."""

from __future__ import annotations

from pathlib import Path

from evostream.core.stack.ports import HOST


def server_properties(
    broker_port: int,
    controller_port: int,
    data_dir: Path,
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
    """
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": voters or f"{node_id}@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{broker_port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{broker_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
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
