"""``evostream governance ...``, ``registry``, ``audit``, ``replay --verify``, ``rollback``: the governance log, for
people. Every answer is a replay of ``evo.governance``; every change is a signed event appended to it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.errors import GovernanceError
from evostream.core.settings import Settings, load_settings
from evostream.views.governance import (
    GovernanceView,
    anchor_file,
    anchored,
    audit_line,
    checkpoints_path,
    model_of,
    parse_time,
    when,
)

governance_app = typer.Typer(help="The governance log: actors, keys and policy.", no_args_is_help=True)

Actor = Annotated[str | None, typer.Option(help="Acting actor (its key signs). Env: EVOSTREAM_GOVERNANCE_ACTOR.")]
Reason = Annotated[str, typer.Option(help="Why, in your words (kept in the log).")]
_PUBLIC_KEY_HELP = (
    "The actor's Ed25519 public key (hex, from `governance keygen` on its own machine). Without it, a key is made "
    "here, beside the admin's."
)
PublicKey = Annotated[str | None, typer.Option(help=_PUBLIC_KEY_HELP)]


def _settings(bootstrap: str | None, actor: str | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if bootstrap:
        overrides["bootstrap_servers"] = bootstrap
    if actor:
        overrides["governance_actor"] = actor
    return load_settings(**overrides)


def _view(settings: Settings) -> GovernanceView:
    return GovernanceView(broker(settings), settings)


def _log(settings: Settings) -> Any:
    return _view(settings).log()


def _actor(settings: Settings) -> Any:
    return _view(settings).actor(settings.governance_actor)


@governance_app.command("init")
@friendly
def governance_init(bootstrap: Bootstrap = None, actor: Actor = None) -> None:
    """Start the governance log: the first admin key (0600, never printed) and its enrolment, the default policy."""
    from evostream.consumers.governance.service import init

    settings = _settings(bootstrap, actor)
    gov, path = init(
        _log(settings),
        settings.governance_dir / "keys",
        settings.governance_actor,
        checkpoints=checkpoints_path(settings),
        anchor=anchor_file(settings),
    )
    say(f"admin {gov.actor} enrolled (key {gov.key.key_id}); private key saved to {path} (mode 0600): keep it safe")


@governance_app.command("keygen")
@friendly
def governance_keygen(
    name: Annotated[str, typer.Argument(help="The actor id this key is for.")],
    bootstrap: Bootstrap = None,
) -> None:
    """Create an actor's key on this machine (0600, never printed) and print its public half, for an admin to enroll
    with `governance enroll NAME --public-key HEX`: the private key never leaves the machine that made it."""
    from evostream.consumers.governance.keys import ActorKey
    from evostream.consumers.governance.service import key_path

    settings = _settings(bootstrap)
    path = key_path(settings.governance_dir / "keys", name)
    if path.exists():
        raise GovernanceError(f"{path} already holds a key for {name}: remove it first if it is really to be replaced")
    key = ActorKey.generate()
    key.save(path)
    say(f"key for {name} saved to {path} (mode 0600); ask an admin to run:")
    print(f"evostream governance enroll {name} --public-key {key.public_hex}")


@governance_app.command("api-token")
@friendly
def governance_api_token(
    actor: Actor = None,
    ttl_days: Annotated[float, typer.Option(min=0.001, help="Days until the token expires.")] = 30.0,
    bootstrap: Bootstrap = None,
) -> None:
    """Print this machine's actor's HTTP API token (`Authorization: Bearer <token>` for the writes of `evostream api`):
    its current key's signature over a statement naming it, this governance log (its genesis hash) and an expiry.
    Treat it as a password; it expires after --ttl-days, and revoking the actor or enrolling it with a new key retires
    it."""
    from evostream.consumers.governance.api_keys import token_for
    from evostream.consumers.governance.keys import ActorKey
    from evostream.consumers.governance.service import key_path

    settings = _settings(bootstrap, actor)
    path = key_path(settings.governance_dir / "keys", settings.governance_actor)
    if not path.exists():
        raise GovernanceError(f"no key for actor {settings.governance_actor!r} at {path}")
    key = ActorKey.load(path)
    replayed = _view(settings).replayed()
    if replayed.findings:
        _warn(replayed.findings)
        raise GovernanceError("the governance log failed verification: no token is made for it")
    print(token_for(key, settings.governance_actor, replayed.registry.genesis_hash, ttl_s=ttl_days * 86400))


@governance_app.command("enroll")
@friendly
def governance_enroll(
    name: Annotated[str, typer.Argument(help="The new actor's id.")],
    roles: Annotated[
        str, typer.Option(help="Comma-separated: admin, approver, proposer, controller (the rollout controller).")
    ] = "approver",
    public_key: PublicKey = None,
    reason: Reason = "",
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Enroll a new actor with its roles (admin only): with `--public-key`, the key the actor made itself; without,
    a key created here and saved 0600 beside the admin's (one machine, one operator)."""
    from evostream.consumers.governance.keys import ActorKey, key_id_of
    from evostream.consumers.governance.service import key_path

    settings = _settings(bootstrap, actor)
    gov = _actor(settings)
    role_list = [r.strip() for r in roles.split(",") if r.strip()]
    if public_key is not None:
        public_hex = public_key.strip().lower()
        key_id = key_id_of(public_hex)  # refuses what is not a 32-byte key
        gov.enroll(name, public_hex, key_id, role_list, reason)
        say(f"enrolled {name} ({roles}, key {key_id}); its private key stays where it was made")
        return
    path = key_path(settings.governance_dir / "keys", name)
    if path.exists():
        raise GovernanceError(f"{path} already holds a key for {name}: enroll it with --public-key, or remove it")
    key = ActorKey.generate()
    key.save(path)
    try:
        gov.enroll(name, key.public_hex, key.key_id, role_list, reason)
    except Exception:
        path.unlink()  # not enrolled: the key must not linger as if it were
        raise
    say(f"enrolled {name} ({roles}, key {key.key_id}); private key at {path} (mode 0600)")


