"""``evostream stack ...``: the local Kafka broker (one node), or a local cluster of three."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evostream.cli.common import CtlPort, Port, friendly, say
from evostream.core.settings import load_settings

stack_app = typer.Typer(help="The local Kafka broker (one node), or a local cluster of three.", no_args_is_help=True)

Node = Annotated[int, typer.Argument(help="The node's id in the local cluster (1, 2 or 3).")]


@stack_app.command("up")
@friendly
def stack_up(
    port: Port = None,
    controller_port: CtlPort = None,
    heap: Annotated[str | None, typer.Option(help="Broker JVM heap, e.g. 1g (a cluster's nodes: 512m each).")] = None,
    brokers: Annotated[
        int,
        typer.Option(
            help="1: one node. 3: a cluster of three nodes, each broker and controller, on the ports from --port "
            "and --controller-port + 2 per node; topics get replication 3 and min in-sync 2."
        ),
    ] = 1,
) -> None:
    """Start the local broker or cluster (or reuse the running one) and create every catalog topic."""
    from evostream.core.stack import LocalCluster, LocalStack
    from evostream.core.stack.cluster import NODE_HEAP, NODES

    if brokers not in (1, NODES):
        raise typer.BadParameter(f"--brokers is 1 (one node) or {NODES} (a cluster)")
    if brokers == 1:
        state = LocalStack(load_settings(broker_port=port, controller_port=controller_port, broker_heap=heap)).up(say)
        typer.echo(state.bootstrap)
        return
    settings = load_settings(broker_port=port, controller_port=controller_port)
    layout = LocalCluster(settings, NODES, heap or NODE_HEAP).up(say)
    typer.echo(layout.bootstrap)


@stack_app.command("status")
@friendly
def stack_status() -> None:
    """Say whether the local broker (or each node of the local cluster) runs, where, and which topics it has."""
    from evostream.core.stack import LocalCluster, LocalStack

    settings = load_settings()
    nodes = LocalCluster(settings).status()
    if any(n.state is not None for n in nodes):
        for n in nodes:
            where = f"pid {n.state.pid}, bootstrap {n.spec.bootstrap}" if n.state else f"down ({n.spec.bootstrap})"
            typer.echo(f"node {n.spec.node_id}: {where}")
        if any(n.state is None for n in nodes):
            raise typer.Exit(1)
        return
    st = LocalStack(settings).status()
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
    """Stop the local broker, or every node of the local cluster: controlled shutdown, then the processes are gone."""
    from evostream.core.stack import LocalCluster, LocalStack

    settings = load_settings()
    cluster = LocalCluster(settings)
    if cluster.running():
        cluster.down(timeout, say)
    else:
        LocalStack(settings).down(timeout, say)


@stack_app.command("kill-node")
@friendly
def stack_kill_node(node: Node) -> None:
    """Kill one node of the local cluster with SIGKILL (a crash: no controlled shutdown); the others serve on."""
    from evostream.core.stack import LocalCluster

    LocalCluster(load_settings()).kill_node(node, say)


@stack_app.command("start-node")
@friendly
def stack_start_node(
    node: Node,
    wait: Annotated[bool, typer.Option(help="Wait until every replica of the catalog's topics is in sync.")] = True,
) -> None:
    """Start one node of the local cluster that is down, on its own ports and data; it catches up and rejoins."""
    from evostream.core.stack import LocalCluster
    from evostream.schemas.catalog import CATALOG

    cluster = LocalCluster(load_settings())
    cluster.start_node(node, say)
    if wait:
        took = cluster.await_in_sync([s.name for s in CATALOG], cluster.settings.ready_timeout_s)
        say(f"every replica of the catalog's topics is in sync again ({took:.1f} s after the node answered)")


@stack_app.command("logs")
@friendly
def stack_logs(
    lines: Annotated[int, typer.Option("-n", help="How many lines.")] = 40,
    node: Annotated[int | None, typer.Option(help="A node of the local cluster.")] = None,
) -> None:
    """Print the tail of the local broker's logs (or of one node of the local cluster)."""
    from evostream.core.stack import LocalCluster, LocalStack

    settings = load_settings()
    typer.echo(LocalCluster(settings).log_tail(node, lines) if node else LocalStack(settings).log_tail(lines))


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
