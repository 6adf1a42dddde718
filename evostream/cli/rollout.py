"""``evostream rollout start|status|abort``: progressive delivery, governed on ``evo.governance``.

``rollout start`` (a person: the roles and approvals of a promotion to production) writes RolloutStarted with the
plan and the evidence it cites; the rollout controller (``rollout control``) steps it through the plan and completes
or aborts it; ``rollout abort`` stops it by hand; ``rollout status`` reads it back from the log with each step's
evidence. Other modules add their commands onto ``rollout_app`` (``rollout_control.py``: control and compare)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.errors import GovernanceError
from evostream.core.settings import Settings, load_settings

rollout_app = typer.Typer(help="Rollouts: shadow, weighted canary steps, automatic abort.", no_args_is_help=True)

Actor = Annotated[str | None, typer.Option(help="Acting actor (its key signs). Env: EVOSTREAM_GOVERNANCE_ACTOR.")]
Reason = Annotated[str, typer.Option(help="Why, in your words (required; kept in the log).")]
EvidenceFile = Annotated[
    Path | None,
    typer.Option(
        "--evidence", exists=True, dir_okay=False, help="A JSON object to cite (e.g. `evostream compare --json`)."
    ),
]


def _settings(bootstrap: str | None, actor: str | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if bootstrap:
        overrides["bootstrap_servers"] = bootstrap
    if actor:
        overrides["governance_actor"] = actor
    return load_settings(**overrides)


def read_evidence(path: Path | None) -> dict[str, Any]:
    """The JSON object in ``path`` ({} without one); GovernanceError for a file that holds no JSON object."""
    if path is None:
        return {}
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise GovernanceError(f"--evidence {path}: not a JSON file ({e})") from e
    if not isinstance(found, dict):
        raise GovernanceError(f"--evidence {path}: a JSON object is cited, not a {type(found).__name__}")
    return found


def plan_of(
    steps: str | None,
    step_s: float | None,
    min_samples: int | None,
    shadow_share: float | None,
    shadow_s: float | None,
    clean_cycles: int | None,
    confidence: float | None,
    gates: list[str] | None,
) -> dict[str, Any]:
    """The plan the options give, as RolloutPlan JSON: the defaults, with what was given in place (``--gate
    NAME=TOLERANCE`` sets one gate, ``NAME=off`` drops it)."""
    from evostream.rollout.plan import RolloutPlan

    plan = RolloutPlan().to_json()
    if steps is not None:
        try:
            plan["steps"] = [int(s) for s in steps.split(",") if s.strip()]
        except ValueError as e:
            raise GovernanceError(f"--steps {steps!r}: whole percents separated by commas, e.g. 1,5,25,50,100") from e
    given = {
        "step_s": step_s,
        "min_samples": min_samples,
        "shadow_share": shadow_share,
        "shadow_s": shadow_s,
        "clean_cycles": clean_cycles,
        "confidence": confidence,
    }
    plan.update({k: v for k, v in given.items() if v is not None})
    for gate in gates or []:
        name, sep, value = gate.partition("=")
        name = name.strip()
        if not sep or not name:
            raise GovernanceError(f"--gate {gate!r}: write NAME=TOLERANCE (e.g. alert_rate=0.1) or NAME=off")
        if value.strip() == "off":
            plan["gates"].pop(name, None)
            continue
        try:
            plan["gates"][name] = {"tolerance": float(value)}
        except ValueError as e:
            raise GovernanceError(f"--gate {gate!r}: the tolerance is a number (relative: 0.1 is 10%)") from e
    try:
        return RolloutPlan.from_json(plan).to_json()
    except ValueError as e:
        raise GovernanceError(f"the rollout plan is refused: {e}") from e


@rollout_app.command("start")
@friendly
def start(
    model: Annotated[str, typer.Argument(help="Model name, e.g. evostream/t5-tiny-suite.")],
    version: Annotated[str, typer.Argument(help="The candidate version (approved for production).")],
    reason: Reason,
    steps: Annotated[str | None, typer.Option(help="Candidate weights in percent, ascending, ending at 100.")] = None,
    step_s: Annotated[float | None, typer.Option(help="A step's window in seconds (default 60).")] = None,
    min_samples: Annotated[int | None, typer.Option(help="Candidate answers a window needs to pass (30).")] = None,
    shadow_share: Annotated[
        float | None, typer.Option(help="Share of the other requests mirrored to the candidate (0.1).")
    ] = None,
    shadow_s: Annotated[float | None, typer.Option(help="The shadow phase before step 0, in seconds (60).")] = None,
    clean_cycles: Annotated[int | None, typer.Option(help="Clean windows at 100% before completion (3).")] = None,
    confidence: Annotated[float | None, typer.Option(help="Each gate's one-sided test's confidence (0.99).")] = None,
    gate: Annotated[
        list[str] | None,
        typer.Option(
            "--gate",
            help="NAME=TOLERANCE (relative) for alert_rate, accuracy, p95_latency, error_rate; NAME=off drops one. "
            "Repeat for several.",
        ),
    ] = None,
    evidence: EvidenceFile = None,
    rollout_id: Annotated[str | None, typer.Option(help="The rollout's id (default: a new ro-...).")] = None,
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Start rolling VERSION out in place of MODEL's production: shadow first, then the plan's weighted steps, each
    judged by the rollout controller on its gates (RolloutStarted; the roles and approvals of a promotion)."""
    from evostream.views.governance import GovernanceView, evidence_summary

    plan = plan_of(steps, step_s, min_samples, shadow_share, shadow_s, clean_cycles, confidence, gate)
    cited = read_evidence(evidence)
    settings = _settings(bootstrap, actor)
    gov = GovernanceView(broker(settings), settings).actor(settings.governance_actor)
    try:
        ev = gov.start_rollout(model, version, plan, cited, reason=reason, rollout_id=rollout_id)
    finally:
        gov.log.close()
    p = ev.payload
    say(
        f"started rollout {p['rollout_id']} of {model}: {p['incumbent']} -> {version}; shadow {plan['shadow_s']:g} s, "
        f"then steps {','.join(map(str, plan['steps']))}% (`evostream rollout control` steps it)"
        + (f"; citing {evidence_summary(cited)}" if cited else "")
    )


