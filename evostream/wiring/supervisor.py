"""``evostream up``'s supervisor: each component a child process (or the local broker), restarted with back-off when
it exits, its output appended to ``<run_dir>/<name>.log``, its state written to ``<run_dir>/<name>.json`` on every
change, and all of them stopped in reverse start order on the way out. The rules (back-off, states) are
``wiring.supervise``'s; this module only runs processes and writes files.

Each child is the same interpreter's CLI (``python -m evostream.cli COMMAND``), in a session of its own: a Ctrl-C in
the terminal reaches ``up`` alone, which stops the children one by one (the last started first), each with SIGTERM
and its graceful shutdown, then SIGKILL to its whole process group once ``stop_timeout_s`` has passed. On Linux a
child also gets SIGTERM when ``up`` dies without stopping it (``PR_SET_PDEATHSIG``), so no component outlives it."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from evostream.core.errors import EvoError
from evostream.core.settings import Settings
from evostream.wiring.supervise import (
    Backoff,
    Component,
    ComponentState,
    due,
    exited,
    start_failed,
    started,
    stopped,
)

RUN_FILE = "up.json"
"""The supervisor's own state in the run folder: its pid, the broker, the components it runs."""
MAX_LOG_BYTES = 64 * 1024 * 1024
"""A component's log past this size is moved to ``<name>.log.1`` (replacing the older one) at its next start."""
POLL_S = 0.2

Say = Callable[[str], None]


class SupervisorError(EvoError):
    """``evostream up`` cannot run: another one runs from the same folder, or its components cannot be started."""


# --- files ------------------------------------------------------------------------------------------------------------
def state_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.json"


def log_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.log"


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_state(run_dir: Path, name: str) -> ComponentState | None:
    """The state file of component ``name``, or None."""
    data = _read_json(state_path(run_dir, name))
    try:
        return ComponentState.from_json(data) if data is not None else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class RunInfo:
    """``<run_dir>/up.json``: the supervisor that runs (or ran) from this folder."""

    pid: int
    started_at: float
    bootstrap: str
    components: tuple[Component, ...]
    credentials: str | None = None
    """The local stack's credentials file, where the broker is the local one (``evostream status`` logs in with it)."""
    stopped_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "started_at": self.started_at,
            "bootstrap": self.bootstrap,
            "components": [c.to_json() for c in self.components],
            "credentials": self.credentials,
            "stopped_at": self.stopped_at,
        }


def read_run(run_dir: Path) -> RunInfo | None:
    data = _read_json(run_dir / RUN_FILE)
    if data is None:
        return None
    try:
        return RunInfo(
            int(data["pid"]),
            float(data["started_at"]),
            str(data["bootstrap"]),
            tuple(Component.from_json(c) for c in data["components"]),
            data.get("credentials"),
            data.get("stopped_at"),
        )
    except (KeyError, TypeError, ValueError):
        return None


def running_supervisor(run_dir: Path) -> RunInfo | None:
    """The ``evostream up`` running from ``run_dir`` now, or None (none ran, it stopped, or it died)."""
    run = read_run(run_dir)
    if run is None or run.stopped_at is not None or not pid_alive(run.pid):
        return None
    begun = process_started_at(run.pid)
    # a process that started after the supervisor wrote its file has its pid reused (/proc's boot time is in seconds)
    return run if begun is None or begun <= run.started_at + 2.0 else None


