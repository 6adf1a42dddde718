"""A real cluster: three KRaft nodes on loopback started by the project's launcher (replication 3, min in-sync 2);
one is killed with SIGKILL under load and restarted. Nothing acknowledged is lost, producing and serving go on while
it is down, and it rejoins every ISR. Its own three JVMs, not the shared ``kafka`` fixture's broker.

The long form, with the figures in docs/benchmarks.md, is ``python -m bench.cluster``."""

from __future__ import annotations

import gc
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin._config import ConfigResource

from bench.cluster import run_outage
from evostream.core.bus.admin import admin_client, cluster_metadata
from evostream.core.errors import PortInUseError, StackError
from evostream.core.stack import LocalCluster, resolve_bootstrap
from evostream.core.stack.cluster import ClusterLayout, under_replicated
from evostream.schemas.catalog import CATALOG, REQUESTS
from tests.conftest import stack_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, ClusterLayout]]:
    stack = LocalCluster(stack_settings(tmp_path_factory.mktemp("cluster"), ready_timeout_s=180.0))
    layout = stack.up()
    try:
        yield stack, layout
    finally:
        gc.collect()  # the clients tests left behind go before their cluster
        stack.down()


def test_three_nodes_one_quorum_and_the_catalog_replicated_three_times(
    cluster: tuple[LocalCluster, ClusterLayout], tmp_path: Path
) -> None:
    stack, layout = cluster
    md = cluster_metadata(layout.bootstrap, 10)
    assert sorted(md.brokers) == [1, 2, 3]
    assert [n.state is not None for n in stack.status()] == [True, True, True]
    for spec in CATALOG:
        parts = md.topics[spec.name].partitions.values()
        assert {len(p.replicas) for p in parts} == {3}, spec.name
    resource = ConfigResource(ConfigResource.Type.TOPIC, REQUESTS)
    admin = admin_client(layout.bootstrap)  # held until the answer came: a client collected early never completes it
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["min.insync.replicas"].value == "2"
    assert under_replicated(layout.bootstrap, [s.name for s in CATALOG]) == {}
    # clients of this stack folder find every node
    assert resolve_bootstrap(stack.settings) == layout.bootstrap
    with pytest.raises(StackError, match="no node 4"):
        stack.kill_node(4)


def test_killing_a_node_under_load_loses_nothing_serving_goes_on_and_the_node_rejoins(
    cluster: tuple[LocalCluster, ClusterLayout],
) -> None:
    stack, layout = cluster
    # down longer than Kafka's broker session timeout (9 s): until the controller fences the dead node, it stays in
    # every partition's ISR and acks=all waits on all of them, so with 5 s down a CI run once saw no request
    # answered while the node was down (docs/benchmarks.md, "A real cluster")
    report = run_outage(stack, layout, rate=100, before_s=3, down_s=15, serve=True)
    acc = report.accounting
    assert report.producer_error is None and report.delivery_failures == 0
    assert acc.sent > 500
    assert acc.lost == () and acc.unknown == ()
    # idempotence: no record written twice; a duplicate read is a redelivery of the same offset, recognised by it
    assert acc.written_twice == 0
    assert acc.duplicates == acc.redelivered
    # the killed node was the consumer group's coordinator and led a partition of the load
    assert report.led
    # producing and serving went on while it was down
    assert report.acked_during_outage > 0
    assert [p for _, _, p in report.requests if p] == []
    assert report.requests_outage, "no request was answered while the node was down"
    # it rejoined: all three replicas of every partition in sync again, on every node's word
    assert [n.state is not None for n in stack.status()] == [True, True, True]
    assert under_replicated(layout.bootstrap, [s.name for s in CATALOG]) == {}
    offsets = cluster_metadata(layout.bootstrap, 10).topics["__consumer_offsets"].partitions.values()
    assert {len(p.replicas) for p in offsets} == {3}  # the group's commits survive a node, too
    for node in layout.nodes:
        md = cluster_metadata(node.bootstrap, 10)
        assert {len(p.isrs) for p in md.topics[REQUESTS].partitions.values()} == {3}


def test_a_port_in_use_is_a_clear_error_and_the_next_start_takes_new_settings(tmp_path: Path) -> None:
    with socket.socket() as held, socket.socket() as held_too:
        for s in (held, held_too):
            s.bind(("127.0.0.1", 0))
            s.listen(1)
        first, second = held.getsockname()[1], held_too.getsockname()[1]
        with pytest.raises(PortInUseError, match=rf"node 1's broker port 127.0.0.1:{first} is already in use"):
            LocalCluster(stack_settings(tmp_path, broker_port=first)).up()
        # nothing was formatted with the refused ports: the next start plans its own
        with pytest.raises(PortInUseError, match=rf"node 1's broker port 127.0.0.1:{second} is already in use"):
            LocalCluster(stack_settings(tmp_path, broker_port=second)).up()
    assert not list(tmp_path.glob("cluster/node-*/data/meta.properties"))
