"""The governance log as people read it: the registry, one version, the audit trail, a trace's provenance.

Every answer is a replay of ``evo.governance`` (``consumers.governance.projection.replay``), as of now, a time or an
offset; the CLI prints these, the HTTP API returns them as JSON. Writes go through ``actor``: the commands of one
actor, signed with its key from this machine's key folder."""

from __future__ import annotations

import datetime as dt
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evostream.core.errors import GovernanceError, UnknownVersionError
from evostream.core.settings import Settings


def when(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def parse_time(text: str) -> int:
    """``2026-11-23T14:03``, ``2026-11-23 14:03:00`` (UTC unless an offset is given) -> µs since the epoch."""
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError as e:
        raise GovernanceError(f"{text!r} is not a time (e.g. 2026-11-23T14:03, UTC unless an offset is given)") from e
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1e6)


def describe(ev: Any) -> str:
    """What an event did, in a few words."""
    p, t = ev.payload, ev.type
    if t == "ActorEnrolled":
        return f"enrolled {p['actor_id']} as {'/'.join(p['roles'])} (key {p['key_id'][:8]})"
    if t == "ActorRevoked":
        return f"revoked {p['actor_id']}"
    if t == "PolicyChanged":
        return f"policy {json.dumps(p['policy'], sort_keys=True)}"
    if t == "ModelRegistered":
        return f"registered {p['version']} (parent {p['parent']}, {p['artifact_uri'][:19]})"
    if t == "ValidationCompleted":
        return f"validation of {p['version']}: {'PASS' if p['passed'] else 'FAIL'}"
    if t == "ApprovalRequested":
        return f"asked approval of {p['version']} for {p['stage']}"
    if t in ("ApprovalGranted", "ApprovalRejected"):
        cited = evidence_summary(p.get("evidence") or {})
        done = f"{'approved' if t == 'ApprovalGranted' else 'rejected'} {p['version']} for {p['stage']}"
        return done + (f", citing {cited}" if cited else "")
    if t == "Promoted":
        return f"promoted {p['version']} to {p['stage'] or 'alias ' + str(p['alias'])}"
    if t == "RolledBack":
        return f"rolled back {p['from_version']} -> {p['version']}"
    if t == "CandidateProposed":
        return f"proposed {p['version']}"
    if t == "LevelProposed":
        return f"proposed level {p['level']} on {p['version']} (corpus {p['evidence'].get('corpus')})"
    if t == "LevelApproved":
        return f"approved level {p['level']} on {p['version']}: in force"
    if t == "LevelLowered":
        return f"lowered to level {p['level']} on {p['version']}"
    if t.startswith("Rollout"):
        return _rollout_event(t, p)
    if t == "OffsetVoided":
        return f"voided offset(s) {', '.join(map(str, p['offsets']))}{' (forced)' if p['forced'] else ''}"
    return str(t)


def _rollout_event(t: str, p: dict[str, Any]) -> str:
    rid, cited = p.get("rollout_id"), evidence_summary(p.get("evidence") or {})
    tail = f" [{cited}]" if cited else ""
    if t == "RolloutStarted":
        steps = ",".join(map(str, p["plan"].get("steps", [])))
        return f"started rollout {rid}: {p['incumbent']} -> {p['version']}, steps {steps}%{tail}"
    if t == "RolloutStepped":
        return f"rollout {rid} step {p['step']}: candidate at {p['weight']}%{tail}"
    if t == "RolloutAborted":
        how = "automatically" if p.get("automatic") else "by hand"
        return f"rollout {rid} ABORTED {how}: candidate at 0%, production stays{tail}"
    if t == "RolloutCompleted":
        return f"rollout {rid} completed: the candidate is production{tail}"
    return t


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def evidence_summary(evidence: dict[str, Any], limit: int = 6) -> str:
    """Evidence in one line: a window's gate verdicts (``gates`` or top-level dicts with a ``verdict``: candidate vs
    incumbent and p-value) after its overall verdict; other evidence (e.g. a ``compare`` summary) as its first few
    values, by dotted name. '' for none."""
    if not isinstance(evidence, dict) or not evidence:
        return ""
    gates = evidence.get("gates")
    if not isinstance(gates, dict):
        gates = {k: v for k, v in evidence.items() if isinstance(v, dict) and "verdict" in v}
    parts: list[str] = []
    if isinstance(evidence.get("verdict"), str):
        parts.append(f"verdict {evidence['verdict']}")
    for name, g in sorted(gates.items()):
        if not isinstance(g, dict):
            continue
        verdict = str(g.get("verdict", "?"))
        vs = f" {_num(g['candidate'])} vs {_num(g['incumbent'])}" if "candidate" in g and "incumbent" in g else ""
        p_value = f" p={_num(g['p_value'])}" if isinstance(g.get("p_value"), (int, float)) else ""
        note = f" ({g['note']})" if isinstance(g.get("note"), str) else ""
        parts.append(f"{name} {verdict}{vs}{p_value}{note}")
    if gates:
        return "; ".join(parts)
    flat = [(k, v) for k, v in _flatten(evidence) if k != "verdict"]
    parts += [f"{k}={_num(v)}" for k, v in flat[:limit]]
    more = f" (+{len(flat) - limit} more)" if len(flat) > limit else ""
    return ", ".join(parts) + more


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in sorted(d.items()):
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        elif not isinstance(v, list):
            out.append((f"{prefix}{k}", v))
    return out


