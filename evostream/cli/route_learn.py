"""``evostream route train`` and ``route eval``: a routing policy learned from the log, and a policy scored on the
log's history (the share, accuracy and tokens it would have had). ``evostream.cli`` adds both onto the ``route``
sub-app of ``route.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.errors import EvoError
from evostream.core.settings import load_settings

route_policy_app = typer.Typer(
    help="Routing policies: train one from the log, score one on history.", no_args_is_help=True
)

Family = Annotated[
    str | None, typer.Option(help="The self model's family (default: the embedded model's): its answers are routed.")
]
Since = Annotated[str | None, typer.Option(help="Requests completed from this time (UTC unless an offset is given).")]
Until = Annotated[str | None, typer.Option(help="Requests completed before this time.")]


@friendly
def train(
    route: Annotated[str, typer.Option("--route", help="The route the policy is for.")],
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="Where to write the policy (RoutePolicy JSON).")],
    family: Family = None,
    probe: Annotated[
        str,
        typer.Option(
            help="The probe read mid-answer: 'gain' (default) fits the policy's own on 'the reference wins' from the "
            "same history and stores it in the artifact store; 'production' the production version of "
            "risk/<family> in the governance log; an artifact sha256; 'none' for no decision mid-answer."
        ),
    ] = "gain",
    level: Annotated[
        list[int] | None, typer.Option("--level", min=1, max=4, help="A level to calibrate (repeat; default 1-4).")
    ] = None,
    bound: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="A level's bound on the self-answered error rate.")
    ] = 0.15,
    confidence: Annotated[float, typer.Option(min=0.5, max=0.999999, help="Confidence of that bound.")] = 0.95,
    l2: Annotated[float, typer.Option(min=0.0, help="L2 penalty of the prompt model.")] = 10.0,
    since: Since = None,
    until: Until = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Read the route's labelled history (requests, completions, steps, outcomes), fit the prompt model (and, by
    default, the gain probe read mid-answer) on the oldest half, choose each level's gates on the next quarter and
    certify them on the newest; write the policy file and print the evidence per level. Register it with
    `evostream route register`."""
    from evostream.core.artifacts import ArtifactStore
    from evostream.models.default_model import MODEL_ID
    from evostream.views.governance import GovernanceView, parse_time
    from evostream.wiring.risk import load_probe, probe_model
    from evostream.wiring.route_train import read_history, store_probe, train_policy

    settings = load_settings(**({"bootstrap_servers": bootstrap} if bootstrap else {}))
    server = broker(settings)
    fam = family or MODEL_ID
    store = ArtifactStore(settings.artifacts_dir)
    sha = probe
    if sha == "production":
        registry = GovernanceView(server, settings).replayed().registry
        state = registry.models.get(probe_model(fam))
        version = state["production"] if state else None
        if version is None:
            raise EvoError(
                f"no production {probe_model(fam)} in the governance log: train one (`evostream risk train`), pass "
                "--probe gain (the policy's own), --probe SHA256, or --probe none for a policy that decides before "
                "generation only"
            )
        sha = str(state["versions"][version]["artifact_sha256"]) if state else ""
        say(f"mid-answer: the production probe {version}")
    risk = None if sha in ("none", "gain") else load_probe(store, sha)
    history = read_history(server, fam, parse_time(since) if since else None, parse_time(until) if until else None)
    trained = train_policy(
        history,
        route,
        risk,
        "" if risk is None else str(sha),
        levels=sorted(set(level or [1, 2, 3, 4])),
        bound=bound,
        confidence=confidence,
        l2=l2,
        keep_probe=(lambda p: store_probe(store, p)) if sha == "gain" else None,
    )
    out.write_bytes(trained.policy.to_bytes())
    for line in trained.lines:
        typer.echo(line)
    say(f"wrote {out} (route {route}); register it with `evostream route register --name {route} --policy {out}`")


@friendly
def eval_(
    policy: Annotated[Path, typer.Option("--policy", exists=True, dir_okay=False, help="A routing policy file.")],
    family: Family = None,
    since: Since = None,
    until: Until = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Replay a policy at each of its levels on the log's labelled history: the share each target would have
    answered, the accuracy and the tokens, against the self model alone and the reference alone."""
    from evostream.core.artifacts import ArtifactStore
    from evostream.models.default_model import MODEL_ID
    from evostream.routing.policy import RoutePolicy
    from evostream.views.governance import parse_time
    from evostream.wiring.risk import load_probe
    from evostream.wiring.route_train import evaluate_policy, read_history

    settings = load_settings(**({"bootstrap_servers": bootstrap} if bootstrap else {}))
    loaded = RoutePolicy.from_bytes(policy.read_bytes())
    risk = load_probe(ArtifactStore(settings.artifacts_dir), loaded.probe_sha256) if loaded.probe_sha256 else None
    history = read_history(
        broker(settings), family or MODEL_ID, parse_time(since) if since else None, parse_time(until) if until else None
    )
    n = len(history.requests)
    if not n:
        raise EvoError(f"no labelled request of {family or MODEL_ID} on the log: nothing to score the policy on")
    self_acc = 1 - sum(p.self_wrong for p in history.requests) / n
    ref_acc = 1 - sum(bool(p.reference_wrong) for p in history.requests) / n
    unknown = sum(p.reference_wrong is None for p in history.requests)
    typer.echo(
        f"{n} labelled requests; self alone {self_acc:.3f}, reference alone {ref_acc:.3f} "
        f"({unknown} reference answers unlabelled, counted right)"
    )
    typer.echo("level  self-share  before  mid    accuracy  self-tokens  wasted  reference-tokens")
    for gate, r in evaluate_policy(history, loaded, risk):
        typer.echo(
            f"{gate.level:<6} {r.self_share:<11.3f} {r.share('before'):<7.3f} {r.share('mid'):<6.3f} "
            f"{r.accuracy:<9.3f} {r.self_tokens:<12} {r.wasted_tokens:<7} {r.reference_tokens}"
        )
