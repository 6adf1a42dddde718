"""Shared fixtures: the real local Kafka broker, started once per test session by the project's own launcher."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from evostream.settings import Settings, load_settings
from evostream.stack import LocalStack

DATA = Path(__file__).parent / "data"


def stack_settings(root: Path, **overrides: object) -> Settings:
    """Settings for a private broker under ``root`` on free ports; the jar cache stays the user's, shared."""
    values: dict[str, object] = {"stack_dir": root, "broker_port": 0, "controller_port": 0, "ready_timeout_s": 90.0}
    return load_settings(**(values | overrides))


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real broker: EVOSTREAM_TEST_BOOTSTRAP if set, else one the launcher starts."""
    external = os.environ.get("EVOSTREAM_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    stack = LocalStack(stack_settings(tmp_path_factory.mktemp("kafka")))
    state = stack.up()
    try:
        yield state.bootstrap
    finally:
        # Destroy the Kafka clients tests left behind before their broker goes, or librdkafka logs reconnect
        # failures over pytest's closing summary.
        gc.collect()
        stack.down()