def rollout_lines(r: dict[str, Any]) -> list[str]:
    """A rollout for people (``RolloutState``): where it stands, its plan, then each event with its evidence."""
    plan, steps = r["plan"], r["plan"].get("steps", [])
    where = "the shadow phase" if r["step"] < 0 else f"step {r['step']} of {len(steps)}"
    gates = ", ".join(f"{k} {_num(g.get('tolerance'))}" for k, g in sorted(plan.get("gates", {}).items()))
    lines = [
        f"rollout {r['rollout_id']} of {r['model_name']}: {r['incumbent']} -> {r['version']}: {r['status'].upper()} "
        f"at {where}, candidate weight {r['weight']}%",
        f"  plan: steps {','.join(map(str, steps))}%, window {_num(plan.get('step_s'))} s and "
        f"{plan.get('min_samples')} samples, shadow {_num(plan.get('shadow_s'))} s at share "
        f"{_num(plan.get('shadow_share'))}, {plan.get('clean_cycles')} clean cycles, confidence "
        f"{_num(plan.get('confidence'))}, gates (tolerance) {gates}",
    ]
    for h in r["history"]:
        cited = evidence_summary(h["evidence"])
        step = "shadow" if h["step"] < 0 else f"step {h['step']}"
        lines.append(
            f"  #{h['sequence']:<5} {when(h['at_us'])} {h['actor']:<10} {h['type']:<16} {step:<8} {h['weight']:>3}%"
            + (f"  [{cited}]" if cited else "")
            + (f": {h['reason']}" if h["reason"] else "")
        )
    return lines


def audit_line(offset: int, ev: Any) -> str:
    """One line per event: sequence, offset, when, who, on which model, what, why."""
    reason = f": {ev.reason}" if ev.reason else ""
    model = "" if ev.model_name == "*" else f" [{ev.model_name}]"
    return f"#{ev.sequence:<5} @{offset:<6} {when(ev.occurred_at_us)} {ev.actor:<10}{model} {describe(ev)}{reason}"


def audit_row(offset: int, ev: Any) -> dict[str, Any]:
    """One event as data: the audit line's fields, and the version it concerns (if any)."""
    return {
        "sequence": ev.sequence,
        "offset": offset,
        "occurred_at_us": ev.occurred_at_us,
        "when": when(ev.occurred_at_us),
        "actor": ev.actor,
        "model": None if ev.model_name == "*" else ev.model_name,
        "type": ev.type,
        "version": ev.payload.get("version"),
        "what": describe(ev),
        "reason": ev.reason,
    }


def finding_doc(f: Any) -> dict[str, Any]:
    return {"offset": f.offset, "sequence": f.sequence, "kind": f.kind, "detail": f.detail}


def checkpoints_path(settings: Settings) -> Path:
    """Where this machine keeps the signed checkpoints of the log's head (outside the topic)."""
    return settings.governance_dir / f"checkpoints-{settings.governance_topic}.jsonl"


def anchor_file(settings: Settings) -> Path:
    """Where this machine anchors the head of the log it last verified (outside the topic)."""
    return settings.governance_dir / f"head-{settings.governance_topic}.json"


def anchored(settings: Settings, registry: Any, findings: list[Any], items: list[tuple[int, Any]]) -> list[Any]:
    """``findings`` and what this machine's anchors say of the log (its head file, its signed checkpoints); a log
    with neither moves the head file forward."""
    from evostream.consumers.governance.anchor import advance_anchor, anchor_findings

    found = anchor_findings(registry, items, anchor=anchor_file(settings), checkpoints=checkpoints_path(settings))
    if not findings and not found:
        advance_anchor(anchor_file(settings), registry)
    return [*findings, *found]


