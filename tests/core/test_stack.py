"""The launcher against a real broker: start, reuse, clear errors, controlled shutdown."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from evostream.core.bus.admin import cluster_metadata, wait_for_broker
from evostream.core.errors import BrokerStartError, BrokerUnavailableError, MavenError, PortInUseError
from evostream.core.stack import LocalStack
from evostream.core.stack import broker as broker_module
from evostream.core.stack.jars import resolve_kafka_libs
from evostream.core.stack.ports import free_port
from evostream.schemas import CATALOG
from tests.conftest import stack_settings

pytestmark = pytest.mark.integration


def test_catalog_topics_exist_with_their_layout(kafka: str) -> None:
    md = cluster_metadata(kafka, 10)
    for spec in CATALOG:
        assert spec.name in md.topics, spec.name
        assert len(md.topics[spec.name].partitions) == spec.partitions


def test_second_up_reuses_the_running_broker_then_down_stops_it(tmp_path: Path) -> None:
    stack = LocalStack(stack_settings(tmp_path))
    first = stack.up()
    try:
        again = LocalStack(stack_settings(tmp_path)).up()
        assert again.pid == first.pid and again.bootstrap == first.bootstrap
        status = stack.status()
        assert status.running and {s.name for s in CATALOG} <= set(status.topics)
    finally:
        assert stack.down(timeout_s=30)
    with pytest.raises(ProcessLookupError):
        os.kill(first.pid, 0)
    assert stack.read_state() is None
    assert not stack.status().running
    # the controlled shutdown is in the broker's own log
    assert "shut down completed" in (tmp_path / "logs" / "server.log").read_text()


def test_a_cluster_id_that_starts_with_a_dash_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # one random id in 64 starts with "-"; as "-t -xyz" the storage tool read it as an option and refused
    random_id = broker_module.new_cluster_id
    monkeypatch.setattr(broker_module, "new_cluster_id", lambda: "-" + random_id()[1:])
    stack = LocalStack(stack_settings(tmp_path))
    try:
        state = stack.up()
        assert cluster_metadata(state.bootstrap, 10).cluster_id.startswith("-")
    finally:
        stack.down()


def test_restart_keeps_the_data(tmp_path: Path) -> None:
    stack = LocalStack(stack_settings(tmp_path))
    state = stack.up()
    stack.down()
    again = stack.up()  # new free ports; the formatted log dir is reused
    try:
        assert again.pid != state.pid
        assert {s.name for s in CATALOG} <= set(cluster_metadata(again.bootstrap, 10).topics)
    finally:
        stack.down()


def test_port_clash_is_a_clear_error(kafka: str, tmp_path: Path) -> None:
    taken = int(kafka.rsplit(":", 1)[1])
    with pytest.raises(
        PortInUseError, match=rf"broker port 127.0.0.1:{taken} is already in use.*EVOSTREAM_BROKER_PORT"
    ):
        LocalStack(stack_settings(tmp_path, broker_port=taken)).up()


def test_broken_data_dir_fails_with_the_broker_log_tail(tmp_path: Path) -> None:
    stack = LocalStack(stack_settings(tmp_path))
    stack.up()
    stack.down()
    meta = tmp_path / "data" / "meta.properties"
    meta.write_text(meta.read_text().replace("node.id=1", "node.id=7"))
    t0 = time.monotonic()
    with pytest.raises(BrokerStartError, match=r"(?s)exited with code .*last lines of .*server.log"):
        stack.up()
    assert time.monotonic() - t0 < 60
    assert stack.read_state() is None


def test_no_broker_is_reported_within_30_seconds() -> None:
    dead = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=rf"no Kafka broker answers at {dead}.*evostream stack up"):
        wait_for_broker(dead, timeout_s=5)
    assert time.monotonic() - t0 < 30


def test_maven_offline_with_nothing_cached(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(MavenError, match="Maven Central is not reachable and nothing is cached"):
        resolve_kafka_libs(tmp_path / "cache", "4.1.2", "2.24.3", offline=True, maven_repo_local=tmp_path / "m2")
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "cache" / "kafka-4.1.2" / "lib").exists()
