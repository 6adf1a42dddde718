"""A local KRaft cluster on loopback: three nodes, each broker and controller (a 3-voter quorum), replication 3 and
min in-sync 2, started, killed one node at a time, restarted and stopped by the same launcher as the single node.

Each node is a ``LocalStack`` of its own folder (``<stack_dir>/cluster/node-N``: config, data, logs, state.json), so
the single node's pieces serve it unchanged: jar resolution, Java, ``server_properties``, the readiness check, the
state file and the controlled shutdown. What the cluster adds is one cluster id for every node's format, the static
quorum of all three, and a layout (``cluster.json``) that fixes each node's ports for good: the other voters know a
node by its controller port, so a killed node must come back where it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from evostream.core.bus import security
from evostream.core.bus.acls import secure
from evostream.core.bus.admin import cluster_metadata, ensure_topics
from evostream.core.bus.security import SUPER_USER, CredentialsFile
from evostream.core.errors import (
    AuthenticationError,
    BrokerStartError,
    BrokerUnavailableError,
    PortInUseError,
    StackError,
)
from evostream.core.settings import Settings
from evostream.core.stack.broker import _JVM_FLAGS, LocalStack, StackState, _alive, _write_private, new_cluster_id
from evostream.core.stack.broker import resolve_bootstrap as resolve_node_bootstrap
from evostream.core.stack.config import server_properties
from evostream.core.stack.jars import kafka_libs_of
from evostream.core.stack.java import find_java
from evostream.core.stack.ports import HOST, free_port, port_is_free
from evostream.schemas.catalog import CATALOG, GOVERNANCE

Progress = Callable[[str], None]

NODES = 3
REPLICATION = 3
MIN_INSYNC = 2
"""With 3 replicas and 2 needed in sync, one node can be lost (killed, restarted, upgraded) with no write refused
and no acknowledged record lost."""
NODE_HEAP = "512m"
"""Three JVMs fit beside the services on a small machine; the single node keeps Settings.broker_heap."""


@dataclass(frozen=True)
class NodeSpec:
    """Where one node of the cluster listens."""

    node_id: int
    broker_port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.broker_port}"


@dataclass(frozen=True)
class ClusterLayout:
    """What ``cluster.json`` holds: fixed when the cluster is first formatted, reused by every later start."""

    cluster_id: str
    kafka_version: str
    nodes: tuple[NodeSpec, ...]

    @property
    def voters(self) -> str:
        """controller.quorum.voters: every node is a voter."""
        return ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in self.nodes)

    @property
    def bootstrap(self) -> str:
        """Every node's address: a client still finds the cluster while any one of them is down."""
        return ",".join(n.bootstrap for n in self.nodes)

    def node(self, node_id: int) -> NodeSpec:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise StackError(f"the local cluster has no node {node_id}; its nodes are {', '.join(self.node_ids())}")

    def node_ids(self) -> list[str]:
        return [str(n.node_id) for n in self.nodes]


@dataclass(frozen=True)
class NodeStatus:
    spec: NodeSpec
    state: StackState | None
    """None while the node's process is not running."""


def plan_ports(
    broker_port: int, controller_port: int, nodes: int, pick: Callable[[frozenset[int]], int]
) -> list[tuple[int, int]]:
    """(broker, controller) port of each node: ``broker_port + 2i`` and ``controller_port + 2i`` (9092/9093,
    9094/9095, 9096/9097 by default), or ports ``pick`` finds free where the setting is 0. StackError when two
    would coincide."""
    taken: set[int] = set()
    out = []
    for i in range(nodes):
        pair = []
        for base in (broker_port, controller_port):
            port = pick(frozenset(taken)) if base == 0 else base + 2 * i
            if port in taken or not 0 < port < 65536:
                raise StackError(
                    f"the cluster's ports from broker {broker_port} and controller {controller_port} (each + 2 per "
                    f"node) collide or leave the port range; choose others, or 0 for free ones"
                )
            taken.add(port)
            pair.append(port)
        out.append((pair[0], pair[1]))
    return out