@dataclass
class Replayed:
    registry: Any
    findings: list[Any]
    events: list[tuple[int, Any]]
    """(offset, event) of every decodable event up to where the replay stopped reading."""


class LogCache:
    """The log's records, read once and kept, and the replays made of them, for as long as the log's end does not
    move: a read asks the broker for the end offset only, and reads (and replays) only the records past the end it
    knows when the end moved. Without it, each API read built a consumer and verified the whole log. Thread-safe."""

    KEPT_REPLAYS = 32
    """Replays kept per end offset (as of now, and as of up to 31 other times or offsets asked for)."""

    def __init__(self, view: GovernanceView) -> None:
        self.view = view
        self._lock = threading.Lock()
        self._log: Any = None
        self._ends: Any = None
        self._items: list[tuple[int, Any]] = []
        self._end = 0
        """The offset after the last one read (the end as the broker gave it, transaction markers included)."""
        self._replays: dict[str | None, tuple[Any, list[Any]]] = {}
        self.reads = 0
        """How many times records were read from the broker (a test's measure of the cache)."""

    def _refresh(self) -> None:
        from evostream.core.bus.transactional import PartitionReader

        if self._log is None:
            self._log = self.view.log()
            self._ends = PartitionReader(self.view.bootstrap, self.view.settings.governance_topic, timeout_s=30.0)
        from evostream.consumers.governance.projection import Finding, replay

        _, high = self._ends.bounds()
        if high == self._end:
            return
        cut: list[Any] = []
        if high < self._end:  # the topic is shorter than it was (recreated): read it all again, and say so
            cut = [
                Finding(
                    None,
                    -1,
                    "truncated",
                    f"the log ends at offset {high}, but this API read it up to offset {self._end}: it was cut short "
                    f"or recreated. Restore the missing events, or accept it with `evostream governance anchor "
                    f"--reset` and restart the API",
                )
            ]
            self._items, self._end = [], 0
        new = self._log.items(self._end, high - 1) if high > 0 else []
        self.reads += 1
        last = self._replays.get(None)
        self._items = [*self._items, *new]
        self._end = high
        self._replays = {}
        if cut:
            registry, findings = replay(self._items)
            self._replays[None] = (registry, [*cut, *findings])
        elif last is not None and not last[1] and new:
            registry, findings = replay(new, start=last[0])  # on from a clean replay: only the new records
            if findings:  # a void may reach back before the new records (a forced one): judge the whole log
                registry, findings = replay(self._items)
            self._replays[None] = (registry, self._anchored(registry, findings))

    def snapshot(self, as_of: str | None = None) -> tuple[list[tuple[int, Any]], Any, list[Any]]:
        """(every record, the registry, the findings) as of now, or as of ``as_of`` (as ``replayed`` takes it)."""
        from evostream.consumers.governance.projection import replay

        with self._lock:
            self._refresh()
            got = self._replays.get(as_of)
            if got is None:
                if as_of is None:
                    registry, findings = replay(self._items)
                    got = (registry, self._anchored(registry, findings))
                elif as_of.isascii() and as_of.isdigit():
                    got = replay(self._items, until_offset=int(as_of))
                else:
                    got = replay(self._items, until_us=parse_time(as_of))
                if len(self._replays) >= self.KEPT_REPLAYS:
                    self._replays.pop(next(k for k in self._replays if k is not None))
                self._replays[as_of] = got
            return self._items, got[0], got[1]

    def _anchored(self, registry: Any, findings: list[Any]) -> list[Any]:
        """The findings of a replay of the whole log as of now, with what this machine's anchors say of it."""
        return anchored(self.view.settings, registry, findings, self._items)

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._ends.close()
                self._log = self._ends = None


