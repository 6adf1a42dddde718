"""``evostream topics`` and ``evostream schemas ...``: the topic catalog and the Avro contract."""

from __future__ import annotations

from typing import Annotated

import typer

from evostream.cli.common import Bootstrap, friendly, say
from evostream.core.settings import load_settings

schemas_app = typer.Typer(help="The Avro contract.", no_args_is_help=True)


@friendly
def topics(
    create: Annotated[
        bool, typer.Option("--create", help="Create the catalog's missing topics on the broker.")
    ] = False,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="First, as the broker's super user of EVOSTREAM_KAFKA_CREDENTIALS, set every principal's SCRAM "
            "password and the ACLs (docker-compose.yml's broker; `stack up` does this itself).",
        ),
    ] = False,
    bootstrap: Bootstrap = None,
) -> None:
    """List the topic catalog; with --create, create its missing topics on the broker."""
    from evostream.schemas.catalog import CATALOG, GOVERNANCE

    if create:
        from evostream.core.bus.admin import ensure_topics, wait_for_broker
        from evostream.core.stack import resolve_bootstrap

        settings = load_settings(bootstrap_servers=bootstrap)
        server = resolve_bootstrap(settings)
        if secure:
            from evostream.core.bus.acls import secure as set_up
            from evostream.core.bus.security import SUPER_USER, CredentialsFile
            from evostream.core.errors import StackError

            if settings.kafka_credentials is None:
                raise StackError("--secure needs EVOSTREAM_KAFKA_CREDENTIALS: the file `stack credentials` wrote")
            creds = CredentialsFile.load(settings.kafka_credentials)
            wait_for_broker(server, settings.ready_timeout_s, login=creds.login(SUPER_USER))
            set_up(server, creds, {GOVERNANCE, settings.governance_topic}, settings.ready_timeout_s)
            say(f"principals and ACLs set on {server}")
        created = ensure_topics(server, CATALOG, timeout_s=settings.ready_timeout_s)
        say(f"created on {server}: {', '.join(sorted(created)) or 'nothing (all present)'}")
    for t in CATALOG:
        keep = "forever" if t.retention_ms < 0 else f"{t.retention_ms / 86_400_000:g} d"
        typer.echo(
            f"{t.name:18} key={t.key:14} value={t.value_schema:17} partitions={t.partitions} "
            f"{t.cleanup_policy:7} {keep:8} {t.doc}"
        )


@schemas_app.command("list")
@friendly
def schemas_list() -> None:
    """Every schema version with its fingerprint."""
    from evostream.schemas import default_index

    for sv in default_index():
        typer.echo(f"{sv.short_name:18} v{sv.version}  {sv.fingerprint.hex()}  {sv.source}")


@schemas_app.command("check")
@friendly
def schemas_check() -> None:
    """Check BACKWARD_TRANSITIVE compatibility of every schema version in the repository."""
    from evostream.schemas import default_index
    from evostream.schemas.compat import check_backward_transitive

    problems = check_backward_transitive(default_index())
    for p in problems:
        typer.secho(p, fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo("all schema versions read every earlier version")
