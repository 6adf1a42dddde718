"""``evostream route ...``: a route's routing policy and its independence level, governed on ``evo.governance``.

``route register`` stores a policy file and registers it as a version of ``route/<name>``; ``route level propose``
moves a route up with its policy artifact's evidence, another actor's ``route level approve`` puts it in force;
``route level lower`` moves it down at once (with a reason); ``route show`` reads it all back from the log.
Other modules add their commands onto ``route_app`` (``route_learn.py``: train and eval)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.errors import GovernanceError
from evostream.core.settings import Settings, load_settings

route_app = typer.Typer(help="Routes: their routing policies and independence levels.", no_args_is_help=True)
level_app = typer.Typer(help="A route's independence level: propose, approve, lower.", no_args_is_help=True)
route_app.add_typer(level_app, name="level")

Route = Annotated[str, typer.Option("--route", help="The route's name (its policies are versions of route/<name>).")]
Level = Annotated[int, typer.Option("--level", min=0, help="The independence level (0: the reference answers all).")]
Actor = Annotated[str | None, typer.Option(help="Acting actor (its key signs). Env: EVOSTREAM_GOVERNANCE_ACTOR.")]
Reason = Annotated[str, typer.Option(help="Why, in your words (kept in the log).")]


def _settings(bootstrap: str | None, actor: str | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if bootstrap:
        overrides["bootstrap_servers"] = bootstrap
    if actor:
        overrides["governance_actor"] = actor
    return load_settings(**overrides)


def _acting(bootstrap: str | None, actor: str | None) -> tuple[Settings, Any]:
    """The settings and the signing actor's commands (close its log with ``gov.log.close()``)."""
    from evostream.views.governance import GovernanceView

    settings = _settings(bootstrap, actor)
    return settings, GovernanceView(broker(settings), settings).actor(settings.governance_actor)