@rollout_app.command("status")
@friendly
def status(
    model: Annotated[str | None, typer.Argument(help="Model name (default: every model with a rollout).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The rollout state(s) as JSON.")] = False,
    bootstrap: Bootstrap = None,
) -> None:
    """The running (or else the last) rollout of MODEL, or of every model: step, weight, plan and history, with each
    step's evidence (gate verdicts)."""
    from evostream.consumers.governance.rollouts import latest
    from evostream.views.governance import GovernanceView, rollout_lines

    settings = _settings(bootstrap)
    replayed = GovernanceView(broker(settings), settings).replayed()
    reg = replayed.registry
    models = [model] if model else sorted({r["model_name"] for r in reg.rollouts.values()})
    found = [r for r in (latest(reg.rollouts, m) for m in models) if r is not None]
    if model and not found:
        raise GovernanceError(f"{model} has had no rollout (`evostream rollout start {model} VERSION` starts one)")
    if as_json:
        print(json.dumps(found[0] if model else found, indent=2, sort_keys=True))
    elif not found:
        say("no rollout yet")
    for r in [] if as_json else found:
        for line in rollout_lines(dict(r)):
            typer.echo(line)
    for f in replayed.findings:
        typer.secho(f"TAMPERED @{f.offset} #{f.sequence} {f.kind}: {f.detail}", fg=typer.colors.RED, err=True)
    if replayed.findings:
        raise SystemExit(2)


@rollout_app.command("abort")
@friendly
def abort(
    model: Annotated[str, typer.Argument(help="Model name.")],
    reason: Reason,
    evidence: EvidenceFile = None,
    bootstrap: Bootstrap = None,
    actor: Actor = None,
) -> None:
    """Abort MODEL's running rollout by hand (admin or approver): the candidate's weight goes back to 0 at once,
    every request goes to the incumbent (RolloutAborted)."""
    from evostream.views.governance import GovernanceView

    cited = read_evidence(evidence)
    settings = _settings(bootstrap, actor)
    gov = GovernanceView(broker(settings), settings).actor(settings.governance_actor)
    try:
        running = gov.state().registry.active_rollout(model)
        if running is None:
            raise GovernanceError(f"{model} has no running rollout: nothing to abort (`evostream rollout status`)")
        gov.abort_rollout(model, running["rollout_id"], cited, automatic=False, reason=reason)
    finally:
        gov.log.close()
    say(
        f"aborted rollout {running['rollout_id']} of {model}: {running['version']} at 0%, "
        f"{running['incumbent']} answers every request"
    )
