"""Start, find, and stop the local single-node KRaft broker; the same launcher serves the CLI, tests and CI."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from evostream.core.bus import security
from evostream.core.bus.acls import secure
from evostream.core.bus.admin import cluster_metadata, ensure_topics
from evostream.core.bus.security import SUPER_USER, CredentialsFile
from evostream.core.errors import BrokerStartError, BrokerUnavailableError, PortInUseError, StackError
from evostream.core.settings import DEFAULT_BROKER_PORT, Settings
from evostream.core.stack.config import server_properties
from evostream.core.stack.jars import kafka_libs_of, uses_log4j2
from evostream.core.stack.java import find_java
from evostream.core.stack.ports import HOST, free_port, port_is_free
from evostream.schemas.catalog import CATALOG, GOVERNANCE

Progress = Callable[[str], None]

_JVM_FLAGS = [
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
]


@dataclass(frozen=True)
class StackState:
    """What a running local broker left in ``stack_dir/state.json``."""

    pid: int
    bootstrap: str
    controller_port: int
    kafka_version: str
    started_at: float
    start_seconds: float


@dataclass(frozen=True)
class StackStatus:
    running: bool
    state: StackState | None
    topics: tuple[str, ...] = ()
    detail: str = ""


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, base64url without padding (it may start with "-")."""
    return base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


