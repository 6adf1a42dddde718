"""A third-party sink, installed with pip from its own tiny distribution (``tests/plugins/thirdparty``), is found by
its entry point and run by ``evostream sinks run`` with no change to evostream; it passes the same contract."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from evostream.plugins.api import Sink, SinkContext
from tests.plugins.contract import Kind, SinkContract
from tests.plugins.kafka import marked, produce

PACKAGE = Path(__file__).parent / "thirdparty"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed by pip into a folder of its own (built from a copy: pip builds in the source tree)."""
    root = tmp_path_factory.mktemp("thirdparty")
    shutil.copytree(PACKAGE, root / "src")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(root / "site"),
            str(root / "src"),
        ],
        check=True,
    )
    return root / "site"


@pytest.fixture(scope="module", params=["checkout", "wheel"])
def python(request: pytest.FixtureRequest) -> str:
    """The interpreter that runs evostream: this checkout's environment, or a clean one holding only the built wheel."""
    return sys.executable if request.param == "checkout" else str(request.getfixturevalue("wheel_python"))


def env_with(site: Path) -> dict[str, str]:
    # the site alone: an inherited PYTHONPATH naming a checkout would hide the wheel's own files
    return {**os.environ, "PYTHONPATH": str(site)}


def test_the_installed_sink_is_listed_and_loads(site: Path, python: str) -> None:
    done = subprocess.run(
        [python, "-m", "evostream.cli", "sinks", "list"],
        env=env_with(site),
        cwd=site,  # not the checkout: `python -m` puts the working folder first on the path
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("jsonl "))
    assert "evostream_jsonl:JsonlSink" in line and "evostream-jsonl 0.1.0" in line and line.endswith(" ok"), line


@pytest.mark.integration
def test_evostream_sinks_run_runs_it_unchanged(site: Path, python: str, kafka: str, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex[:8]
    values = marked(("evo.completions", "evo.alerts"), 3, marker)
    produce(kafka, values)
    out = tmp_path / "out.jsonl"
    env = {**env_with(site), "EVOSTREAM_SINKS": "jsonl", "EVOSTREAM_SINKS_DIR": str(tmp_path / "sinks")}
    log = tmp_path / "run.log"
    proc = subprocess.Popen(
        [
            python,
            "-m",
            "evostream.cli",
            "sinks",
            "run",
            "--bootstrap",
            kafka,
            "--every",
            "0",
            "-o",
            f"jsonl.path={out}",
        ],
        env=env,
        cwd=site,
        stderr=log.open("wb"),
    )

    def mine() -> list[dict[str, object]]:
        if not out.is_file():
            return []
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        return [r for r in rows if str(r["value"].get("trace_id", "")).startswith(marker)]  # type: ignore[attr-defined]

    try:
        deadline = time.monotonic() + 120
        while len(mine()) < 6 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, log.read_text()
    got = Counter((r["topic"], r["schema"]) for r in mine())
    assert got == {("evo.completions", "Completion"): 3, ("evo.alerts", "RiskAlert"): 3}, log.read_text()


class TestThirdPartyContract(SinkContract):
    sink_name = "jsonl"

    @pytest.fixture(autouse=True)
    def _installed(self, site: Path) -> Iterator[None]:
        sys.path.insert(0, str(site))
        try:
            yield
        finally:
            sys.path.remove(str(site))

    def options(self, tmp_path: Path) -> dict[str, str]:
        return {"path": str(tmp_path / "records.jsonl")}

    def make_sink(self, ctx: SinkContext) -> Sink:
        sink: Sink = importlib.import_module("evostream_jsonl").JsonlSink(ctx)
        return sink

    def stored(self, sink: Sink) -> Counter[str]:
        path: Path = sink.path  # type: ignore[attr-defined]
        lines = path.read_text().splitlines() if path.is_file() else []
        return Counter(json.loads(line)["key"] for line in lines)

    @contextlib.contextmanager
    def failing(self, sink: Sink, kind: Kind, times: int) -> Iterator[None]:
        path: Path = sink.path  # type: ignore[attr-defined]
        if kind == "permanent":  # the sink's own size rule refuses every record
            sink.max_line_bytes, before = 10, sink.max_line_bytes  # type: ignore[attr-defined]
            try:
                yield
            finally:
                sink.max_line_bytes = before  # type: ignore[attr-defined]
            return
        # the file's place is taken by a folder: open() fails for real until it is gone again
        real, calls = sink.write, 0
        path.mkdir()

        def write(records: object) -> object:
            nonlocal calls
            result = real(records)  # type: ignore[arg-type]
            calls += 1
            if calls == times:
                path.rmdir()
            return result

        sink.write = write  # type: ignore[method-assign]
        try:
            yield
        finally:
            del sink.write
            if path.is_dir():
                path.rmdir()

    def bad_options(self, tmp_path: Path) -> dict[str, str] | None:
        return {"max_line_bytes": "0"}