def process_started_at(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), from /proc; None where it cannot say."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat: the 20th after the command's name
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: the signal probe is all there is
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def cmdline(pid: int) -> list[str] | None:
    """The arguments ``pid`` runs with, or None where /proc cannot say."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


# --- runners: how one component starts, ends and is stopped ---------------------------------------------------------
class Runner(Protocol):
    def start(self, log: Path) -> int:
        """Start the component; its pid."""

    def poll(self) -> tuple[bool, int | None]:
        """(whether it has exited, its exit code where known)."""

    def stop(self, timeout_s: float, hurry: threading.Event) -> int | None:
        """Stop it (gracefully, then by force after ``timeout_s``, or at once when ``hurry`` is set); its exit code
        where known."""


_PR_SET_PDEATHSIG = 1


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()  # looked up here, not between fork and exec


def _die_with_parent() -> None:
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def cli_argv(command: tuple[str, ...]) -> list[str]:
    """``evostream COMMAND`` as this interpreter runs it (the CLI of this installation, whatever is on PATH)."""
    return [sys.executable, "-m", "evostream.cli", *command]


class ChildRunner:
    """A command (``cli_argv``) as a child in its own session, its output appended to its log."""

    def __init__(self, argv: list[str], env: Mapping[str, str]) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, log: Path) -> int:
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # between fork and exec only one C call, looked up before (no import, no lock of the interpreter's)
                preexec_fn=_die_with_parent if _PRCTL is not None else None,
            )
        return self.proc.pid

    def poll(self) -> tuple[bool, int | None]:
        if self.proc is None:
            return True, None
        code = self.proc.poll()
        if code is None:
            return False, None
        _kill_group(self.proc.pid)  # what it started and left behind goes with it
        return True, code

    def stop(self, timeout_s: float, hurry: threading.Event) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while proc.poll() is None and time.monotonic() < deadline and not hurry.is_set():
                time.sleep(0.05)
        _kill_group(proc.pid)  # past its budget: the whole group; after its exit: what it left behind
        proc.wait(30)
        return proc.returncode


def _kill_group(pgid: int) -> None:
    """SIGKILL every process left in the process group (= session) a child leads; none is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class BrokerRunner:
    """The local single-node broker (``core.stack.LocalStack``): started, or found running, by the launcher, which
    keeps its own logs; it comes back on the same ports. Stopped on the way out only if this supervisor started it."""

    def __init__(self, settings: Settings, say: Say) -> None:
        from evostream.core.stack import LocalStack

        self.settings = settings
        self.say = say
        self.stack = LocalStack(settings)
        self.ours = False
        self.bootstrap = ""

    def start(self, log: Path) -> int:
        from evostream.core.stack import LocalStack

        found = self.stack.read_state() is not None
        with log.open("a", encoding="utf-8") as out:

            def progress(msg: str) -> None:
                out.write(msg + "\n")
                out.flush()
                self.say(f"broker: {msg}")

            state = self.stack.up(progress)
        self.ours = self.ours or not found
        self.bootstrap = state.bootstrap
        port = int(state.bootstrap.rsplit(":", 1)[1])
        if (self.settings.broker_port, self.settings.controller_port) != (port, state.controller_port):
            # a restart comes back where the clients look (ports 0 asked for free ones the first time)
            self.settings = self.settings.model_copy(
                update={"broker_port": port, "controller_port": state.controller_port}
            )
            self.stack = LocalStack(self.settings)
        return state.pid

    def poll(self) -> tuple[bool, int | None]:
        return self.stack.read_state() is None, None

    def stop(self, timeout_s: float, hurry: threading.Event) -> int | None:
        if self.ours:
            self.stack.down(0.0 if hurry.is_set() else timeout_s, self.say)
        else:
            self.say("broker: left running (it ran before evostream up started)")
        return None


# --- the supervisor -------------------------------------------------------------------------------------------------
@dataclass
class _Entry:
    component: Component
    runner: Runner
    state: ComponentState


