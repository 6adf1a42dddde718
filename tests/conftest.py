"""Shared fixtures: the real local Kafka broker, started once per test session by the project's own launcher, and
the markers every test gets from what it uses: ``integration`` (the broker) and ``browser`` (Chromium), so that
``make test-fast`` (``-m "not integration and not browser"``) never starts either."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from evostream.core.settings import Settings, load_settings
from evostream.core.stack import LocalCluster, LocalStack

DATA = Path(__file__).parent / "data"
BROKER_FIXTURES = frozenset({"kafka"})  # every fixture that needs the broker depends on this one
BROWSER_FIXTURES = frozenset({"page"})  # tests/api/test_dashboard.py: a Chromium page driven by Playwright


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the fixtures it reaches (its whole fixture closure), not by the folder it sits in."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & BROKER_FIXTURES:
            item.add_marker(pytest.mark.integration)
        if used & BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)


def pytest_configure(config: pytest.Config) -> None:
    """Where integration tests are deselected, a test that starts a broker on its own fails instead of running one."""
    if "not integration" not in (config.option.markexpr or ""):
        return

    def refuse(self: LocalStack) -> object:
        raise RuntimeError("this test starts a Kafka broker: it needs the kafka fixture or the integration marker")

    LocalStack.up = refuse  # type: ignore[method-assign]
    LocalCluster.up = refuse  # type: ignore[method-assign]


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
    # the broker requires a login: this process finds its credentials file by its address, and the processes tests
    # start (CLI commands, workers) through the environment
    os.environ["EVOSTREAM_KAFKA_CREDENTIALS"] = str(stack.credentials_file)
    try:
        yield state.bootstrap
    finally:
        os.environ.pop("EVOSTREAM_KAFKA_CREDENTIALS", None)
        # Destroy the Kafka clients tests left behind before their broker goes, or librdkafka logs reconnect
        # failures over pytest's closing summary.
        gc.collect()
        stack.down()


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, as ``pip wheel`` (and the Docker image's ``pip install .``) builds it."""
    from tests import wheel as wheels

    return wheels.build(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def wheel_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a clean virtualenv holding only the wheel (its dependencies linked from this environment)."""
    from tests import wheel as wheels

    return wheels.clean_venv(tmp_path_factory.mktemp("wheel-venv"), wheel)