@route_app.command("register")
@friendly
def register(
    name: Annotated[str, typer.Option("--name", help="The route's name.")],
    policy: Annotated[
        Path, typer.Option("--policy", exists=True, dir_okay=False, help="A routing policy file (RoutePolicy JSON).")
    ],
    reason: Reason = "",
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Store a routing policy in the artifact store and register it as a version of route/<name>, with the risk
    probe it reads and each level's evidence; prints the version."""
    from evostream.core.artifacts import ArtifactStore
    from evostream.routing.policy import RoutePolicy
    from evostream.wiring.routing import register_route

    settings, gov = _acting(bootstrap, actor)
    try:
        loaded = RoutePolicy.from_bytes(policy.read_bytes())
        version = register_route(gov, ArtifactStore(settings.artifacts_dir), loaded, name, reason)
    finally:
        gov.log.close()
    say(f"registered {version} (levels with evidence: {', '.join(str(g.level) for g in loaded.gates) or 'none'})")
    typer.echo(version)


@level_app.command("propose")
@friendly
def propose(
    route: Route,
    level: Level,
    policy: Annotated[
        str | None, typer.Option("--policy", help="The policy version (default: the route's newest).")
    ] = None,
    reason: Reason = "",
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Propose moving a route up to a level, carrying the level's evidence from the policy artifact (held-out corpus,
    self-answered accuracy and its bound); refused without enough evidence. Another actor approves it."""
    from evostream.core.artifacts import ArtifactStore
    from evostream.wiring.routing import propose_level

    settings, gov = _acting(bootstrap, actor)
    try:
        ev = propose_level(gov, ArtifactStore(settings.artifacts_dir), route, level, version=policy, reason=reason)
    finally:
        gov.log.close()
    say(
        f"proposed level {level} for route {route} on {ev.payload['version']} (event #{ev.sequence}); evidence "
        f"{json.dumps(ev.payload['evidence'], sort_keys=True)}: another approver runs `evostream route level approve "
        f"--route {route} --level {level}`"
    )


@level_app.command("approve")
@friendly
def approve(route: Route, level: Level, reason: Reason = "", bootstrap: Bootstrap = None, actor: Actor = None) -> None:
    """Approve a route's pending level proposal (an approver other than the proposer): the level takes effect."""
    from evostream.wiring.routing import approve_level

    _, gov = _acting(bootstrap, actor)
    try:
        ev = approve_level(gov, route, level, reason)
    finally:
        gov.log.close()
    say(f"route {route} is at level {level} on {ev.payload['version']} (event #{ev.sequence})")


@level_app.command("lower")
@friendly
def lower(
    route: Route,
    level: Level,
    reason: Annotated[str, typer.Option(help="Why (required; kept in the log).")],
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Move a route down to a level, towards the reference, at once (a proposer or admin; no approval)."""
    from evostream.wiring.routing import lower_level

    _, gov = _acting(bootstrap, actor)
    try:
        ev = lower_level(gov, route, level, reason)
    finally:
        gov.log.close()
    say(f"route {route} lowered to level {level} on {ev.payload['version']} (event #{ev.sequence})")


def route_lines(registry: Any, events: list[tuple[int, Any]], name: str) -> list[str]:
    """One route for people: its level in force, policy, probe, evidence, pending proposal, and its level events."""
    from evostream.consumers.governance.levels import route_model
    from evostream.views.governance import audit_line

    model = route_model(name)
    versions = registry.models.get(model, {}).get("versions", {})
    route = registry.route(name)
    if not versions and route is None:
        raise GovernanceError(f"no route {name!r}: `evostream route register --name {name} --policy FILE` first")
    lines = []
    if route is None or route["level"] is None:
        lines.append(f"route {name}: no level in force (no routing: the served model answers everything)")
    else:
        lines.append(f"route {name}: level {route['level']} on {route['version']} (set by event #{route['set_by']})")
        params = versions[route["version"]]["operator_params"]
        probe = params.get("probe_sha256") or ""
        lines.append(f"  probe: {params.get('probe_version') or '-'} ({probe[:12] or 'none: no mid-answer decision'})")
        lines.append(f"  evidence: {json.dumps(route['evidence'], sort_keys=True) if route['evidence'] else '-'}")
    if route is not None and route["proposal"] is not None:
        p = route["proposal"]
        lines.append(
            f"  pending: level {p['level']} on {p['version']} proposed by {p['actor']} (event #{p['sequence']}), "
            f"evidence {json.dumps(p['evidence'], sort_keys=True)}"
        )
    lines.append("  policies:")
    for v, ver in versions.items():
        levels = ", ".join(sorted(ver["metrics"].get("levels", {}), key=int)) or "none"
        lines.append(f"    {v}  levels with evidence: {levels}  registered by {ver['registered_by']}")
    lines.append("  history:")
    for offset, ev in events:
        if ev.model_name == model and ev.type in ("LevelProposed", "LevelApproved", "LevelLowered"):
            lines.append("    " + audit_line(offset, ev))
    return lines


@route_app.command("show")
@friendly
def show(
    name: Annotated[str | None, typer.Argument(help="A route's name (default: every route).")] = None,
    as_of: Annotated[str | None, typer.Option(help="The state as of a time (UTC unless given) or an offset.")] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """A route's level, policy version, probe and evidence, its pending proposal and its level events; without a
    name, one line per route."""
    from evostream.consumers.governance.levels import ROUTE_PREFIX
    from evostream.views.governance import GovernanceView

    settings = _settings(bootstrap)
    replayed = GovernanceView(broker(settings), settings).replayed(as_of)
    reg = replayed.registry
    names = [name] if name else sorted({m[len(ROUTE_PREFIX) :] for m in reg.models if m.startswith(ROUTE_PREFIX)})
    if not names:
        say("no route is registered (`evostream route register --name N --policy FILE`)")
    for n in names:
        lines = route_lines(reg, replayed.events, n)
        for line in lines if name else lines[:1]:
            typer.echo(line)
    for f in replayed.findings:
        typer.secho(f"TAMPERED @{f.offset} #{f.sequence} {f.kind}: {f.detail}", fg=typer.colors.RED, err=True)
    if replayed.findings:
        raise SystemExit(2)
