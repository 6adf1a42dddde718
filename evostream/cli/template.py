"""``evostream template create|list|show|evolve|rollback``: governed prompt templates. Every answer is a replay of
``evo.governance``; every change is a signed event of the acting actor (``evostream.wiring.templates``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.errors import GovernanceError
from evostream.core.settings import Settings, load_settings

if TYPE_CHECKING:
    from evostream.consumers.governance.projection import Registry
    from evostream.core.artifacts import ArtifactStore
    from evostream.wiring.templates import Answer

template_app = typer.Typer(
    help="Governed prompt templates: versions with lineage, a co-evolution cycle with a gate, rollback.",
    no_args_is_help=True,
)

Actor = Annotated[str | None, typer.Option(help="Acting actor (its key signs). Env: EVOSTREAM_GOVERNANCE_ACTOR.")]
Reason = Annotated[str, typer.Option(help="Why, in your words (kept in the log).")]
HeldOut = Annotated[int, typer.Option(min=1, max=200, help="Held-out (eval split) examples of the task scored.")]
Splits = Annotated[
    int,
    typer.Option(
        "--held-out",
        min=1,
        max=100,
        help="Held-out (eval split) examples of the task in each of the cycle's two disjoint splits: the selection "
        "split every variant is scored on, and the confirmation split the selected one must gain on again.",
    ),
]
Model = Annotated[
    str | None,
    typer.Option(help="The registry model whose production version scores templates (default: the embedded model)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _settings(bootstrap: str | None, actor: str | None = None) -> Settings:
    return load_settings(bootstrap_servers=bootstrap, governance_actor=actor)


def _registry(settings: Settings) -> Registry:
    from evostream.views.governance import GovernanceView

    replayed = GovernanceView(broker(settings), settings).replayed()
    if replayed.findings:
        raise GovernanceError(
            f"the governance log failed verification ({replayed.findings[0]}): run `evostream replay --verify`"
        )
    registry: Registry = replayed.registry
    return registry


def _answers(registry: Registry, store: ArtifactStore, model: str | None) -> tuple[str, Answer]:
    from evostream.models.default_model import MODEL_ID
    from evostream.wiring.templates import production_answers

    name = model or MODEL_ID
    version, answer = production_answers(registry, store, name)
    say(f"scoring with {version}, the production version of {name}")
    return version, answer


@template_app.command("create")
@friendly
def create(
    name: Annotated[str, typer.Argument(help="The template's name (a-z, 0-9, '_', '-').")],
    text: Annotated[str, typer.Option(help="The text, with the slot {input} exactly once.")],
    marker: Annotated[
        list[str] | None,
        typer.Option(help="A protected marker: a string every version must keep (repeat for several)."),
    ] = None,
    task: Annotated[str | None, typer.Option(help="The suite task it is scored on (reverse, sort, add, ...).")] = None,
    held_out: HeldOut = 100,
    model: Model = None,
    reason: Reason = "",
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Register a template version (a new template, or a new version of one that keeps its protected markers),
    validated and promoted as far as the policy lets you; with --task, its held-out score is recorded."""
    from evostream.core.artifacts import ArtifactStore
    from evostream.prompts.template import Template, check
    from evostream.views.governance import GovernanceView
    from evostream.wiring.templates import create as create_template

    t = Template(name, text, tuple(marker or ()), task)
    check(t)  # before the broker is looked for
    settings = _settings(bootstrap, actor)
    store = ArtifactStore(settings.artifacts_dir)
    gov = GovernanceView(broker(settings), settings).actor(settings.governance_actor)
    try:
        scored_with, answer = _answers(gov.state().registry, store, model) if task else (None, None)
        done = create_template(gov, store, t, answer, held_out, scored_with, reason)
    finally:
        gov.log.close()
    score = f", held-out {done.score:.3f} on {held_out} {task} examples" if done.score is not None else ""
    say(f"registered {done.version} ({done.stage}){score}")
    if done.note:
        say(done.note)
    typer.echo(done.version)


@template_app.command("list")
@friendly
def list_(json_out: Json = False, bootstrap: Bootstrap = None) -> None:
    """Every template: its production and staging versions, how many versions, and the production text."""
    from evostream.core.artifacts import ArtifactStore
    from evostream.prompts.template import model_name
    from evostream.wiring.templates import load_template, template_names

    settings = _settings(bootstrap)
    registry = _registry(settings)
    store = ArtifactStore(settings.artifacts_dir)
    rows = []
    for name in template_names(registry):
        model = registry.models[model_name(name)]
        production = model["production"]
        text = None
        if production is not None:
            text = load_template(store, model["versions"][production]["artifact_sha256"]).text
        rows.append(
            {
                "name": name,
                "production": production,
                "staging": model["staging"],
                "versions": len(model["versions"]),
                "text": text,
            }
        )
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        say("no template is registered (`evostream template create NAME --text '...{input}...'`)")
    for r in rows:
        text = repr(r["text"]) if r["text"] is not None else "(none in production)"
        typer.echo(
            f"{r['name']}: production {r['production'] or '-'}, staging {r['staging'] or '-'}, "
            f"{r['versions']} version{'s' if r['versions'] != 1 else ''}: {text}"
        )