class Supervisor:
    """Runs ``components`` until ``stop`` is set, then stops them in reverse order; writes every state change."""

    def __init__(
        self,
        run_dir: Path,
        bootstrap: str,
        backoff: Backoff,
        stop_timeout_s: float,
        say: Say,
        credentials: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.run_dir = run_dir
        self.bootstrap = bootstrap
        self.credentials = credentials
        self.backoff = backoff
        self.stop_timeout_s = stop_timeout_s
        self.say = say
        self.clock = clock
        self.entries: list[_Entry] = []
        self.started_at = clock()
        self.hurry = threading.Event()
        """Set by a second stop signal: whatever is left is killed at once."""

    def add(self, component: Component, runner: Runner, pid: int | None = None) -> None:
        """Supervise ``component``; ``pid``: it was started already (the broker, before the genesis)."""
        state = ComponentState(component.name, log=str(log_path(self.run_dir, component.name)))
        if pid is not None:
            state = started(state, pid, self.clock())
        self.entries.append(_Entry(component, runner, state))

    def _info(self, stopped_at: float | None = None) -> RunInfo:
        comps = tuple(e.component for e in self.entries)
        creds = None if self.credentials is None else str(self.credentials)
        return RunInfo(os.getpid(), self.started_at, self.bootstrap, comps, creds, stopped_at)

    def _set(self, e: _Entry, state: ComponentState) -> None:
        e.state = state
        _write_json(state_path(self.run_dir, e.component.name), state.to_json())

    def _start(self, e: _Entry) -> None:
        name = e.component.name
        log = log_path(self.run_dir, name)
        if log.exists() and log.stat().st_size > MAX_LOG_BYTES:
            log.replace(log.with_name(log.name + ".1"))
        now = self.clock()
        with log.open("a", encoding="utf-8") as out:
            what = " ".join(e.component.command) or "the local broker"
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} evostream up: start {e.state.starts + 1}: {what}\n")
        try:
            pid = e.runner.start(log)
        except (OSError, EvoError) as err:
            self._set(e, start_failed(e.state, now, self.backoff))
            self.say(f"{name}: could not start ({err}); next try in {self.backoff.delay(e.state.streak):.1f} s")
            return
        self._set(e, started(e.state, pid, self.clock()))
        if e.state.restarts:
            self.say(f"{name}: restarted (pid {pid}, restart {e.state.restarts})")
        else:
            self.say(f"{name}: started (pid {pid}, log {log})")

    def run(self, stop: threading.Event) -> None:
        """Start what is not running yet, then watch until ``stop``; then stop everything, the last started first."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.run_dir / RUN_FILE, self._info().to_json())
        try:
            for e in self.entries:
                if stop.is_set():
                    break
                if e.state.state == "up":
                    self._set(e, e.state)
                else:
                    self._start(e)
            while not stop.wait(POLL_S):
                self.tick()
        finally:
            try:
                self.stop_all()
            finally:
                _write_json(self.run_dir / RUN_FILE, self._info(self.clock()).to_json())

    def tick(self) -> None:
        """One look at every component: an exit is noted (and its restart scheduled), a due restart made."""
        for e in self.entries:
            if e.state.state == "up":
                gone, code = e.runner.poll()
                if gone:
                    ran = self.clock() - (e.state.started_at or self.clock())
                    self._set(e, exited(e.state, code, self.clock(), self.backoff))
                    wait = (e.state.next_start_at or 0) - self.clock()
                    self.say(
                        f"{e.component.name}: exited with code {'?' if code is None else code} after {ran:.1f} s; "
                        f"restart in {max(0.0, wait):.1f} s"
                    )
            elif due(e.state, self.clock()):
                self._start(e)

    def stop_all(self) -> None:
        for e in reversed(self.entries):
            if e.state.state not in ("up", "restarting"):
                continue
            if e.state.state == "restarting":
                self._set(e, stopped(e.state, e.state.last_exit_code, self.clock()))
                continue
            self._set(e, replace(e.state, state="stopping"))
            self.say(f"{e.component.name}: stopping (pid {e.state.pid})")
            t0 = self.clock()
            try:
                code = e.runner.stop(self.stop_timeout_s, self.hurry)
            except (subprocess.TimeoutExpired, OSError, EvoError) as err:  # e.g. not reaped 30 s after its SIGKILL
                self._set(e, stopped(e.state, None, self.clock()))
                self.say(f"{e.component.name}: killed, but did not confirm its exit ({err}); stopping the others")
                continue
            self._set(e, stopped(e.state, code, self.clock()))
            self.say(f"{e.component.name}: stopped in {self.clock() - t0:.1f} s (exit code {code})")
