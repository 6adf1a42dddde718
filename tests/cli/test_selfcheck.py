"""End-to-end proof of the transport: records go through the real broker and come back decoded and equal."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from evostream.cli.selfcheck import round_trip
from evostream.core.bus.producer import EventProducer
from evostream.core.errors import DeliveryError
from evostream.core.stack.ports import free_port

pytestmark = pytest.mark.integration


def test_ten_thousand_steps_round_trip(kafka: str) -> None:
    rt = round_trip(kafka, count=10_000, traces=100, partitions=3)
    assert rt.records == 10_000  # round_trip raises on any missing, duplicated or different record
    assert rt.produce_s > 0 and rt.consume_s > 0


def test_producing_to_a_missing_topic_surfaces_as_an_error(kafka: str) -> None:
    producer = EventProducer(kafka, send_timeout_s=5)
    with pytest.raises(DeliveryError, match=r"evo\.no-such-topic"):
        producer.connect("evo.no-such-topic", timeout_s=5)
    producer.send("evo.no-such-topic", b"k", b"v")
    with pytest.raises(DeliveryError, match=r"1 records (failed delivery|were not acknowledged)"):
        producer.flush(10)
    assert producer.discard() == 1


def test_unacknowledged_records_are_reported(kafka: str) -> None:
    # log_level 0: the failure is asserted below; librdkafka's retry log would otherwise bury pytest's summary line
    quiet = {"message.timeout.ms": 2000, "log_level": 0}
    producer = EventProducer(f"127.0.0.1:{free_port()}", config=quiet)
    producer.send("evo.steps", b"k", b"v")
    with pytest.raises(DeliveryError, match=r"1 records (failed delivery|were not acknowledged)"):
        producer.flush(10)


def test_cli_selfcheck_without_broker_says_so_quickly() -> None:
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "evostream.cli", "selfcheck", "--bootstrap", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "error: no Kafka broker answers at" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - t0 < 30


def test_cli_selfcheck_against_the_broker(kafka: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "evostream.cli", "selfcheck", "--count", "2000", "--bootstrap", kafka],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "round trip OK" in done.stdout and "2000 records" in done.stdout
