"""``evostream risk train``: a risk probe fitted from the log's labelled outcomes, registered in governance."""

from __future__ import annotations

from typing import Annotated

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.settings import load_settings

risk_app = typer.Typer(help="The learned risk probe: train it from the log.", no_args_is_help=True)

Since = Annotated[str | None, typer.Option(help="Labels recorded from this time (UTC unless an offset is given).")]
Until = Annotated[str | None, typer.Option(help="Labels recorded before this time.")]


@risk_app.command("train")
@friendly
def train(
    family: Annotated[
        str | None, typer.Option(help="Model family whose traces it learns from (default: the embedded model's).")
    ] = None,
    since: Since = None,
    until: Until = None,
    l2: Annotated[
        float | None,
        typer.Option(min=0.0, help="L2 penalty of the logistic regression (default: chosen inside the fit part)."),
    ] = None,
    min_gain: Annotated[
        float, typer.Option(help="Held-out AUROC it must add to mean entropy's to pass its validation.")
    ] = 0.0,
    actor: Annotated[
        str | None, typer.Option(help="Actor whose key signs the registration. Env: EVOSTREAM_GOVERNANCE_ACTOR.")
    ] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Replay labelled outcomes and their steps, fit the probe on the older three quarters, measure it on the newest
    quarter against mean entropy, store it and register it as a version of risk/<family> with its validation.
    Approve and promote it like any model; `evostream process` then serves it."""
    from evostream.core.artifacts import ArtifactStore
    from evostream.models.default_model import MODEL_ID
    from evostream.views.governance import GovernanceView, parse_time
    from evostream.wiring.risk import register_probe, train_probe

    settings = load_settings(bootstrap_servers=bootstrap, governance_actor=actor)
    server = broker(settings)
    fam = family or MODEL_ID  # a version is <family>@<hash>: the embedded model's family is its id
    trained = train_probe(
        server,
        fam,
        since_us=parse_time(since) if since else None,
        until_us=parse_time(until) if until else None,
        l2=l2,
        min_gain=min_gain,
        progress=say,
    )
    gov = GovernanceView(server, settings).actor(settings.governance_actor)
    try:
        version = register_probe(gov, ArtifactStore(settings.artifacts_dir), trained)
    finally:
        gov.log.close()
    say(f"registered {version}: validation {'passed' if trained.passed else 'FAILED'} {trained.gates}")
    typer.echo(version)


@friendly
def rescore(
    policy: Annotated[
        str, typer.Option(help="hand-set (the shipped policies), or a risk/<family>@... version in the governance log.")
    ],
    since: Annotated[str | None, typer.Option(help="Traces that began from this time (UTC unless an offset).")] = None,
    until: Annotated[str | None, typer.Option(help="Traces that began before this time.")] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Replay logged steps through a risk policy without the model: what it would have alerted on against what did,
    precision and recall on the labelled outcomes, and every trace whose verdict changed (same range, same output)."""
    from evostream.core.artifacts import ArtifactStore
    from evostream.views.governance import GovernanceView, parse_time
    from evostream.wiring.rescore import rescore as replay_through

    settings = load_settings(bootstrap_servers=bootstrap)
    server = broker(settings)
    registry = GovernanceView(server, settings).replayed().registry
    done = replay_through(
        server,
        ArtifactStore(settings.artifacts_dir),
        registry,
        policy,
        parse_time(since) if since else None,
        parse_time(until) if until else None,
    )
    for line in done.lines():
        typer.echo(line)
