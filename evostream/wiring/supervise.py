"""The rules of ``evostream up``'s supervision, as plain functions of plain values: no process, no clock, no file.

A component is one long-running ``evostream`` command (or the local broker). Its ``ComponentState`` is what the
supervisor knows of it and writes to its state file; ``started`` and ``exited`` move it on, ``Backoff`` says how long
a crashed component waits before its next start, and ``judge`` turns a state and what was observed (the process
alive, its consumer groups' members, the API's answer) into what ``evostream status`` shows and ``--check`` exits
with. The supervisor (``wiring.supervisor``) and the status (``wiring.status``) only gather the facts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

State = Literal["up", "restarting", "stopping", "stopped", "down"]
"""up: its process runs. restarting: it exited and waits for its next start. stopping / stopped: ``up`` is stopping
it / stopped it. down: not running and nobody will start it (no supervisor, or none found)."""


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off between the restarts of a component that keeps crashing: ``initial_s`` after the first
    exit, doubling (``factor``) up to ``cap_s``; a run of at least ``reset_after_s`` starts the count over."""

    initial_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 60.0
    reset_after_s: float = 60.0

    def delay(self, streak: int) -> float:
        """Seconds before the next start after the ``streak``-th quick exit in a row (1 = the first)."""
        if streak < 1:
            return 0.0
        return float(min(self.cap_s, self.initial_s * self.factor ** min(streak - 1, 64)))

    def streak_after(self, streak: int, ran_s: float) -> int:
        """The quick-exit count after an exit that came ``ran_s`` seconds after the start."""
        return 1 if ran_s >= self.reset_after_s else streak + 1


@dataclass(frozen=True)
class Component:
    """One supervised command: its name, its ``evostream`` arguments (empty for the broker, which the local stack
    starts), the consumer groups whose members show it at work, and the URL that answers when it serves HTTP."""

    name: str
    command: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    url: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "command": list(self.command), "groups": list(self.groups), "url": self.url}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Component:
        return cls(str(d["name"]), tuple(d.get("command", ())), tuple(d.get("groups", ())), d.get("url"))


@dataclass(frozen=True)
class ComponentState:
    """What the supervisor knows of one component: its state file's content."""

    name: str
    state: State = "stopped"
    pid: int | None = None
    restarts: int = 0
    """Starts after the first."""
    starts: int = 0
    started_at: float | None = None
    last_exit_code: int | None = None
    """None: the process is gone but its code is unknown (the broker, reaped by the local stack's launcher)."""
    last_exit_at: float | None = None
    next_start_at: float | None = None
    streak: int = 0
    """Quick exits in a row (``Backoff.streak_after``)."""
    log: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ComponentState:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def started(s: ComponentState, pid: int, now: float) -> ComponentState:
    """``s`` once its process ``pid`` runs."""
    return replace(
        s, state="up", pid=pid, started_at=now, next_start_at=None, starts=s.starts + 1, restarts=max(0, s.starts)
    )


def exited(s: ComponentState, code: int | None, now: float, policy: Backoff) -> ComponentState:
    """``s`` after its process ended with ``code`` while the supervisor runs: restarting after the back-off."""
    ran = now - s.started_at if s.started_at is not None else 0.0
    streak = policy.streak_after(s.streak, ran)
    return replace(
        s,
        state="restarting",
        pid=None,
        last_exit_code=code,
        last_exit_at=now,
        streak=streak,
        next_start_at=now + policy.delay(streak),
    )


def start_failed(s: ComponentState, now: float, policy: Backoff) -> ComponentState:
    """``s`` after its process could not even start (exit code 127, as a shell says): the same back-off."""
    return exited(replace(s, started_at=now), 127, now, policy)


def due(s: ComponentState, now: float) -> bool:
    """Whether a restarting component's back-off is over."""
    return s.state == "restarting" and (s.next_start_at is None or now >= s.next_start_at)


def stopped(s: ComponentState, code: int | None, now: float) -> ComponentState:
    """``s`` once ``up`` stopped it (on its way out)."""
    return replace(s, state="stopped", pid=None, last_exit_code=code, last_exit_at=now, next_start_at=None)


@dataclass(frozen=True)
class Observed:
    """What ``evostream status`` found of one component, beside its state file."""

    alive: bool
    """A process of the component runs (the supervised pid, or one found by its command line)."""
    members: Mapping[str, int] | None = None
    """Members of each of its consumer groups now; None when the broker could not say."""
    http_status: int | None = None
    """The HTTP status its URL answered with; None when it did not answer (or it has no URL)."""
    broker_reachable: bool = True


@dataclass(frozen=True)
class Verdict:
    state: State
    healthy: bool
    reason: str


def judge(c: Component, s: ComponentState | None, seen: Observed, now: float) -> Verdict:
    """Whether ``c`` is healthy, from its supervised state ``s`` (None: nobody supervises it, e.g. under systemd or
    in a container) and what was ``seen``. Healthy: its process runs, the broker answers it, every consumer group it
    joins has a member, and its URL answers HTTP (a 401 counts: the server answers, /health asks for a key)."""
    if s is not None and s.state == "restarting":
        wait = max(0.0, (s.next_start_at or now) - now)
        return Verdict("restarting", False, f"exited with code {_code(s.last_exit_code)}; next start in {wait:.0f} s")
    if s is not None and s.state in ("stopping", "stopped"):
        return Verdict(s.state, False, f"{s.state} by evostream up")
    if not seen.alive:
        why = "its process is gone" if s is not None else "no process runs it"
        return Verdict("down", False, why)
    if c.name == "broker":
        if not seen.broker_reachable:
            return Verdict("up", False, "its process runs but it does not answer")
        return Verdict("up", True, "answers")
    if c.groups and not seen.broker_reachable:
        return Verdict("up", False, "the broker does not answer")
    if c.groups and seen.members is not None:
        empty = [g for g in c.groups if seen.members.get(g, 0) == 0]
        if empty:
            return Verdict("up", False, f"no member in consumer group {', '.join(empty)} (starting, or stuck)")
    if c.url is not None:
        if seen.http_status is None:
            return Verdict("up", False, f"does not answer at {c.url}")
        if seen.http_status not in (200, 401):
            return Verdict("up", False, f"{c.url} answered HTTP {seen.http_status}")
    return Verdict("up", True, "running")


def _code(code: int | None) -> str:
    if code is None:
        return "unknown"
    return f"{code} (signal {-code})" if code < 0 else str(code)