@governance_app.command("revoke")
@friendly
def governance_revoke(name: str, reason: Reason = "", bootstrap: Bootstrap = None, actor: Actor = None) -> None:
    """Revoke an actor: its key signs nothing from now on, and replay flags any later event it signed."""
    _actor(_settings(bootstrap, actor)).revoke(name, reason)
    say(f"revoked {name}")


@governance_app.command("policy")
@friendly
def governance_policy(
    approvals: Annotated[
        int | None, typer.Option(min=1, help="Approvers needed for production (N of the enrolled M).")
    ] = None,
    auto_staging: Annotated[bool | None, typer.Option(help="Promote a validated candidate to staging at once.")] = None,
    auto_production: Annotated[bool | None, typer.Option(help="Promote to production without approvals.")] = None,
    four_eyes: Annotated[
        bool | None, typer.Option(help="Refuse an approval by the actor who registered the version.")
    ] = None,
    refuse_failed_approvals: Annotated[
        bool | None,
        typer.Option(
            "--refuse-failed-approvals/--accept-failed-approvals",
            help="Refuse an approval of a version whose latest validation failed.",
        ),
    ] = None,
    level_corpus: Annotated[
        int | None,
        typer.Option(min=1, help="Labelled held-out answers a route's level L needs per step: N x (L + 1)."),
    ] = None,
    level_accuracy: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Self-answered accuracy a route's level evidence must reach."),
    ] = None,
    level_max_error: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Highest certified error bound (1 - accuracy_lower) of a route's level."),
    ] = None,
    level_confidence: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Lowest confidence a level's error bound is stated at."),
    ] = None,
    shadow_share: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Share of production's requests mirrored to the staging version (0: off)."),
    ] = None,
    template_min_gain: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Held-out gain a template variant must add to be accepted (0.05)."),
    ] = None,
    reason: Reason = "",
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Change the promotion policy (admin only); the change is itself an event."""
    given = {
        "production_approvals": approvals,
        "auto_promote_staging": auto_staging,
        "auto_promote_production": auto_production,
        "four_eyes": four_eyes,
        "refuse_failed_approvals": refuse_failed_approvals,
        "level_corpus_per_level": level_corpus,
        "level_min_accuracy": level_accuracy,
        "level_max_error": level_max_error,
        "level_min_confidence": level_confidence,
        "shadow_share": shadow_share,
        "template_min_gain": template_min_gain,
    }
    policy = {k: v for k, v in given.items() if v is not None}  # only what was given changes
    if not policy:
        raise GovernanceError(
            "nothing to change: give --approvals, --auto-staging/--no-auto-staging, "
            "--auto-production/--no-auto-production, --four-eyes/--no-four-eyes, "
            "--refuse-failed-approvals/--accept-failed-approvals, --level-corpus, --level-accuracy, "
            "--level-max-error, --level-confidence, --shadow-share or --template-min-gain"
        )
    _actor(_settings(bootstrap, actor)).set_policy(policy, reason)
    say(f"policy: {json.dumps(policy, sort_keys=True)}")


@governance_app.command("void")
@friendly
def governance_void(
    offset: Annotated[list[int], typer.Option("--offset", help="A record's offset on the log (repeat for several).")],
    reason: Annotated[str, typer.Option(help="Why (required; kept in the log).")],
    force: Annotated[
        bool, typer.Option("--force", help="Void even a valid event of the chain (rewrites the history).")
    ] = False,
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Void records of the governance log that are no events of its chain (junk bytes, a copied event), so that
    verification and the registry skip exactly those offsets (admin; the void is itself a signed event of the
    chain). A Kafka record cannot be deleted: this is how a log with one stops refusing every write. See
    docs/governance.md, "Recovering from a bad record"."""
    ev = _actor(_settings(bootstrap, actor)).void(offset, reason, force)
    offsets = ", ".join(map(str, ev.payload["offsets"]))
    say(
        f"voided offset(s) {offsets} (event #{ev.sequence}{', forced' if force else ''}): replay skips them from now on"
    )