class GovernanceView:
    """Reads of one governance log (``settings.governance_topic`` on ``bootstrap``); ``cached``: through a
    ``LogCache`` (a long-lived reader, for a server), else each read reads the log anew (a command)."""

    def __init__(self, bootstrap: str, settings: Settings, cached: bool = False) -> None:
        self.bootstrap = bootstrap
        self.settings = settings
        self.cache = LogCache(self) if cached else None

    def log(self) -> Any:
        from evostream.consumers.governance.log import GovernanceLog

        return GovernanceLog(self.bootstrap, topic=self.settings.governance_topic)

    def checkpoints_path(self) -> Path:
        return checkpoints_path(self.settings)

    def items(self) -> list[tuple[int, Any]]:
        """Every record of the log (an undecodable one is a finding in its place); the reader is closed after."""
        log = self.log()
        try:
            return list(log.items())
        finally:
            log.close()

    def replayed(self, as_of: str | None = None) -> Replayed:
        """The registry now, as of a time (UTC unless given) or a log offset (ASCII digits)."""
        from evostream.consumers.governance.projection import Finding, replay

        if self.cache is not None:
            items, registry, findings = self.cache.snapshot(as_of)
            return Replayed(registry, findings, [(off, ev) for off, ev in items if not isinstance(ev, Finding)])
        items = self.items()
        events = [(off, ev) for off, ev in items if not isinstance(ev, Finding)]
        if as_of is None:
            registry, findings = replay(items)
            findings = anchored(self.settings, registry, findings, items)
        elif as_of.isascii() and as_of.isdigit():
            registry, findings = replay(items, until_offset=int(as_of))
        else:
            registry, findings = replay(items, until_us=parse_time(as_of))
        return Replayed(registry, findings, events)

    def audit(self, since_us: int | None = None, actor: str | None = None) -> tuple[list[dict[str, Any]], list[Any]]:
        """(rows of the events from ``since_us`` on, by ``actor``, oldest first; findings of the verification)."""
        from evostream.consumers.governance.projection import Finding, replay

        if self.cache is not None:
            items, _, findings = self.cache.snapshot()
        else:
            items = self.items()
            _, findings = replay(items)
        rows = [
            audit_row(off, ev)
            for off, ev in items
            if not isinstance(ev, Finding)
            and (since_us is None or ev.occurred_at_us >= since_us)
            and (actor is None or ev.actor == actor)
        ]
        return rows, findings

    def actor(self, name: str) -> Any:
        """The commands of actor ``name``, signed with its key from this machine's key folder."""
        from evostream.consumers.governance.service import load_actor

        keys = self.settings.governance_dir / "keys"
        return load_actor(
            self.log(), keys, name, checkpoints=self.checkpoints_path(), anchor=anchor_file(self.settings)
        )


def model_of(reg: Any, version: str) -> str:
    """The model that has ``version``; UnknownVersionError if none has."""
    owners = [name for name, model in reg.models.items() if version in model["versions"]]
    if not owners:
        raise UnknownVersionError(f"no model has a version {version!r}; `evostream registry` lists them")
    return str(owners[0])


def version_doc(reg: Any, version: str) -> dict[str, Any]:
    """One version: its artifact, metrics, lineage (newest first), validation, approvals, stage, and its model."""
    model = model_of(reg, version)
    info: dict[str, Any] = reg.version(model, version)
    info["lineage"] = reg.lineage(model, version)
    info["model_name"] = model
    info["version"] = version
    return info


def registry_doc(reg: Any) -> dict[str, Any]:
    """The whole registry as data: per model its serving versions and every version (with lineage), the pending
    approvals, the policy, the log head."""
    models = {}
    for name, model in sorted(reg.models.items()):
        models[name] = {
            "production": model["production"],
            "staging": model["staging"],
            "aliases": dict(model["aliases"]),
            "versions": {v: version_doc(reg, v) for v in model["versions"]},
        }
    return {
        "models": models,
        "pending_approvals": reg.pending_approvals(),
        "policy": reg.policy,
        "head": {"sequence": reg.head_sequence, "offset": reg.offset, "hash": reg.head_hash},
        "actors": {
            a: {"roles": list(v["roles"]), "revoked": v["revoked_seq"] is not None}
            for a, v in sorted(reg.actors.items())
        },
    }


def provenance_doc(
    replayed: Replayed, completion: dict[str, Any], route: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Which version answered a trace, its lineage and evidence, the governance events of that version up to the
    answer, and ``route``: its request's route (``views.routes.route_doc``), if a router decided it."""
    version, at = str(completion["model_version"]), int(completion["completed_at_us"])
    reg = replayed.registry
    info = version_doc(reg, version)
    model = info["model_name"]
    events = [
        audit_row(off, ev)
        for off, ev in replayed.events
        if ev.model_name == model and ev.payload.get("version") == version and ev.occurred_at_us <= at
    ]
    return {
        "trace_id": completion["trace_id"],
        "request_id": completion["request_id"],
        "model_version": version,
        "answered_at_us": at,
        "token_count": completion["token_count"],
        "role": completion.get("role", "ANSWER"),
        "rollout_id": completion.get("rollout_id"),
        "version": info,
        "events": events,
        "route": route,
    }
