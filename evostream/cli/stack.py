"""``evostream stack ...``: the local single-node Kafka broker."""

from __future__ import annotations

from typing import Annotated

import typer

from evostream.cli.common import CtlPort, Port, friendly, say
from evostream.core.settings import load_settings

stack_app = typer.Typer(help="The local single-node Kafka broker.", no_args_is_help=True)


@stack_app.command("up")
@friendly
def stack_up(
    port: Port = None,
    controller_port: CtlPort = None,
    heap: Annotated[str | None, typer.Option(help="Broker JVM heap, e.g. 1g.")] = None,
) -> None:
    """Start the local broker (or reuse the running one) and create every catalog topic."""
    from evostream.core.stack import LocalStack

    state = LocalStack(load_settings(broker_port=port, controller_port=controller_port, broker_heap=heap)).up(say)
    typer.echo(state.bootstrap)


@stack_app.command("status")
@friendly
def stack_status() -> None:
    """Say whether the local broker runs, where, and which topics it has."""
    from evostream.core.stack import LocalStack

    st = LocalStack(load_settings()).status()
    if st.state is None:
        typer.echo("stopped")
        raise typer.Exit(3)
    typer.echo(f"{st.detail}: pid {st.state.pid}, bootstrap {st.state.bootstrap}, Kafka {st.state.kafka_version}")
    for t in st.topics:
        typer.echo(f"  {t}")
    if not st.running:
        raise typer.Exit(1)


@stack_app.command("down")
@friendly
def stack_down(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a controlled shutdown.")] = 30.0,
) -> None:
    """Stop the local broker: controlled shutdown, then the process is gone."""
    from evostream.core.stack import LocalStack

    LocalStack(load_settings()).down(timeout, say)


@stack_app.command("logs")
@friendly
def stack_logs(lines: Annotated[int, typer.Option("-n", help="How many lines.")] = 40) -> None:
    """Print the tail of the local broker's logs."""
    from evostream.core.stack import LocalStack

    typer.echo(LocalStack(load_settings()).log_tail(lines))