@template_app.command("show")
@friendly
def show(
    ref: Annotated[str, typer.Argument(help="NAME (its production version, else its newest) or NAME@VERSION.")],
    json_out: Json = False,
    bootstrap: Bootstrap = None,
) -> None:
    """One template version: its text, markers, task, stage, lineage, metrics and validation."""
    from evostream.core.artifacts import ArtifactStore
    from evostream.prompts.template import TemplateError, parse_ref
    from evostream.wiring.templates import base_version, load_template, template_names

    named = parse_ref(ref)
    settings = _settings(bootstrap)
    registry = _registry(settings)
    version = named.version or base_version(registry, named.name)
    if named.model not in registry.models or version is None:
        known = ", ".join(template_names(registry)) or "none"
        raise TemplateError(f"unknown template {named.name!r} (templates: {known})")
    state = registry.version(named.model, version)
    t = load_template(ArtifactStore(settings.artifacts_dir), state["artifact_sha256"])
    doc: dict[str, Any] = {
        "version": version,
        "model_name": named.model,
        "stage": state["stage"],
        "text": t.text,
        "markers": list(t.markers),
        "task": t.task,
        "parent": state["parent"],
        "lineage": registry.lineage(named.model, version),
        "operator": state["operator"],
        "operator_params": state["operator_params"],
        "metrics": state["metrics"],
        "validation": state["validation"],
        "artifact_uri": state["artifact_uri"],
        "registered_by": state["registered_by"],
    }
    if json_out:
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    typer.echo(f"{version} ({state['stage']}): {t.text!r}")
    typer.echo(f"markers: {', '.join(map(repr, t.markers)) or 'none'} · task: {t.task or '-'}")
    operator = state["operator"] or "-"
    detail = state["operator_params"].get("detail")
    typer.echo(f"lineage: {' <- '.join(doc['lineage'])} · operator: {operator}" + (f" ({detail})" if detail else ""))
    metrics = {k: v for k, v in state["metrics"].items() if k not in ("markers", "task")}
    if metrics:
        typer.echo(f"metrics: {json.dumps(metrics, sort_keys=True)}")
    v = state["validation"]
    typer.echo(f"validation: {'none' if v is None else ('passed' if v['passed'] else 'FAILED')}")
    typer.echo(f"artifact: {state['artifact_uri']} · registered by {state['registered_by']}")


@template_app.command("evolve")
@friendly
def evolve(
    name: Annotated[str, typer.Argument(help="The template whose production version the cycle starts from.")],
    task: Annotated[str | None, typer.Option(help="The suite task it is scored on (default: the template's).")] = None,
    held_out: Splits = 100,
    model: Model = None,
    reason: Reason = "",
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """One co-evolution cycle: each variant's score, gain and verdict on the selection split; the best one the gate
    passes (a gain of at least the policy's template_min_gain, every protected marker kept) is scored again on the
    confirmation split and, when its gain holds there too, registered with its lineage, validated and promoted as far
    as the policy lets you. Exit 2 when every variant was refused."""
    from evostream.core.artifacts import ArtifactStore
    from evostream.views.governance import GovernanceView
    from evostream.wiring.templates import evolve as run_cycle
    from evostream.wiring.templates import resolve

    settings = _settings(bootstrap, actor)
    store = ArtifactStore(settings.artifacts_dir)
    gov = GovernanceView(broker(settings), settings).actor(settings.governance_actor)
    try:
        resolve(gov.state().registry, name)  # no production version to start from: said before the model loads
        scored_with, answer = _answers(gov.state().registry, store, model)
        cycle = run_cycle(gov, store, name, answer, task, held_out, scored_with, reason)
    finally:
        gov.log.close()
    for line in cycle.lines():
        typer.echo(line)
    if cycle.accepted is None:
        raise typer.Exit(2)


@template_app.command("rollback")
@friendly
def rollback(
    name: Annotated[str, typer.Argument(help="The template.")],
    to: Annotated[str, typer.Option("--to", help="A version (N or NAME@N), or 'previous'.")],
    reason: Annotated[str, typer.Option(help="Why (required).")],
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Move the template's production pointer back to an earlier version (admin); services follow at once."""
    from evostream.views.governance import GovernanceView
    from evostream.wiring.templates import rollback as move_back

    settings = _settings(bootstrap, actor)
    gov = GovernanceView(broker(settings), settings).actor(settings.governance_actor)
    try:
        ev = move_back(gov, name, to, reason)
    finally:
        gov.log.close()
    say(f"rolled back template {name}: {ev.payload['from_version']} -> {ev.payload['version']}")
    typer.echo(ev.payload["version"])
