"""The supervisor with real child processes (small Python programs, no broker): restarts after back-off, state files,
stop in reverse order, SIGKILL past the budget, nothing left behind."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from evostream.wiring.supervise import Backoff, Component
from evostream.wiring.supervisor import (
    ChildRunner,
    Supervisor,
    log_path,
    pid_alive,
    read_run,
    read_state,
    running_supervisor,
)


def until(what: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def program(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@contextmanager
def running(sup: Supervisor) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=sup.run, args=(stop,))
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive()


def test_a_crashing_component_is_restarted_after_its_back_off(tmp_path: Path) -> None:
    said: list[str] = []
    sup = Supervisor(tmp_path, "127.0.0.1:1", Backoff(initial_s=0.3, cap_s=5.0), 5.0, said.append)
    crash = program("import sys, time; print('working', flush=True); time.sleep(0.2); sys.exit(3)")
    sup.add(Component("crashy", ("crashy",)), ChildRunner(crash, os.environ))
    with running(sup):
        until(lambda: (s := read_state(tmp_path, "crashy")) is not None and s.restarts >= 2)
        run = running_supervisor(tmp_path)
        assert run is not None and run.pid == os.getpid() and [c.name for c in run.components] == ["crashy"]
    state = read_state(tmp_path, "crashy")
    assert state is not None and state.state == "stopped" and state.last_exit_code in (3, -15)
    exits = [line for line in said if line.startswith("crashy: exited with code 3 after 0.")]
    assert exits[:2] == [
        exits[0].rsplit(";", 1)[0] + "; restart in 0.3 s",
        exits[1].rsplit(";", 1)[0] + "; restart in 0.6 s",
    ]
    log = log_path(tmp_path, "crashy").read_text()
    assert log.count("evostream up: start ") >= 3 and log.count("working") >= 2, log
    assert "crashy: restarted (pid" in "\n".join(said)
    info = read_run(tmp_path)
    assert info is not None and info.stopped_at is not None and running_supervisor(tmp_path) is None


def test_back_off_spaces_the_restarts(tmp_path: Path) -> None:
    starts: list[float] = []
    sup = Supervisor(tmp_path, "b", Backoff(initial_s=0.4, cap_s=5.0), 5.0, lambda m: None)
    sup.add(Component("quick", ("quick",)), ChildRunner(program("raise SystemExit(1)"), os.environ))
    with running(sup):
        seen = 0
        deadline = time.monotonic() + 20
        while len(starts) < 3 and time.monotonic() < deadline:
            s = read_state(tmp_path, "quick")
            if s is not None and s.starts > seen and s.started_at is not None:
                seen = s.starts
                starts.append(s.started_at)
            time.sleep(0.01)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) == 2 and 0.4 <= gaps[0] < gaps[1] and gaps[1] >= 0.8, gaps


def test_stop_goes_in_reverse_order_and_kills_what_does_not_stop(tmp_path: Path) -> None:
    order = tmp_path / "order"
    polite = (
        "import signal, sys, time, pathlib\n"
        "def bye(*_):\n"
        "    with open({order!r}, 'a') as f: f.write('{name}\\n')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "pathlib.Path({ready!r}).touch()\n"
        "time.sleep(60)\n"
    )
    stubborn = (
        "import signal, subprocess, sys, time, pathlib\n"
        "signal.signal(signal.SIGTERM, lambda *_: open({order!r}, 'a').write('{name}\\n'))\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "pathlib.Path({ready!r}).write_text(str(child.pid))\n"
        "while True: time.sleep(0.1)\n"
    )
    sup = Supervisor(tmp_path, "b", Backoff(), 1.0, lambda m: None)
    for name, code in (("first", polite), ("second", polite), ("third", stubborn)):
        src = code.format(order=str(order), name=name, ready=str(tmp_path / f"{name}.ready"))
        sup.add(Component(name, (name,)), ChildRunner(program(src), os.environ))
    with running(sup):
        until(lambda: all((tmp_path / f"{n}.ready").exists() for n in ("first", "second", "third")))
        until(lambda: (tmp_path / "third.ready").read_text() != "")
        pids = [s.pid for n in ("first", "second", "third") if (s := read_state(tmp_path, n)) is not None]
        grandchild = int((tmp_path / "third.ready").read_text())
    assert order.read_text().split() == ["third", "second", "first"]
    third = read_state(tmp_path, "third")
    assert third is not None and third.state == "stopped" and third.last_exit_code == -9  # past its 1 s budget
    first = read_state(tmp_path, "first")
    assert first is not None and first.last_exit_code == 0
    assert len(pids) == 3 and not any(pid_alive(p) for p in pids if p is not None)
    until(lambda: not pid_alive(grandchild), 5.0)  # its process group went with it


def test_a_command_that_cannot_start_is_retried(tmp_path: Path) -> None:
    said: list[str] = []
    sup = Supervisor(tmp_path, "b", Backoff(initial_s=0.1), 1.0, said.append)
    sup.add(Component("missing", ("missing",)), ChildRunner([str(tmp_path / "no-such-program")], os.environ))
    with running(sup):
        until(lambda: sum("could not start" in m for m in said) >= 2)
    state = read_state(tmp_path, "missing")
    assert state is not None and state.last_exit_code == 127 and state.starts == 0


def test_a_hurried_stop_kills_at_once_what_does_not_stop(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    code = (
        "import pathlib, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    sup = Supervisor(tmp_path, "b", Backoff(), 30.0, lambda m: None)
    sup.add(Component("deaf", ("deaf",)), ChildRunner(program(code), os.environ))
    with running(sup) as stop:
        until(lambda: ready.exists())
        t0 = time.monotonic()
        stop.set()
        until(lambda: (s := read_state(tmp_path, "deaf")) is not None and s.state == "stopping")
        sup.hurry.set()  # what a second Ctrl-C does, while the stop waits for it
    assert time.monotonic() - t0 < 10  # not its 30 s budget
    state = read_state(tmp_path, "deaf")
    assert state is not None and state.last_exit_code == -9


class Unreaped(ChildRunner):
    """A child that SIGKILL does not take within the wait (a process stuck in the kernel): ``stop`` kills it and
    then raises what ``proc.wait`` raises then."""

    def stop(self, timeout_s: float, hurry: threading.Event) -> int | None:
        super().stop(0.0, hurry)
        raise subprocess.TimeoutExpired(self.argv, 30)


def test_a_component_that_outlives_its_kill_does_not_stop_the_stop(tmp_path: Path) -> None:
    """Review finding 12: ``proc.wait(30)`` after SIGKILL raised TimeoutExpired out of ``stop_all``: the components
    before it were never stopped and up.json never said the run stopped."""
    ready = tmp_path / "ready"
    polite = f"import pathlib, time\npathlib.Path({str(ready)!r}).touch()\ntime.sleep(60)\n"
    said: list[str] = []
    sup = Supervisor(tmp_path, "b", Backoff(), 5.0, said.append)
    sup.add(Component("first", ("first",)), ChildRunner(program(polite), os.environ))
    sup.add(Component("stuck", ("stuck",)), Unreaped(program("import time; time.sleep(60)"), os.environ))
    with running(sup):
        until(lambda: ready.exists() and (s := read_state(tmp_path, "stuck")) is not None and s.state == "up")
    first, stuck = read_state(tmp_path, "first"), read_state(tmp_path, "stuck")
    assert first is not None and first.state == "stopped" and first.last_exit_code == -15  # stopped after it
    assert stuck is not None and stuck.state == "stopped" and stuck.last_exit_code is None  # its code is unknown
    assert any("stuck" in m and "did not confirm" in m for m in said), said
    run = read_run(tmp_path)
    assert run is not None and run.stopped_at is not None
