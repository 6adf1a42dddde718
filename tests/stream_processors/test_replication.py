"""The topics Faust creates for the processors (changelogs, repartition, profile deltas) get the cluster's replication:
1 on the single-node stack, 3 on the local cluster, whose brokers need 2 in-sync replicas for an acks=all write.
Before, they had 1 replica everywhere: on the cluster every changelog write failed (NOT_ENOUGH_REPLICAS), and a
node lost took its changelog partitions with it."""

from __future__ import annotations

import gc
import time
import uuid
from pathlib import Path

import pytest

from evostream.core.bus.admin import cluster_metadata, default_replication, replication_choice
from evostream.core.bus.consumer import EventConsumer
from evostream.core.bus.producer import EventProducer
from evostream.core.stack import LocalCluster
from evostream.schemas.catalog import COMPLETIONS, RISK, STEP_BLOCKS
from evostream.schemas.codec import RecordCodec
from evostream.stream_processors.risk.tracker import TABLE
from tests.conftest import stack_settings
from tests.stream_processors.harness import Worker, as_block, read
from tests.stream_processors.test_horizon import completion, step


def test_the_cluster_says_the_replication_else_one_per_broker_up_to_three() -> None:
    assert replication_choice(1, 1) == 1  # the single-node stack
    assert replication_choice(3, 3) == 3  # the local cluster
    assert replication_choice(2, 5) == 2  # what the cluster says wins
    assert replication_choice(None, 1) == 1 and replication_choice(None, 2) == 2 and replication_choice(None, 5) == 3
    assert replication_choice(0, 4) == 3 and replication_choice(None, 0) == 1


@pytest.mark.integration
def test_the_single_node_broker_says_one(kafka: str) -> None:
    assert default_replication(kafka) == 1


@pytest.mark.integration
def test_the_processors_replicate_their_topics_three_times_on_the_local_cluster(tmp_path: Path) -> None:
    """Old code: the changelogs had 1 replica, each state write was refused (NOT_ENOUGH_REPLICAS), no state stayed."""
    stack = LocalCluster(stack_settings(tmp_path / "cluster", ready_timeout_s=180.0))
    layout = stack.up()
    w = Worker(layout.bootstrap, tmp_path)
    w.env["EVOSTREAM_KAFKA_CREDENTIALS"] = str(stack.credentials_file)  # the cluster's logins, not the fixture's
    try:
        w.start()
        trace, t0 = f"replicated-{uuid.uuid4().hex[:8]}", time.time_ns() // 1000
        producer = EventProducer(layout.bootstrap)
        producer.send(STEP_BLOCKS, trace, as_block(*(step(trace, i, t0) for i in range(2))))
        producer.send(COMPLETIONS, trace, RecordCodec("Completion").encode(completion(trace, 2, t0)))
        producer.flush()
        reports = read(layout.bootstrap, RISK, "RiskReport", lambda got: any(r["trace_id"] == trace for r in got))
        assert [r["stage"] for r in reports if r["trace_id"] == trace] == ["FINAL"]
        app_id = w.env["EVOSTREAM_PROCESSORS_APP_ID"]
        changelog = f"{app_id}-{TABLE}-changelog"
        stored: dict[bytes, bytes | None] = {}
        with EventConsumer(layout.bootstrap, f"test-{uuid.uuid4().hex}", [changelog]) as consumer:
            deadline = time.monotonic() + 60
            while trace.encode() not in stored and time.monotonic() < deadline:
                stored.update((m.key(), m.value()) for m in consumer.poll_batch(1000, 0.5))
        assert stored.get(trace.encode()), "the trace's state never reached its changelog"
        topics = cluster_metadata(layout.bootstrap, 10).topics
        mine = {name: t for name, t in topics.items() if name.startswith(app_id)}
        assert changelog in mine and f"{app_id}-profile-deltas" in mine
        assert {name: {len(p.replicas) for p in t.partitions.values()} for name, t in mine.items()} == {
            name: {3} for name in mine
        }
        assert w.proc is not None and w.proc.poll() is None
    finally:
        w.stop()
        gc.collect()
        stack.down()