class LocalStack:
    """The local broker described by a Settings object (its folder, ports, Kafka version and heap)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        root = self.settings.stack_dir
        self.root = root
        self.config_dir = root / "config"
        self.data_dir = root / "data"
        self.logs_dir = root / "logs"
        self.state_file = root / "state.json"
        self.credentials_file = security.stack_credentials_path(root)

    # ---- state ------------------------------------------------------------------------------------
    def read_state(self) -> StackState | None:
        """The state file of a live broker, or None (a stale file of a dead one is removed)."""
        try:
            state = StackState(**json.loads(self.state_file.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None
        if not self._is_our_broker(state.pid):
            self.state_file.unlink(missing_ok=True)
            return None
        security.remember(self.credentials_file)  # this process's clients of this broker log in with its file
        return state

    def credentials(self) -> CredentialsFile:
        """The running broker's principals and passwords (StackError for a broker started without them)."""
        if not self.credentials_file.exists():
            raise StackError(
                f"the broker running from {self.root} has no credentials file ({self.credentials_file}): it was "
                "started by an older evostream, without authentication; `evostream stack down` and `up` again"
            )
        return CredentialsFile.load(self.credentials_file)

    def _is_our_broker(self, pid: int) -> bool:
        if not _alive(pid):
            return False
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists():  # guard against pid reuse where /proc exists
            try:
                args = cmdline.read_bytes().split(b"\0")
            except OSError:
                return False
            return b"kafka.Kafka" in args and str(self.config_dir / "server.properties").encode() in args
        return True

    # ---- up ---------------------------------------------------------------------------------------
    def up(self, progress: Progress = lambda _: None) -> StackState:
        """Start the broker (or reuse the running one), wait until it answers, and create the catalog topics."""
        s = self.settings
        state = self.read_state()
        if state is not None:
            progress(f"broker already running (pid {state.pid}) at {state.bootstrap}")
            cluster_metadata(state.bootstrap, s.ready_timeout_s, login=self.credentials().login("admin"))
        else:
            state = self._start(progress)
        created = ensure_topics(state.bootstrap, CATALOG, login=self.credentials().login("admin"))
        if created:
            progress(f"created topics: {', '.join(sorted(created))}")
        return state

    def _start(self, progress: Progress) -> StackState:
        s = self.settings
        java = find_java()
        lib = kafka_libs_of(s, progress)
        broker_port = self._port(s.broker_port, "broker", frozenset())
        controller_port = self._port(s.controller_port, "controller", frozenset({broker_port}))
        for d in (self.config_dir, self.data_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        bootstrap = f"{HOST}:{broker_port}"
        creds = CredentialsFile.ensure(self.credentials_file, bootstrap)
        security.remember(self.credentials_file)
        props = self.config_dir / "server.properties"
        text = server_properties(broker_port, controller_port, self.data_dir, creds.passwords[SUPER_USER])
        _write_private(props, text)
        jvm = [*_JVM_FLAGS, f"-Dkafka.logs.dir={self.logs_dir}", *self._log_flags()]
        classpath = f"{lib}/*"  # expanded by the JVM, not a shell
        if not (self.data_dir / "meta.properties").exists():
            cluster_id = new_cluster_id()
            fmt = subprocess.run(
                # --cluster-id=ID, not "-t ID": a random base64url id starting with "-" reads as an option
                [
                    str(java),
                    "-Xmx256m",
                    *jvm,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={cluster_id}",
                    "-c",
                    str(props),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if fmt.returncode != 0:
                raise BrokerStartError(
                    f"formatting {self.data_dir} failed:\n{(fmt.stdout + fmt.stderr).strip()[-2000:]}"
                )
        heap = s.broker_heap
        progress(f"starting Kafka {s.kafka_version} on {HOST}:{broker_port} (data in {self.data_dir})")
        t0 = time.monotonic()
        with (self.logs_dir / "stdout.log").open("ab") as out:
            proc = subprocess.Popen(
                [str(java), f"-Xms{heap}", f"-Xmx{heap}", *jvm, "-cp", classpath, "kafka.Kafka", str(props)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        state = StackState(proc.pid, bootstrap, controller_port, s.kafka_version, time.time(), 0.0)
        self._write_state(state)
        self._await_ready(proc, bootstrap, t0 + s.ready_timeout_s, creds.login(SUPER_USER))
        t1 = time.monotonic()
        secure(bootstrap, creds, {GOVERNANCE, s.governance_topic}, s.ready_timeout_s)
        progress(
            f"SASL/{creds.mechanism} principals and ACLs set in {time.monotonic() - t1:.1f} s "
            f"(credentials in {self.credentials_file}, mode 0600)"
        )
        state = StackState(**{**asdict(state), "start_seconds": round(time.monotonic() - t0, 2)})
        self._write_state(state)
        progress(f"broker ready at {bootstrap} in {state.start_seconds:.1f} s (pid {proc.pid})")
        return state

    def _port(self, wanted: int, role: str, avoid: frozenset[int]) -> int:
        if wanted == 0:
            return free_port(avoid=avoid)
        if wanted in avoid or not port_is_free(wanted):
            setting = "EVOSTREAM_BROKER_PORT" if role == "broker" else "EVOSTREAM_CONTROLLER_PORT"
            raise PortInUseError(
                f"{role} port {HOST}:{wanted} is already in use by another process; stop it, or choose another "
                f"port with {setting} (0 picks a free one)"
            )
        return wanted

    def _log_flags(self) -> list[str]:
        if uses_log4j2(self.settings.kafka_version):
            name, flag = "log4j2.properties", "-Dlog4j2.configurationFile={}"
        else:
            name, flag = "log4j.properties", "-Dlog4j.configuration=file:{}"
        target = self.config_dir / name
        src = resources.files("evostream.core.stack").joinpath(f"resources/{name}")
        target.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
        return [flag.format(target)]

    def _await_ready(
        self, proc: subprocess.Popen[bytes], bootstrap: str, deadline: float, login: security.Credentials
    ) -> None:
        while True:
            code = proc.poll()
            if code is not None:
                self.state_file.unlink(missing_ok=True)
                raise BrokerStartError(f"the broker exited with code {code} during start-up.\n{self.log_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                self._stop_pid(proc.pid, 10.0)
                self.state_file.unlink(missing_ok=True)
                raise BrokerStartError(
                    f"the broker did not answer at {bootstrap} within {self.settings.ready_timeout_s:.0f} s.\n"
                    f"{self.log_tail()}"
                )
            try:
                cluster_metadata(bootstrap, min(2.0, left), login=login)
                return
            except BrokerUnavailableError:
                continue

    def _write_state(self, state: StackState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
        tmp.replace(self.state_file)

    # ---- status / down / logs ---------------------------------------------------------------------
    def status(self) -> StackStatus:
        state = self.read_state()
        if state is None:
            return StackStatus(False, None, detail="not running")
        try:
            md = cluster_metadata(state.bootstrap, 5.0, login=self.credentials().login("admin"))
        except BrokerUnavailableError as e:
            return StackStatus(False, state, detail=f"process {state.pid} is alive but does not answer: {e}")
        topics = tuple(sorted(t for t in md.topics if not t.startswith("__")))
        return StackStatus(True, state, topics, detail="running")

    def down(self, timeout_s: float = 30.0, progress: Progress = lambda _: None) -> bool:
        """Controlled shutdown (SIGTERM), then SIGKILL after ``timeout_s``; True if a broker was stopped."""
        state = self.read_state()
        if state is None:
            progress("no local broker is running")
            return False
        progress(f"stopping broker pid {state.pid} (controlled shutdown)")
        forced = self._stop_pid(state.pid, timeout_s)
        self.state_file.unlink(missing_ok=True)
        progress("broker killed after the shutdown deadline" if forced else "broker stopped")
        return True

    def _stop_pid(self, pid: int, timeout_s: float) -> bool:
        """Stop ``pid``; return True when it had to be killed."""
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                return False
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        while _alive(pid):
            time.sleep(0.05)
        return True

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker's logs, for error messages and `stack logs`."""
        chunks = []
        for name in ("server.log", "stdout.log"):
            path = self.logs_dir / name
            if path.exists():
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
                if text:
                    chunks.append(f"--- last lines of {path} ---\n" + "\n".join(text))
        return "\n".join(chunks) or f"(no broker logs in {self.logs_dir})"

    def wipe(self) -> None:
        """Remove the stopped broker's folder: data, logs and config."""
        if self.read_state() is not None:
            raise StackError("the broker is running; `evostream stack down` first")
        shutil.rmtree(self.root, ignore_errors=True)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (it holds a password)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie child of ours is reaped and counts as gone)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child: fall through to the signal probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_bootstrap(settings: Settings) -> str:
    """Where clients connect: the configured servers, else the running local stack, else the default port."""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    state = LocalStack(settings).read_state()
    if state is not None:
        return state.bootstrap
    return f"{HOST}:{settings.broker_port or DEFAULT_BROKER_PORT}"
