"""What every command shares: the error decorator, the message channel, the common options, finding the broker."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, ParamSpec, TypeVar

import typer

from evostream.core.errors import EvoError
from evostream.core.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")


def say(msg: str) -> None:
    """Progress and notes go to stderr, so stdout holds only a command's answer."""
    typer.echo(msg, err=True)


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn evostream's own errors into one clear message and exit code 1, not a traceback."""

    @wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except EvoError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            sys.exit(1)

    return run


Port = Annotated[int | None, typer.Option(help="Broker port (0 = a free one). Env: EVOSTREAM_BROKER_PORT.")]
CtlPort = Annotated[int | None, typer.Option(help="Controller port (0 = a free one). Env: EVOSTREAM_CONTROLLER_PORT.")]
Bootstrap = Annotated[str | None, typer.Option(help="Kafka bootstrap servers. Env: EVOSTREAM_BOOTSTRAP_SERVERS.")]


def broker(settings: Settings) -> str:
    """The broker address (the flag, else the environment, else the local stack), once it answers."""
    from evostream.core.bus.admin import wait_for_broker
    from evostream.core.stack import resolve_bootstrap

    server = resolve_bootstrap(settings)
    wait_for_broker(server, settings.connect_timeout_s)
    return server