@governance_app.command("anchor")
@friendly
def governance_anchor(
    reset: Annotated[
        bool,
        typer.Option(
            "--reset",
            help="Accept the log as it is now (replaced on purpose, e.g. a new broker): anchor its head, and move "
            "the old anchor and this machine's checkpoints aside.",
        ),
    ] = False,
    bootstrap: Bootstrap = None,
) -> None:
    """Check the governance log against the head this machine last verified (anchored outside Kafka, in
    head-<topic>.json beside the keys); with --reset, accept the log as it is now."""
    from evostream.consumers.governance.anchor import read_anchor, reset_anchor
    from evostream.consumers.governance.projection import replay

    settings = _settings(bootstrap)
    path = anchor_file(settings)
    items = _log(settings).items()
    registry, findings = replay(items)
    if reset:
        if findings:
            _warn(findings)
            raise GovernanceError("the log itself fails verification: it cannot be anchored as it is")
        moved = reset_anchor(path, registry, also=[checkpoints_path(settings)])
        for p in moved:
            say(f"moved {p.name} aside")
        say(f"anchored {settings.governance_topic} at sequence {registry.head_sequence} (offset {registry.offset})")
        return
    findings = anchored(settings, registry, findings, items)
    now = read_anchor(path)
    typer.echo(f"anchor {path}: {now.where() if now else 'none yet'}")
    typer.echo(f"log {settings.governance_topic}: sequence {registry.head_sequence} (offset {registry.offset})")
    if findings:
        _warn(findings)
        raise SystemExit(2)


