"""How ``evostream status`` finds components where nothing supervises them (systemd, a container): by the command
lines of this machine's processes and PID 1's; and how it asks an HTTP component."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer

from evostream.consumers.governance.projection import replay
from evostream.core.stack.ports import free_port
from evostream.wiring.status import (
    command_words,
    evostream_args,
    find_processes,
    pid1_component,
    probe,
    rollout_doc,
    versions_of,
)
from evostream.wiring.supervise import Component
from evostream.wiring.supervisor import process_started_at
from tests.consumers.governance.test_projection import M
from tests.consumers.governance.test_rollouts import PLAN, governed, start, step

SERVE = Component("serve", ("serve", "--governed", "m"), ("evostream-inference",))
SINKS = Component("sinks", ("sinks", "run", "--sinks", "sqlite"))


def test_a_component_is_named_by_its_command_words() -> None:
    assert command_words(SERVE) == ("serve",)
    assert command_words(SINKS) == ("sinks", "run")


def test_evostream_command_lines_are_recognised_however_started() -> None:
    assert evostream_args(["/opt/evostream/bin/evostream", "serve", "--governed", "m"]) == ["serve", "--governed", "m"]
    assert evostream_args(["/usr/bin/python3", "-m", "evostream.cli", "sinks", "run"]) == ["sinks", "run"]
    assert evostream_args(["/usr/bin/python3", "-m", "pytest"]) is None
    assert evostream_args(["evostream-like", "serve"]) is None


def test_pid1_names_the_container_component() -> None:
    table = [SERVE, SINKS]
    assert pid1_component(table, ["/usr/local/bin/evostream", "sinks", "run"]) == [SINKS]
    assert pid1_component(table, ["/usr/local/bin/evostream", "up", "--no-api"]) == table
    assert pid1_component(table, ["/usr/local/bin/evostream", "topics", "--create"]) is None
    assert pid1_component(table, ["/sbin/init"]) is None
    assert pid1_component(table, None) is None


def test_a_running_component_is_found_by_its_command_line() -> None:
    # python -c keeps the rest of its command line as it is: it reads as `python -m evostream.cli sinks run`
    code = "import time; time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code, "-m", "evostream.cli", "sinks", "run", "--sinks", "x"])
    try:
        deadline = time.monotonic() + 10
        while proc.pid not in find_processes(("sinks", "run")):  # until it has exec'd
            assert time.monotonic() < deadline, "the process was never found"
            time.sleep(0.02)
        assert proc.pid not in find_processes(("serve",))
        started = process_started_at(proc.pid)
        assert started is not None and abs(started - time.time()) < 30  # it began just now
    finally:
        proc.kill()
        proc.wait()
    assert proc.pid not in find_processes(("sinks", "run"))


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(401 if self.headers.get("Host") == "localhost" else 400)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@contextmanager
def server() -> Iterator[int]:
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_probe_reports_the_status_it_got_or_none() -> None:
    with server() as port:
        assert probe(f"http://127.0.0.1:{port}/health") == 401  # asked by the name the API accepts on loopback
    assert probe(f"http://127.0.0.1:{free_port()}/health", timeout_s=1.0) is None


def test_the_versions_served_come_from_the_replayed_registry() -> None:
    """Production per model, and a running rollout's candidate, weight and step, from a real signed chain."""
    chain = governed()  # M: v1 in production, v2 approved
    registry, findings = replay([(i, ev) for i, ev in enumerate(chain.events)])
    assert findings == [] and versions_of(registry) == {M: {"production": "v1", "rollout": None}}
    start(chain)
    step(chain, 0)
    registry, findings = replay([(i, ev) for i, ev in enumerate(chain.events)])
    assert findings == []
    assert versions_of(registry)[M] == {
        "production": "v1",
        "rollout": {
            "rollout_id": "ro-1",
            "candidate": "v2",
            "incumbent": "v1",
            "weight": PLAN["steps"][0],
            "step": 0,
            "status": "running",
        },
    }
    assert rollout_doc(None) is None
