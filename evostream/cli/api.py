"""``evostream api``: serve the HTTP API and the dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.bus.security import act_as
from evostream.core.settings import load_settings


@friendly
def api(
    host: Annotated[str, typer.Option(help="Address to listen on (another than loopback needs TLS).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    trust_loopback: Annotated[
        bool,
        typer.Option(
            "--trust-loopback",
            help="Let this machine's clients read and publish without a key (the dashboard, curl). Never with a "
            "reverse proxy on this machine: its clients all look local.",
        ),
    ] = False,
    open_reads: Annotated[bool, typer.Option("--open-reads", help="Let every client read without a key.")] = False,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="A Host name clients reach the API by (repeat); needed when bound to 0.0.0.0 or ::."),
    ] = None,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="An origin whose pages may call the API (repeat; never '*').")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM): serve HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM) of --tls-cert.")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow plain HTTP off loopback (a TLS proxy terminates it).")
    ] = False,
    max_body_kb: Annotated[int, typer.Option(min=1, help="Largest request body accepted (KiB).")] = 64,
    history: Annotated[float, typer.Option(min=0, help="Seconds of past records the live views start with.")] = 3600,
    bootstrap: Bootstrap = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve the HTTP API (OpenAPI at /docs) and the live dashboard (at /)."""
    act_as("api")
    import uvicorn

    from evostream.api.app import create_app
    from evostream.api.config import ApiConfig
    from evostream.api.server import server_config
    from evostream.api.trust import TrustConfigError, allowed_hosts_for, check_binding

    if (tls_cert is None) != (tls_key is None):
        raise TrustConfigError("--tls-cert and --tls-key come together")
    check_binding(host, tls_cert is not None, insecure)
    # every check of the flags comes before the broker is asked for anything
    hosts = allowed_hosts_for(host, allowed_host or [])
    settings = load_settings(bootstrap_servers=bootstrap)
    cfg = ApiConfig(
        "",
        settings,
        open_reads=open_reads,
        trust_loopback=trust_loopback,
        cors_origins=list(cors_origin or []),
        max_body_bytes=max_body_kb * 1024,
        history_s=history,
        allowed_hosts=hosts,
    )
    server = broker(settings)
    cfg.bootstrap = server
    scheme = "https" if tls_cert else "http"
    config = server_config(
        create_app(cfg), host, port, tls_cert=tls_cert, tls_key=tls_key, insecure=insecure, log_level=log_level.lower()
    )
    say(
        f"evostream api on {scheme}://{host}:{port}/ (dashboard), {scheme}://{host}:{port}/docs (OpenAPI); "
        f"broker {server}"
    )
    if trust_loopback:
        say(
            "this machine's clients are trusted without a key (--trust-loopback): put no proxy on this machine in front"
        )
    else:
        say(
            "every client needs an actor key (`evostream governance api-token`); "
            "--trust-loopback opens reads and /infer to this machine's clients"
        )
    uvicorn.Server(config).run()
