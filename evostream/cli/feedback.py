"""``evostream feedback``: say whether a generation was right, as a label on ``evo.outcomes``."""

from __future__ import annotations

from typing import Annotated

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.errors import EvoError
from evostream.core.settings import load_settings


@friendly
def feedback(
    trace_id: str,
    right: Annotated[bool, typer.Option("--right", help="The answer was right.")] = False,
    wrong: Annotated[bool, typer.Option("--wrong", help="The answer was wrong.")] = False,
    score: Annotated[
        float | None, typer.Option(help="How right, in [0, 1], instead of --right / --wrong (a GRADED label).")
    ] = None,
    note: Annotated[str, typer.Option(help="Why, in your words.")] = "",
    actor: Annotated[
        str | None, typer.Option(help="Who says so. Env: EVOSTREAM_GOVERNANCE_ACTOR (default admin).")
    ] = None,
    label_id: Annotated[
        str | None,
        typer.Option("--id", help="This label's id: giving the same id again is a retry, recorded once."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to look for the trace's completion.")] = 30.0,
    bootstrap: Bootstrap = None,
) -> None:
    """Label a trace right or wrong (or graded); the last label of each actor stands, a retry is recorded once."""
    from evostream.wiring.feedback import record_feedback

    given = [name for name, on in (("--right", right), ("--wrong", wrong), ("--score", score is not None)) if on]
    if len(given) != 1:
        raise EvoError(f"say exactly one of --right, --wrong and --score (got {', '.join(given) or 'none'})")
    label = "RIGHT" if right else "WRONG" if wrong else "GRADED"
    settings = load_settings(bootstrap_servers=bootstrap, governance_actor=actor)
    rec = record_feedback(
        broker(settings),
        trace_id,
        label,
        actor=settings.governance_actor,
        score=score,
        note=note,
        outcome_id=label_id,
        lookup_timeout_s=timeout,
    )
    say(f"recorded: trace {trace_id} ({rec['model_version']}) {label} by {rec['actor']}")
    typer.echo(rec["outcome_id"])
