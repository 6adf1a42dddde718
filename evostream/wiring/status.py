"""What ``evostream status`` reports: each component's state (from ``evostream up``'s state files, or, where nothing
supervises it, from the processes of this machine), its consumer groups' members and lag (the admin API), whether
the broker answers, and the versions served (the governance log: production, and a running rollout's candidate and
weight). The judgement of health is ``wiring.supervise.judge``'s; this module gathers the facts."""

from __future__ import annotations

import contextlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evostream.consumers.governance.projection import Registry
from evostream.consumers.governance.shapes import RolloutState
from evostream.core.bus import security
from evostream.core.bus.admin import cluster_metadata, group_lags, group_members
from evostream.core.errors import EvoError
from evostream.core.settings import Settings
from evostream.core.stack import LocalStack, resolve_bootstrap
from evostream.wiring.supervise import Component, ComponentState, Observed, judge
from evostream.wiring.supervisor import (
    RunInfo,
    cmdline,
    pid_alive,
    process_started_at,
    read_run,
    read_state,
    running_supervisor,
)

ADMIN_TIMEOUT_S = 3.0


@dataclass
class ComponentReport:
    name: str
    state: str
    healthy: bool
    reason: str
    pid: int | None
    restarts: int | None
    """None where nothing supervises it (nobody counted)."""
    uptime_s: float | None
    last_exit_code: int | None
    last_exit_at: float | None
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per consumer group: {"members": n or None, "lag": {topic: records} or None}."""
    lag: int | None = None
    """Records its groups have not consumed yet, summed (None: unknown, or no group)."""
    log: str | None = None


@dataclass
class StatusReport:
    bootstrap: str
    broker_reachable: bool
    broker_error: str | None
    supervisor: dict[str, Any] | None
    components: list[ComponentReport]
    models: dict[str, dict[str, Any]] | None = None
    """Per model: {"production": version, "rollout": {...} or None}; None when not read (or no log)."""
    governance_error: str | None = None
    run_dir: str = ""
    """The run folder looked in for ``evostream up``'s state."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def component(self, name: str) -> ComponentReport:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)


def command_words(c: Component) -> tuple[str, ...]:
    """The words that name ``c``'s command (``("sinks", "run")``), without its options."""
    words = []
    for arg in c.command:
        if arg.startswith("-"):
            break
        words.append(arg)
    return tuple(words)


def evostream_args(args: list[str]) -> list[str] | None:
    """The arguments given to evostream's CLI in a command line (``evostream serve ...`` or ``python -m evostream.cli
    serve ...``), or None when it is not one."""
    for i, arg in enumerate(args):
        if os.path.basename(arg) == "evostream":
            return args[i + 1 :]
        if arg == "-m" and i + 1 < len(args) and args[i + 1] == "evostream.cli":
            return args[i + 2 :]
    return None


def find_processes(words: tuple[str, ...], proc: Path = Path("/proc")) -> list[int]:
    """Pids of this machine's processes that run ``evostream WORDS...`` (this process left out), oldest first."""
    if not words:
        return []
    found = []
    me = os.getpid()
    with contextlib.suppress(OSError):
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            args = cmdline(int(entry.name))
            rest = evostream_args(args) if args else None
            if rest is not None and tuple(rest[: len(words)]) == words and pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return sorted(found)


def pid1_component(components: Iterable[Component], args: list[str] | None) -> list[Component] | None:
    """The components that the command line ``args`` of PID 1 (a container's own command) runs: one, or all of
    ``evostream up``'s; None when it runs none of them (a one-shot, or not evostream)."""
    rest = evostream_args(args) if args else None
    if rest is None:
        return None
    comps = list(components)
    if rest[:1] == ["up"]:
        return comps
    for c in comps:
        words = command_words(c)
        if words and tuple(rest[: len(words)]) == words:
            return [c]
    return None


