"""``evostream stack ...``: the local single-node Kafka broker."""

from __future__ import annotations

from pathlib import Path
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


@stack_app.command("credentials")
@friendly
def stack_credentials(
    file: Annotated[
        Path | None,
        typer.Option(help="The credentials file (default: the local stack's). Env: EVOSTREAM_KAFKA_CREDENTIALS."),
    ] = None,
    broker_env: Annotated[
        Path | None,
        typer.Option(help="Also write the broker's SASL settings as KAFKA_* variables (docker-compose.yml's kafka)."),
    ] = None,
) -> None:
    """Create the Kafka credentials file (a random password per principal, mode 0600; existing ones are kept) and
    print its path; `stack up` does this itself."""
    from evostream.core.bus.security import SUPER_USER, CredentialsFile, stack_credentials_path
    from evostream.core.stack.config import compose_broker_env

    settings = load_settings()
    path = file or settings.kafka_credentials or stack_credentials_path(settings.stack_dir)
    old = CredentialsFile.load(path) if path.exists() else None
    creds = CredentialsFile.ensure(path, old.bootstrap if old else "")
    if broker_env is not None:
        broker_env.parent.mkdir(parents=True, exist_ok=True)
        broker_env.unlink(missing_ok=True)
        broker_env.touch(mode=0o600)
        broker_env.write_text(compose_broker_env(creds.passwords[SUPER_USER]), encoding="utf-8")
    say(f"principals: {', '.join(sorted(p for p in creds.passwords if p != SUPER_USER))} (and {SUPER_USER})")
    typer.echo(path)