@friendly
def register(
    model: Annotated[str, typer.Argument(help="Model name, e.g. evostream/t5-tiny-suite.")],
    version: Annotated[str, typer.Argument(help="Version id, e.g. evostream/t5-tiny-suite@2.")],
    artifact: Annotated[Path, typer.Option(help="The model folder (saved with save_pretrained).", exists=True)],
    parent: Annotated[str | None, typer.Option(help="The version it was derived from.")] = None,
    operator: Annotated[str | None, typer.Option(help="The evolution operator that built it.")] = None,
    metrics: Annotated[str, typer.Option(help="Measured metrics as JSON.")] = "{}",
    reason: Reason = "",
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Store a model folder in the artifact store (by its sha256) and register it as a candidate version."""
    from evostream.core.artifacts import ArtifactStore

    settings = _settings(bootstrap, actor)
    try:
        measured = json.loads(metrics)
    except ValueError as e:
        raise GovernanceError(f"--metrics is not JSON: {e}") from e
    ref = ArtifactStore(settings.artifacts_dir).put_dir(artifact)
    _actor(settings).register(
        model,
        version,
        artifact_uri=ref.uri,
        artifact_sha256=ref.sha256,
        parent=parent,
        operator=operator,
        metrics=measured,
        reason=reason,
    )
    say(f"registered {version} ({ref.uri})")


@friendly
def request_approval(
    model: str,
    version: str,
    stage: str = "production",
    reason: Reason = "",
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Ask the approvers to approve a version for a stage (proposers); `registry` lists it as pending."""
    _actor(_settings(bootstrap, actor)).request_approval(model, version, stage, reason)
    say(f"asked approval of {version} for {stage}")


@friendly
def approve(
    model: str,
    version: str,
    stage: str = "production",
    reject: bool = False,
    reason: Reason = "",
    evidence: Annotated[
        Path | None,
        typer.Option(
            "--evidence",
            exists=True,
            dir_okay=False,
            help="A JSON object the approval cites (e.g. `evostream compare --json`); shown by audit.",
        ),
    ] = None,
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Grant (or --reject) approval of a version for a stage (approvers), citing --evidence if given."""
    from evostream.cli.rollout import read_evidence

    cited = read_evidence(evidence)
    if reject and evidence is not None:
        raise GovernanceError("--evidence is cited by an approval; a rejection says why in --reason")
    gov = _actor(_settings(bootstrap, actor))
    if reject:
        gov.reject(model, version, stage, reason)
    else:
        gov.approve(model, version, stage, reason, evidence=cited if evidence is not None else None)
    say(f"{'rejected' if reject else 'approved'} {version} for {stage}" + (f", citing {evidence}" if cited else ""))


@friendly
def promote(
    model: str,
    version: str,
    stage: Annotated[str | None, typer.Option(help="staging or production.")] = None,
    alias: Annotated[str | None, typer.Option(help="An alias such as champion or challenger.")] = None,
    reason: Reason = "",
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Promote a version to a stage, or point an alias at it; the policy decides who may and when."""
    _actor(_settings(bootstrap, actor)).promote(model, version, stage=stage, alias=alias, reason=reason)
    say(f"promoted {version} to {stage or 'alias ' + str(alias)}")


@friendly
def rollback(
    model: Annotated[str, typer.Argument(help="Model name.")],
    to: Annotated[str, typer.Option("--to", help="A version, or 'previous'.")],
    reason: Annotated[str, typer.Option(help="Why (required).")],
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Make an earlier version serve production again (admin); producers following the log swap to it."""
    ev = _actor(_settings(bootstrap, actor)).rollback(model, to, reason)
    say(f"rolled back {model}: {ev.payload['from_version']} -> {ev.payload['version']}")


@friendly
def audit(
    since: Annotated[str | None, typer.Option(help="Only events from this time on (UTC unless given).")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Only this actor's events.")] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Who did what, when and why: one line per governance event, verified as it is read."""
    from evostream.consumers.governance.projection import Finding, replay

    settings = _settings(bootstrap)
    items = _log(settings).items()
    _, findings = replay(items)
    floor = parse_time(since) if since else None
    for offset, ev in items:
        if isinstance(ev, Finding):
            continue
        if (floor is None or ev.occurred_at_us >= floor) and (actor is None or ev.actor == actor):
            typer.echo(audit_line(offset, ev))
    for f in findings:
        typer.secho(f"TAMPERED @{f.offset} #{f.sequence} {f.kind}: {f.detail}", fg=typer.colors.RED, err=True)
    if findings:
        raise SystemExit(2)


@friendly
def replay_cmd(
    verify: Annotated[
        bool, typer.Option("--verify", help="Check every hash, signature, actor and policy rule.")
    ] = False,
    bootstrap: Bootstrap = None,
) -> None:
    """Replay the governance log from its first event; with --verify, report every altered, forged, dropped,
    inserted or reordered event with its offset, and a tail cut short after this machine's signed checkpoints
    (exit 2), and the head the projection reached."""
    from evostream.consumers.governance.projection import replay

    settings = _settings(bootstrap)
    items = _log(settings).items()
    registry, findings = replay(items, verify=verify)
    checked = ""
    if verify:
        path = checkpoints_path(settings)
        findings = anchored(settings, registry, findings, items)
        checked = f", checkpoints in {path}" if path.exists() else ", no checkpoint file on this machine"
        checked += f", head anchored in {anchor_file(settings)}" if anchor_file(settings).exists() else ""
    for f in findings:
        typer.secho(f"offset {f.offset} sequence {f.sequence}: {f.kind}: {f.detail}", fg=typer.colors.RED)
    typer.echo(
        f"{len(items)} events; projection at sequence {registry.head_sequence} (offset {registry.offset}), "
        f"head {registry.head_hash[:16] or '-'}; {'verified' if verify else 'not verified'}{checked}: "
        f"{len(findings)} finding(s)"
    )
    if findings:
        raise SystemExit(2)


@governance_app.command("snapshot")
@friendly
def governance_snapshot(bootstrap: Bootstrap = None) -> None:
    """Replay and verify the whole log, then publish its projection as the latest snapshot (a compacted topic):
    a follower then starts from it and replays only the tail."""
    from evostream.consumers.governance.projection import replay
    from evostream.consumers.governance.snapshot import write_snapshot

    settings = _settings(bootstrap)
    registry, findings = replay(_log(settings).items())
    if findings:
        _warn(findings)
        raise GovernanceError("the log failed verification: no snapshot is written of it")
    snap = write_snapshot(broker(settings), registry, log_topic=settings.governance_topic)
    say(f"snapshot of {settings.governance_topic} at sequence {snap.sequence} (offset {snap.offset}) published")


registry_app = typer.Typer(help="The model registry, as replayed from the governance log.")
AsOf = Annotated[str | None, typer.Option(help="The state as of a time (UTC unless given) or a log offset.")]


def _replayed(settings: Settings, as_of: str | None) -> tuple[Any, list[Any], list[tuple[int, Any]]]:
    r = _view(settings).replayed(as_of)
    return r.registry, r.findings, r.events


def _warn(findings: list[Any]) -> None:
    for f in findings:
        typer.secho(
            f"TAMPERED @{f.offset} #{f.sequence} {f.kind}: {f.detail} (the registry stops before it)",
            fg=typer.colors.RED,
            err=True,
        )


def registry_lines(registry: Any) -> list[str]:
    """The registry for people: per model its serving versions, then one line per version."""
    lines = []
    for name, model in sorted(registry.models.items()):
        aliases = ", ".join(f"{a}={v}" for a, v in sorted(model["aliases"].items())) or "-"
        lines.append(
            f"{name}: production {model['production'] or '-'}, staging {model['staging'] or '-'}, aliases {aliases}"
        )
        for v, ver in model["versions"].items():
            val = ver["validation"]
            verdict = "-" if val is None else ("PASS" if val["passed"] else "FAIL")
            approvers = sorted({a for ap in ver["approvals"].values() for a in ap["granted"]})
            lines.append(
                f"  {v:<36} {ver['stage']:<10} parent {ver['parent'] or '-':<30} validation {verdict:<4} "
                f"approved by {','.join(approvers) or '-'}  registered by {ver['registered_by']} "
                f"{when(ver['registered_at_us'])}"
            )
        running = registry.last_rollout(name)
        if running is not None:
            where = "shadow" if running["step"] < 0 else f"step {running['step']}"
            lines.append(
                f"  rollout {running['rollout_id']}: {running['incumbent']} -> {running['version']} "
                f"{running['status']} ({where}, candidate weight {running['weight']}%); `evostream rollout status`"
            )
    for p in registry.pending_approvals():
        lines.append(
            f"pending: {p['version']} -> {p['stage']}: {len(p['approvers'])}/{p['needed']} approvals "
            f"({', '.join(p['approvers']) or 'none yet'})"
        )
    lines.append(f"policy: {json.dumps(registry.policy, sort_keys=True)}")
    lines.append(
        f"log head: sequence {registry.head_sequence}, offset {registry.offset}, hash {registry.head_hash[:16] or '-'}"
    )
    return lines


@registry_app.callback(invoke_without_command=True)
@friendly
def registry(ctx: typer.Context, as_of: AsOf = None, bootstrap: Bootstrap = None) -> None:
    """Every model, its versions, stages, aliases and pending approvals; --as-of shows an earlier state."""
    if ctx.invoked_subcommand is not None:
        return
    reg, findings, _ = _replayed(_settings(bootstrap), as_of)
    for line in registry_lines(reg):
        typer.echo(line)
    _warn(findings)


@registry_app.command("show")
@friendly
def registry_show(version: str, as_of: AsOf = None, bootstrap: Bootstrap = None) -> None:
    """One version: its artifact, metrics, lineage, validation gates, approvals and the events that touched it
    (``history``: one audit line each, with the evidence an approval or a rollout step cites)."""
    reg, findings, events = _replayed(_settings(bootstrap), as_of)
    model = model_of(reg, version)
    info = reg.version(model, version)
    info["lineage"] = reg.lineage(model, version)
    info["model_name"] = model
    touched = set(info["events"])
    info["history"] = [audit_line(offset, ev) for offset, ev in events if ev.sequence in touched]
    typer.echo(json.dumps(info, indent=2, sort_keys=True))
    _warn(findings)


@friendly
def provenance(
    trace_id: str,
    bootstrap: Bootstrap = None,
    timeout: Annotated[float, typer.Option(help="Seconds to look for the trace's completion.")] = 30.0,
) -> None:
    """Which version answered a trace, its lineage, the governance events that made it serve, its evidence; and the
    route of its request (each routing decision, and for an escalated request the partial trace and the final)."""
    from evostream.schemas.catalog import COMPLETIONS
    from evostream.views.routes import decision_line, read_request
    from evostream.views.traces import find_completion

    settings = _settings(bootstrap)
    server = broker(settings)
    done = find_completion(server, trace_id, timeout)
    if done is None:
        raise GovernanceError(f"no completion of trace {trace_id} on {COMPLETIONS} (looked for {timeout:g} s)")
    replayed = _replayed(settings, None)
    route = read_request(server, str(done["request_id"]))
    traces = [done] if route is None or len(route.completions) < 2 else list(route.completions)
    for rec in traces:
        _answered(rec, replayed)
    if route is not None:
        typer.echo(f"route of request {route.request_id} ({route.route}, tenant {route.tenant}): {route.chosen}")
        for d in route.decisions:
            typer.echo("  " + decision_line(d))
        for c in route.completions:
            kind = "partial" if c["finish_reason"] == "ESCALATED" else "cached" if c.get("cached") else "final"
            typer.echo(
                f"  {kind} trace {c['trace_id']}: {c['model_version']}, {c['token_count']} tokens, "
                f"{c['finish_reason']}, ${float(c.get('cost_usd', 0.0)):.6f}"
            )
    _warn(replayed[1])


def _answered(done: Any, replayed: tuple[Any, list[Any], list[tuple[int, Any]]]) -> None:
    """A trace's version, lineage, validation and governance events up to its answer (an ungoverned version, such as
    an external reference, has none)."""
    from evostream.core.errors import UnknownVersionError

    reg, _, events = replayed
    version, at, trace_id = str(done["model_version"]), int(done["completed_at_us"]), done["trace_id"]
    ended = " (partial: escalated)" if done["finish_reason"] == "ESCALATED" else ""
    if done.get("role") == "SHADOW":  # a rollout candidate's answer to a mirrored copy of the request
        ended += f" (shadow answer of rollout {done.get('rollout_id') or '- (staging)'}: never returned)"
    typer.echo(f"trace {trace_id}: answered by {version} at {when(at)} ({done['token_count']} tokens){ended}")
    try:
        model = model_of(reg, version)
    except UnknownVersionError:
        if not version.startswith("external:"):
            raise
        typer.echo(f"{version} is not a governed version (an external model): no lineage nor governance events")
        return
    info = reg.version(model, version)
    typer.echo(f"lineage: {' <- '.join(reg.lineage(model, version))}")
    typer.echo(f"artifact: {info['artifact_uri']}  operator: {info['operator'] or '-'} {info['operator_params']}")
    val = info["validation"]
    typer.echo(
        "validation: "
        + (
            "none"
            if val is None
            else f"{'PASS' if val['passed'] else 'FAIL'} {json.dumps(val['gates'], sort_keys=True)}"
        )
    )
    typer.echo("governance events of this version up to the answer:")
    for offset, ev in events:
        if ev.model_name == model and ev.payload.get("version") == version and ev.occurred_at_us <= at:
            typer.echo("  " + audit_line(offset, ev))


@friendly
def validate(
    model: str,
    version: str,
    per_task: Annotated[int, typer.Option(min=1, help="Held-out prompts per task.")] = 20,
    min_accuracy: Annotated[float, typer.Option(help="Exact-match accuracy each task must reach.")] = 0.9,
    reason: Reason = "",
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Measure a registered version on the held-out task suite (its artifact re-hashed first) and record the result
    with every gate's value; a pass is promoted to staging when the policy says so."""
    from evostream.core.artifacts import ArtifactStore
    from evostream.wiring.governed import measure_on_suite

    settings = _settings(bootstrap, actor)
    gov = _actor(settings)
    info = gov.state().registry.version(model, version)
    path = ArtifactStore(settings.artifacts_dir).open(info["artifact_sha256"])
    passed, gates, acc = measure_on_suite(path, per_task, min_accuracy)
    events = gov.validated(model, version, passed, gates, reason or f"task suite, {per_task} held-out prompts per task")
    say(
        f"validation of {version}: {'PASS' if passed else 'FAIL'} (mean accuracy {acc['mean']:.3f})"
        + ("; promoted to staging" if len(events) > 1 else "")
    )