def probe(url: str, timeout_s: float = ADMIN_TIMEOUT_S) -> int | None:
    """The HTTP status ``url`` answers with, or None when nothing answers."""
    req = urllib.request.Request(url, headers={"Host": "localhost"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _lags(bootstrap: str, groups: list[str]) -> dict[str, dict[str, int]] | None:
    try:
        return group_lags(bootstrap, groups, ADMIN_TIMEOUT_S)
    except EvoError:
        return None


def _members(bootstrap: str, groups: list[str]) -> dict[str, int] | None:
    try:
        return group_members(bootstrap, groups, ADMIN_TIMEOUT_S)
    except EvoError:
        return None


def gather(
    settings: Settings,
    components: tuple[Component, ...],
    run_dir: Path,
    versions: bool = True,
    now: float | None = None,
) -> StatusReport:
    """The status of ``components`` (those of the ``evostream up`` running from ``run_dir`` take its state files, its
    broker address and its component list instead where one runs)."""
    now = time.time() if now is None else now
    run = running_supervisor(run_dir)
    if run is not None:
        if run.credentials:
            security.remember(Path(run.credentials))
        bootstrap = run.bootstrap
        theirs = {c.name: c for c in run.components}
        components = tuple(theirs.get(c.name, c) for c in components)  # as up runs them (its flags)
    else:
        bootstrap = resolve_bootstrap(settings)
    md: Any = None
    broker_error = None
    try:
        md = cluster_metadata(bootstrap, ADMIN_TIMEOUT_S)
    except EvoError as e:
        broker_error = str(e)
    groups = sorted({g for c in components for g in c.groups})
    members = _members(bootstrap, groups) if md is not None and groups else None
    lags = _lags(bootstrap, groups) if md is not None and groups else None
    reports = [_report(settings, c, run, run_dir, md is not None, members, lags, now) for c in components]
    last = run or read_run(run_dir)
    supervisor = None
    if last is not None:
        supervisor = {
            "pid": last.pid,
            "running": run is not None,
            "started_at": last.started_at,
            "stopped_at": last.stopped_at,
            "run_dir": str(run_dir),
        }
    report = StatusReport(bootstrap, md is not None, broker_error, supervisor, reports, run_dir=str(run_dir))
    if versions and md is not None:
        if settings.governance_topic not in md.topics:
            report.governance_error = f"no governance log yet (topic {settings.governance_topic} does not exist)"
        else:
            try:
                report.models = served_versions(bootstrap, settings)
            except EvoError as e:
                report.governance_error = str(e)
    return report


def _report(
    settings: Settings,
    c: Component,
    run: RunInfo | None,
    run_dir: Path,
    reachable: bool,
    members: Mapping[str, int] | None,
    lags: Mapping[str, Mapping[str, int]] | None,
    now: float,
) -> ComponentReport:
    supervised = run is not None and any(r.name == c.name for r in run.components)
    state: ComponentState | None = read_state(run_dir, c.name) if supervised else None
    pid: int | None = None
    started_at: float | None = None
    if state is not None:
        pid, started_at = state.pid, state.started_at
        alive = pid is not None and pid_alive(pid)
    elif c.name == "broker":
        local = LocalStack(settings).read_state()
        pid, started_at = (local.pid, local.started_at) if local is not None else (None, None)
        alive = reachable  # a broker elsewhere has no process here: its answer is its life
    else:
        pids = find_processes(command_words(c))
        pid = pids[0] if pids else None
        started_at = process_started_at(pid) if pid is not None else None
        alive = pid is not None
    http = probe(c.url) if c.url is not None and alive else None
    verdict = judge(c, state, Observed(alive, members, http, reachable), now)
    up = verdict.state == "up"
    group_docs = {
        g: {
            "members": None if members is None else members.get(g, 0),
            "lag": None if lags is None else dict(lags.get(g, {})),
        }
        for g in c.groups
    }
    total = None
    if c.groups and lags is not None:
        total = sum(sum(lags.get(g, {}).values()) for g in c.groups)
    return ComponentReport(
        c.name,
        verdict.state,
        verdict.healthy,
        verdict.reason,
        pid if up else None,
        state.restarts if state is not None else None,
        round(now - started_at, 1) if up and started_at is not None else None,
        state.last_exit_code if state is not None else None,
        state.last_exit_at if state is not None else None,
        group_docs,
        total,
        state.log if state is not None else None,
    )


def served_versions(bootstrap: str, settings: Settings) -> dict[str, dict[str, Any]]:
    """Per model of the governance log: its production version, and its running rollout (candidate, weight, step)
    where one runs."""
    from evostream.views.governance import GovernanceView

    return versions_of(GovernanceView(bootstrap, settings).replayed().registry)


def versions_of(registry: Registry) -> dict[str, dict[str, Any]]:
    """Per model of a replayed registry: its production version and its running rollout (or None)."""
    return {
        name: {"production": model["production"], "rollout": rollout_doc(registry.active_rollout(name))}
        for name, model in sorted(registry.models.items())
    }


def rollout_doc(r: RolloutState | None) -> dict[str, Any] | None:
    """A running rollout as status shows it: its id, candidate, incumbent, weight, step, status."""
    if r is None:
        return None
    return {
        "rollout_id": r["rollout_id"],
        "candidate": r["version"],
        "incumbent": r["incumbent"],
        "weight": r["weight"],
        "step": r["step"],
        "status": r["status"],
    }
