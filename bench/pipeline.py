"""The whole pipeline on a private broker, as users run it: ``evostream serve``, ``process`` and ``sinks run`` as
real processes on a broker the project's launcher starts on fixed ports (a restart comes back at the same address).
Shared by the chaos and soak benchmarks and their short forms in the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.procs import stop
from evostream.core.bus.consumer import EventConsumer
from evostream.core.errors import EvoError
from evostream.core.settings import Settings, load_settings
from evostream.core.stack import LocalStack
from evostream.core.stack.ports import free_port
from evostream.producers.client import Reply
from evostream.schemas.codec import RecordCodec

CLI = [sys.executable, "-m", "evostream.cli"]


class Pipeline:
    """A private broker and the three services on it, each logging to its own file under ``root``."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.extra_env = env or {}
        root.mkdir(parents=True, exist_ok=True)
        self.settings: Settings = load_settings(
            stack_dir=root / "stack",
            broker_port=free_port(),
            controller_port=free_port(),
            ready_timeout_s=90.0,
        )
        self.stack = LocalStack(self.settings)
        self.bootstrap = ""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.args: dict[str, tuple[str, ...]] = {}
        self.env: dict[str, str] = {}

    def up(self) -> None:
        self.bootstrap = self.stack.up().bootstrap
        self.env = {
            **os.environ,
            "EVOSTREAM_BOOTSTRAP_SERVERS": self.bootstrap,
            "EVOSTREAM_STACK_DIR": str(self.settings.stack_dir),
            "EVOSTREAM_GOVERNANCE_DIR": str(self.root / "governance"),
            "EVOSTREAM_SINKS_DIR": str(self.root / "sinks"),
            "EVOSTREAM_PROCESSORS_DIR": str(self.root / "processors"),
            "EVOSTREAM_PROCESSORS_APP_ID": f"pipeline-{uuid.uuid4().hex[:8]}",
            "HF_HUB_OFFLINE": "1",
            **self.extra_env,
        }
        self.cli("governance", "init")
        self.start("serve", "serve", "--model", "default", "--no-embed", "--max-batch", "8")
        self.start("process", "process", "--loglevel", "INFO")
        self.start("sinks", "sinks", "run", "--sinks", "sqlite", "--every", "0")

    def cli(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout_s)

    def start(self, name: str, *args: str) -> None:
        self.args[name] = args
        with (self.root / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen([*CLI, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def kill_service(self, name: str, ready: str, timeout_s: float = 120.0) -> None:
        """SIGKILL service ``name`` (no chance to commit anything), start it again as it was started, and wait until
        its log says ``ready`` once more."""
        seen = self.log(name).count(ready)
        self.procs[name].kill()
        self.procs[name].wait(30)
        self.start(name, *self.args[name])
        deadline = time.monotonic() + timeout_s
        while self.log(name).count(ready) == seen:
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} was not ready again in {timeout_s:.0f} s")
            time.sleep(0.1)

    def rss_mb(self, name: str) -> float:
        """The resident memory of service ``name`` now, in MiB (from /proc)."""
        for line in Path(f"/proc/{self.procs[name].pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"{name} has no VmRSS in /proc")

    def topic_bytes(self, contains: str) -> dict[str, int]:
        """Bytes on the broker's disk of each topic whose name contains ``contains``, summed over its partitions."""
        sizes: dict[str, int] = {}
        for part in (self.settings.stack_dir / "data").iterdir():
            topic = part.name.rsplit("-", 1)[0]
            if part.is_dir() and contains in topic:
                sizes[topic] = sizes.get(topic, 0) + sum(f.stat().st_size for f in part.glob("*.log"))
        return sizes

    def restart_worker(self, timeout_s: float = 180.0) -> float:
        """Stop ``evostream process`` (SIGTERM) and start it again; seconds until the new worker is ready."""
        proc = self.procs["process"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        ready_before = self.log("process").count("Worker]: Ready")
        t0 = time.monotonic()
        self.start("process", "process", "--loglevel", "INFO")
        while self.log("process").count("Worker]: Ready") == ready_before:
            self.check_alive()
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"the restarted worker was not ready in {timeout_s:.0f} s")
            time.sleep(0.1)
        return time.monotonic() - t0

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")

    def await_ready(self, first: Reply, db: Path, timeout_s: float = 180.0) -> None:
        """Faults start once every service is up: the first reply is answered, the worker is ready, the sink wrote."""
        first.result(timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        while "Worker]: Ready" not in self.log("process") or sqlite_counts(db)[0] == 0:
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pipeline was not ready in {timeout_s:.0f} s")
            time.sleep(0.2)

    def broker_pid(self) -> int:
        state = self.stack.read_state()
        if state is None:
            raise RuntimeError("the chaos broker is not running")
        return state.pid

    def kill_broker(self) -> float:
        """SIGKILL the broker, then start it again at the same address; the seconds the restart took."""
        pid = self.broker_pid()
        os.kill(pid, signal.SIGKILL)
        while self.stack.read_state() is not None:
            time.sleep(0.05)
        time.sleep(1.0)  # clients see the outage before it ends
        t0 = time.monotonic()
        if self.stack.up().bootstrap != self.bootstrap:
            raise RuntimeError("the restarted broker came back at another address")
        return time.monotonic() - t0

    @contextlib.contextmanager
    def paused_broker(self) -> Iterator[None]:
        pid = self.broker_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def down(self) -> None:
        for name, proc in self.procs.items():
            stop(proc, self.root / f"{name}.log", name)
        self.stack.down(timeout_s=30)


def read_topic(bootstrap: str, topic: str, schema: str, expect: int, timeout_s: float) -> list[dict[str, object]]:
    """Every record of ``topic`` from the start, once at least ``expect`` are there and the topic is quiet."""
    codec = RecordCodec(schema)
    out: list[dict[str, object]] = []
    with EventConsumer(bootstrap, f"chaos-{uuid.uuid4().hex}", [topic]) as consumer:
        deadline = time.monotonic() + timeout_s
        quiet = 0
        while time.monotonic() < deadline and (len(out) < expect or quiet < 3):
            batch = [codec.decode(m.value() or b"") for m in consumer.poll_batch(1000, 0.5)]
            out += batch
            quiet = 0 if batch else quiet + 1
    return out


def sqlite_counts(db: Path) -> tuple[int, int]:
    """Rows of the SQLite sink's ``traces`` table (one per Completion record it consumed), and distinct requests."""
    if not db.is_file():
        return 0, 0
    with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        rows, requests = conn.execute("SELECT count(*), count(DISTINCT request_id) FROM traces").fetchone()
    return int(rows), int(requests)


def answered(reply: Reply, timeout_s: float = 120.0) -> bool:
    """Whether ``reply``'s Completion came: a reply that never came is counted, not raised."""
    try:
        reply.result(timeout_s=timeout_s)
    except EvoError:
        return False
    return True
