"""``evostream api``: serve the HTTP API and the dashboard."""

from __future__ import annotations

from typing import Annotated

import typer

from evostream.cli.common import Bootstrap, broker, friendly, say
from evostream.core.bus.security import act_as
from evostream.core.settings import load_settings


@friendly
def api(
    host: Annotated[str, typer.Option(help="Address to listen on (another than loopback exposes it).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    open_reads: Annotated[
        bool, typer.Option("--open-reads", help="Let clients on other machines read without a key.")
    ] = False,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="An origin whose pages may call the API (repeat; default: none).")
    ] = None,
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

    settings = load_settings(bootstrap_servers=bootstrap)
    server = broker(settings)
    # bound to loopback, only loopback names are accepted as Host: another site's page cannot reach this API
    # through DNS rebinding; bound elsewhere, any name (the operator's proxy and firewall decide)
    loopback = host in ("127.0.0.1", "localhost", "::1")
    hosts = ["127.0.0.1", "localhost", "::1", "[::1]"] if loopback else None
    app = create_app(
        ApiConfig(
            server,
            settings,
            open_reads=open_reads,
            cors_origins=list(cors_origin or []),
            max_body_bytes=max_body_kb * 1024,
            history_s=history,
            allowed_hosts=hosts,
        )
    )
    say(f"evostream api on http://{host}:{port}/ (dashboard), http://{host}:{port}/docs (OpenAPI); broker {server}")
    # proxy headers are not read: "this machine" is the TCP peer, which a client cannot claim to be; open event
    # streams are closed after 5 s on SIGTERM instead of holding the shutdown
    uvicorn.run(
        app, host=host, port=port, log_level=log_level.lower(), proxy_headers=False, timeout_graceful_shutdown=5
    )