def under_replicated(bootstrap: str, topics: Iterable[str], timeout_s: float = 5.0) -> dict[tuple[str, int], int]:
    """Partitions of ``topics`` whose in-sync replicas are fewer than their replicas, with how many are missing
    (empty when every partition is fully in sync); a topic the cluster does not know counts as one missing replica."""
    md = cluster_metadata(bootstrap, timeout_s)
    out: dict[tuple[str, int], int] = {}
    for name in topics:
        topic = md.topics.get(name)
        if topic is None or topic.error is not None:
            out[name, -1] = 1
            continue
        for p, part in topic.partitions.items():
            missing = len(part.replicas) - len(part.isrs)
            if missing > 0 or part.error is not None:
                out[name, p] = max(1, missing)
    return out


class LocalCluster:
    """The local cluster described by a Settings object: its folder (``<stack_dir>/cluster``), first ports, Kafka
    version; ``nodes`` nodes of ``heap`` each."""

    def __init__(self, settings: Settings | None = None, nodes: int = NODES, heap: str = NODE_HEAP) -> None:
        if nodes < REPLICATION:
            raise StackError(f"a local cluster has at least {REPLICATION} nodes (replication {REPLICATION})")
        self.settings = settings or Settings()
        self.nodes = nodes
        self.heap = heap
        self.root = self.settings.stack_dir / "cluster"
        self.layout_file = self.root / "cluster.json"
        self.credentials_file = security.stack_credentials_path(self.root)
        """One file for every node: the principals are the cluster's (its metadata), the address all nodes'."""
        security.remember(self.credentials_file)  # used only for the addresses it names

    # ---- layout and nodes -------------------------------------------------------------------------
    def read_layout(self) -> ClusterLayout | None:
        """The layout of the formatted cluster, or None before its first start."""
        try:
            raw = json.loads(self.layout_file.read_text(encoding="utf-8"))
            return ClusterLayout(raw["cluster_id"], raw["kafka_version"], tuple(NodeSpec(**n) for n in raw["nodes"]))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def _plan(self) -> ClusterLayout:
        s = self.settings
        ports = plan_ports(s.broker_port, s.controller_port, self.nodes, lambda avoid: free_port(avoid=avoid))
        nodes = tuple(NodeSpec(i + 1, b, c) for i, (b, c) in enumerate(ports))
        layout = ClusterLayout(new_cluster_id(), s.kafka_version, nodes)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.layout_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(layout), indent=2), encoding="utf-8")
        tmp.replace(self.layout_file)
        return layout

    def node(self, spec: NodeSpec) -> LocalStack:
        """The node as a LocalStack of its own folder and ports."""
        update = {
            "stack_dir": self.root / f"node-{spec.node_id}",
            "broker_port": spec.broker_port,
            "controller_port": spec.controller_port,
            "broker_heap": self.heap,
        }
        return LocalStack(self.settings.model_copy(update=update))

    def _formatted(self, spec: NodeSpec) -> bool:
        return (self.node(spec).data_dir / "meta.properties").exists()

    def _layout(self) -> ClusterLayout:
        layout = self.read_layout()
        if layout is None:
            raise StackError(f"no local cluster in {self.root}; start one with `evostream stack up --brokers 3`")
        return layout

    def status(self) -> list[NodeStatus]:
        """Each node and its running process (None for a node that is down); [] before the first start."""
        layout = self.read_layout()
        if layout is None:
            return []
        return [NodeStatus(n, self.node(n).read_state()) for n in layout.nodes]

    def running(self) -> bool:
        return any(st.state is not None for st in self.status())

    # ---- up ---------------------------------------------------------------------------------------
    def up(self, progress: Progress = lambda _: None) -> ClusterLayout:
        """Start every node that is not running (formatting a new cluster on the first start), wait until all have
        joined, and create the catalog's topics with replication 3 and min in-sync 2."""
        layout = self.read_layout()
        if layout is None or not any(self._formatted(n) for n in layout.nodes):
            layout = self._plan()  # a layout no node was formatted with (its start failed) takes today's settings
        down = [st.spec for st in self.status() if st.state is None]
        creds = CredentialsFile.ensure(self.credentials_file, layout.bootstrap)
        if down:
            self._start(layout, down, progress)
        else:
            progress(f"cluster already running at {layout.bootstrap}")
        self._await_members(layout, len(layout.nodes), creds.login(SUPER_USER))
        if down:  # the principals and ACLs live in the cluster's metadata: set (again) once all nodes answer
            secure(layout.bootstrap, creds, {GOVERNANCE, self.settings.governance_topic}, self.settings.ready_timeout_s)
            self._await_logins(layout, creds.login("admin"))
        created = ensure_topics(layout.bootstrap, CATALOG, self.settings.ready_timeout_s, REPLICATION, MIN_INSYNC)
        if created:
            progress(
                f"created topics (replication {REPLICATION}, min in-sync {MIN_INSYNC}): {', '.join(sorted(created))}"
            )
        self._await_known(layout, [s.name for s in CATALOG])
        return layout

    def start_node(self, node_id: int, progress: Progress = lambda _: None) -> StackState:
        """Start one node that is down (after ``kill_node``, or a crash) where it was; return once it answers. It
        then catches up on the partitions it missed: ``await_in_sync`` says when it has."""
        layout = self._layout()
        spec = layout.node(node_id)
        running = self.node(spec).read_state()
        if running is not None:
            progress(f"node {node_id} already running (pid {running.pid})")
            return running
        return self._start(layout, [spec], progress)[0]

    def _start(self, layout: ClusterLayout, specs: Sequence[NodeSpec], progress: Progress) -> list[StackState]:
        s = self.settings
        java = find_java()
        lib = kafka_libs_of(s, progress)
        for spec in specs:
            for port, role in ((spec.broker_port, "broker"), (spec.controller_port, "controller")):
                if not port_is_free(port):
                    raise PortInUseError(
                        f"node {spec.node_id}'s {role} port {HOST}:{port} is already in use by another process; "
                        f"stop it (a cluster's ports are fixed in {self.layout_file})"
                    )
        classpath = f"{lib}/*"  # expanded by the JVM, not a shell
        creds = CredentialsFile.ensure(self.credentials_file, layout.bootstrap)
        launches = [_NodeLaunch(self.node(spec), spec, layout, java, classpath, creds) for spec in specs]
        formats = [launch.format() for launch in launches]  # in parallel: each is a JVM start
        for launch, fmt in zip(launches, formats, strict=True):
            launch.check_format(fmt)
        t0 = time.monotonic()
        for launch in launches:
            progress(
                f"starting node {launch.spec.node_id} of {len(layout.nodes)}: Kafka {s.kafka_version} on "
                f"{launch.spec.bootstrap} (data in {launch.stack.data_dir})"
            )
            launch.start(self.heap, layout.kafka_version)
        deadline = t0 + s.ready_timeout_s
        states = []
        try:
            for launch in launches:  # the first answers only once a quorum of voters runs: all start before any wait
                states.append(launch.await_ready(deadline, t0))
                progress(
                    f"node {launch.spec.node_id} ready at {launch.spec.bootstrap} in {states[-1].start_seconds:.1f} s "
                    f"(pid {states[-1].pid})"
                )
        except BrokerStartError:
            for launch in launches:
                launch.stop()
            raise
        return states

    def _await_logins(self, layout: ClusterLayout, login: security.Credentials) -> None:
        """Until every node takes ``login``: the SCRAM credentials reach each node's metadata a moment after the
        controller accepted them."""
        deadline = time.monotonic() + self.settings.ready_timeout_s
        for node in layout.nodes:
            while True:
                try:
                    cluster_metadata(node.bootstrap, max(1.0, deadline - time.monotonic()), login=login)
                    break
                except AuthenticationError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.1)

    def _await_members(self, layout: ClusterLayout, count: int, login: security.Credentials) -> None:
        """Until the cluster's metadata lists ``count`` brokers."""
        deadline = time.monotonic() + self.settings.ready_timeout_s
        while True:
            md = cluster_metadata(layout.bootstrap, max(1.0, deadline - time.monotonic()), login=login)
            if len(md.brokers) >= count:
                return
            if time.monotonic() >= deadline:
                raise BrokerStartError(
                    f"only {len(md.brokers)} of {count} nodes joined the cluster at {layout.bootstrap} within "
                    f"{self.settings.ready_timeout_s:.0f} s"
                )
            time.sleep(0.2)

    def _await_known(self, layout: ClusterLayout, topics: list[str]) -> None:
        """Until every node's metadata has every partition of ``topics`` with all replicas in sync: a topic the
        controller has created reaches each node's metadata a moment later, and a client may ask any node."""
        deadline = time.monotonic() + self.settings.ready_timeout_s
        for node in layout.nodes:
            while lagging := under_replicated(node.bootstrap, topics, max(1.0, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    parts = ", ".join(f"{t}[{p}]" for t, p in sorted(lagging))
                    raise BrokerStartError(f"node {node.node_id} does not know these in sync yet: {parts}")
                time.sleep(0.1)

    # ---- faults -----------------------------------------------------------------------------------
    def kill_node(self, node_id: int, progress: Progress = lambda _: None) -> int:
        """SIGKILL one node (no controlled shutdown: a crash); return its pid once it is gone."""
        spec = self._layout().node(node_id)
        stack = self.node(spec)
        state = stack.read_state()
        if state is None:
            raise StackError(f"node {node_id} of the local cluster is not running")
        os.kill(state.pid, signal.SIGKILL)
        while _alive(state.pid):
            time.sleep(0.02)
        stack.state_file.unlink(missing_ok=True)
        progress(f"node {node_id} killed (pid {state.pid}, SIGKILL)")
        return state.pid

    def await_in_sync(self, topics: Iterable[str], timeout_s: float = 60.0) -> float:
        """Block until every partition of ``topics`` has all its replicas in sync (a restarted node has caught up and
        rejoined the ISR); return the seconds it took. StackError naming the lagging partitions at the deadline."""
        layout = self._layout()
        names = list(topics)
        t0 = time.monotonic()
        lagging: dict[tuple[str, int], int] = {}
        while time.monotonic() - t0 < timeout_s:
            try:
                lagging = under_replicated(layout.bootstrap, names)
            except BrokerUnavailableError:
                lagging = {("(no answer)", -1): 1}
            if not lagging:
                return time.monotonic() - t0
            time.sleep(0.1)
        parts = ", ".join(f"{t}[{p}] ({n} missing)" for (t, p), n in sorted(lagging.items()))
        raise StackError(f"not every replica is in sync after {timeout_s:.0f} s: {parts}")

    # ---- down / logs ------------------------------------------------------------------------------
    def down(self, timeout_s: float = 30.0, progress: Progress = lambda _: None) -> bool:
        """Stop every running node at once (a node stopped alone after the others could not reach a quorum to shut
        down in order): SIGTERM, SIGKILL after ``timeout_s``. True if a node was running."""
        running = [(st.spec, self.node(st.spec), st.state) for st in self.status() if st.state is not None]
        if not running:
            progress("no local cluster is running")
            return False
        forced: dict[int, bool] = {}

        def stop(spec: NodeSpec, stack: LocalStack, pid: int) -> None:
            forced[spec.node_id] = stack._stop_pid(pid, timeout_s)
            stack.state_file.unlink(missing_ok=True)

        progress(f"stopping nodes {', '.join(str(spec.node_id) for spec, _, _ in running)} (controlled shutdown)")
        threads = [threading.Thread(target=stop, args=(spec, stack, st.pid)) for spec, stack, st in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        killed = sorted(n for n, f in forced.items() if f)
        progress(f"cluster stopped{f'; killed after the deadline: nodes {killed}' if killed else ''}")
        return True

    def log_tail(self, node_id: int, lines: int = 40) -> str:
        return self.node(self._layout().node(node_id)).log_tail(lines)


class _NodeLaunch:
    """One node's start: its server.properties, the format of a new data folder, the JVM, the wait until it answers."""

    def __init__(
        self,
        stack: LocalStack,
        spec: NodeSpec,
        layout: ClusterLayout,
        java: Path,
        classpath: str,
        creds: CredentialsFile,
    ) -> None:
        self.stack = stack
        self.spec = spec
        self.java = java
        self.classpath = classpath
        self.login = creds.login(SUPER_USER)
        for d in (stack.config_dir, stack.data_dir, stack.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.props = stack.config_dir / "server.properties"
        _write_private(
            self.props,
            server_properties(
                spec.broker_port,
                spec.controller_port,
                stack.data_dir,
                creds.passwords[SUPER_USER],
                node_id=spec.node_id,
                voters=layout.voters,
                replication=REPLICATION,
                min_insync=MIN_INSYNC,
            ),
        )
        self.jvm = [*_JVM_FLAGS, f"-Dkafka.logs.dir={stack.logs_dir}", *stack._log_flags()]
        self.cluster_id = layout.cluster_id
        self.proc: subprocess.Popen[bytes] | None = None

    def format(self) -> subprocess.Popen[str] | None:
        """Start formatting the node's data folder with the cluster's id (None when it is formatted already)."""
        if (self.stack.data_dir / "meta.properties").exists():
            return None
        return subprocess.Popen(
            [
                str(self.java),
                "-Xmx256m",
                *self.jvm,
                "-cp",
                self.classpath,
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={self.cluster_id}",  # not "-t ID": an id may start with "-"
                "-c",
                str(self.props),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def check_format(self, fmt: subprocess.Popen[str] | None) -> None:
        if fmt is None:
            return
        out, _ = fmt.communicate(timeout=120)
        if fmt.returncode != 0:
            raise BrokerStartError(f"formatting {self.stack.data_dir} failed:\n{out.strip()[-2000:]}")

    def start(self, heap: str, kafka_version: str) -> None:
        command = [str(self.java), f"-Xms{heap}", f"-Xmx{heap}", *self.jvm, "-cp", self.classpath, "kafka.Kafka"]
        with (self.stack.logs_dir / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [*command, str(self.props)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.state = StackState(
            self.proc.pid, self.spec.bootstrap, self.spec.controller_port, kafka_version, time.time(), 0.0
        )
        self.stack._write_state(self.state)

    def await_ready(self, deadline: float, t0: float) -> StackState:
        if self.proc is None:
            raise BrokerStartError(f"node {self.spec.node_id} was not started")
        self.stack._await_ready(self.proc, self.spec.bootstrap, deadline, self.login)
        state = StackState(**{**asdict(self.state), "start_seconds": round(time.monotonic() - t0, 2)})
        self.stack._write_state(state)
        return state

    def stop(self) -> None:
        """Stop a node of a start that failed (a node never launched has nothing to stop)."""
        if self.proc is not None:
            self.stack._stop_pid(self.proc.pid, 10.0)
        self.stack.state_file.unlink(missing_ok=True)


def resolve_bootstrap(settings: Settings) -> str:
    """Where clients connect: the configured servers, else every node of the running local cluster, else the
    running local node, else the default port."""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    cluster = LocalCluster(settings)
    layout = cluster.read_layout()
    if layout is not None and cluster.running():
        return layout.bootstrap
    return resolve_node_bootstrap(settings)
