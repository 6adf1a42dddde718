"""``evostream reference-labels``: the reference's answers written back as labels of the self model's answers to the
same requests (``wiring.reference_labels``), once or following the log."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.settings import load_settings
from evostream.schemas.records import Outcome
from evostream.views.governance import parse_time


@friendly
def reference_labels(
    since: Annotated[str | None, typer.Option(help="Requests decided from this time (default: all).")] = None,
    follow: Annotated[bool, typer.Option(help="Keep following the log (Ctrl-C stops).")] = False,
    every: Annotated[float, typer.Option(min=1.0, help="With --follow: seconds between passes.")] = 30.0,
    bootstrap: Bootstrap = None,
) -> None:
    """Label each self answer whose request the reference answered too by comparing the two (RIGHT when they agree,
    WRONG when not; source REFERENCE) on evo.outcomes; a label already there is not written again. Escalated partial
    answers get no label. Prints the labelled traces."""
    from evostream.wiring.reference_labels import follow_audited, label_audited

    server = broker(load_settings(bootstrap_servers=bootstrap))
    since_us = None if since is None else parse_time(since)

    def show(written: list[Outcome]) -> None:
        for o in written:
            typer.echo(o["trace_id"])
        say(f"{len(written)} audited answers labelled")

    if not follow:
        show(label_audited(server, since_us))
        return
    stop = threading.Event()
    try:
        follow_audited(server, stop, since_us, every, said=show)
    except KeyboardInterrupt:
        stop.set()
