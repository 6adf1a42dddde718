"""The local cluster's layout, without a broker: ports per node and each node's server.properties."""

from __future__ import annotations

from pathlib import Path

import pytest

from evostream.core.errors import StackError
from evostream.core.stack.cluster import ClusterLayout, NodeSpec, plan_ports
from evostream.core.stack.config import server_properties


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_fixed_ports_step_by_two_from_the_settings() -> None:
    assert plan_ports(9092, 9093, 3, lambda _: 0) == [(9092, 9093), (9094, 9095), (9096, 9097)]


def test_free_ports_are_all_different() -> None:
    counter = iter(range(40000, 40100))
    ports = plan_ports(0, 0, 3, lambda avoid: next(p for p in counter if p not in avoid))
    flat = [p for pair in ports for p in pair]
    assert len(set(flat)) == 6


def test_colliding_ports_are_refused() -> None:
    with pytest.raises(StackError, match="collide"):
        plan_ports(9092, 9094, 3, lambda _: 0)  # node 2's broker port would be node 1's controller port


def test_each_node_votes_in_one_quorum_with_replication_three_and_min_insync_two(tmp_path: Path) -> None:
    layout = ClusterLayout("id", "4.1.2", (NodeSpec(1, 9092, 9093), NodeSpec(2, 9094, 9095), NodeSpec(3, 9096, 9097)))
    p = props(
        server_properties(9094, 9095, tmp_path, "pw", node_id=2, voters=layout.voters, replication=3, min_insync=2)
    )
    assert p["node.id"] == "2"
    assert p["controller.quorum.voters"] == "1@127.0.0.1:9093,2@127.0.0.1:9095,3@127.0.0.1:9097"
    assert p["listeners"] == "CLIENT://127.0.0.1:9094,CONTROLLER://127.0.0.1:9095"
    for key in ("default.replication.factor", "offsets.topic.replication.factor"):
        assert p[key] == "3"
    assert p["transaction.state.log.replication.factor"] == "3"
    for key in ("min.insync.replicas", "transaction.state.log.min.isr"):
        assert p[key] == "2"
    assert layout.bootstrap == "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"


def test_a_node_alone_keeps_its_single_node_layout(tmp_path: Path) -> None:
    p = props(server_properties(9092, 9093, tmp_path, "pw"))
    assert p["node.id"] == "1" and p["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert p["offsets.topic.replication.factor"] == "1" and p["min.insync.replicas"] == "1"
