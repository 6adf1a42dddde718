"""How the API is served: uvicorn with limits a slow or greedy client cannot get around.

uvicorn (0.55, h11) has no timeout for reading a request's head: a client that sends its headers a byte at a time
(slowloris) held a connection for as long as it liked, and with no ``limit_concurrency`` there was no bound on how
many. Here every connection must finish each request line and headers within ``head_timeout_s`` of its first byte
(or of the connection opening), and then its body within ``body_timeout_s`` of its head (a body sent a byte at a
time held a connection as long as it liked too), or it is closed; at most ``limit_concurrency`` connections and
tasks are served at once (more get 503 at once); an idle keep-alive connection closes after ``keep_alive_s``; a
request head larger than ``max_head_bytes`` is refused (400). Proxy headers are never read: "this machine" is the
TCP peer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from evostream.api.trust import check_binding


@dataclass(frozen=True)
class ServeLimits:
    head_timeout_s: float = 10.0
    """A request's line and headers must arrive within this long."""
    body_timeout_s: float = 10.0
    """A request's body must arrive within this long after its head."""
    keep_alive_s: int = 5
    """An idle keep-alive connection is closed after this long."""
    limit_concurrency: int = 256
    """Connections (and running requests) at once; above it, 503. Above ``ApiConfig.max_streams``: event streams
    hold a connection each."""
    max_head_bytes: int = 16 * 1024
    """The largest request line and headers (h11's incomplete event size); larger is refused."""


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline on reading each request's head, and then one on reading its body."""

    head_timeout_s = ServeLimits.head_timeout_s
    body_timeout_s = ServeLimits.body_timeout_s
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.head_timeout_s)

    def data_received(self, data: bytes) -> None:
        before = self.conn.their_state
        if self._head_timer is None and before is h11.IDLE:
            self._arm(self.head_timeout_s)  # the first byte of a next request on a kept-alive connection
        super().data_received(data)
        now = self.conn.their_state
        if now is h11.SEND_BODY and before is not h11.SEND_BODY:
            self._arm(self.body_timeout_s)  # the head was read: now its body has a deadline
        elif now not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()  # the whole request was read: it runs

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, timeout_s: float) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _too_slow(self) -> None:
        self._head_timer = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()


def protocol_with(
    head_timeout_s: float, body_timeout_s: float = ServeLimits.body_timeout_s
) -> type[HeadTimeoutProtocol]:
    """``HeadTimeoutProtocol`` with its own deadlines (uvicorn builds one protocol object per connection)."""
    return type(
        "HeadTimeoutProtocol",
        (HeadTimeoutProtocol,),
        {"head_timeout_s": head_timeout_s, "body_timeout_s": body_timeout_s},
    )


def server_config(
    app: FastAPI,
    host: str,
    port: int,
    limits: ServeLimits | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    insecure: bool = False,
    log_level: str = "info",
) -> uvicorn.Config:
    """uvicorn's configuration for the API on ``host:port``: TrustConfigError if it would listen off loopback in
    plain HTTP without ``insecure``; open event streams are closed 5 s after SIGTERM instead of holding the stop."""
    check_binding(host, tls_cert is not None, insecure)
    limits = limits or ServeLimits()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=protocol_with(limits.head_timeout_s, limits.body_timeout_s),
        proxy_headers=False,
        limit_concurrency=limits.limit_concurrency,
        timeout_keep_alive=limits.keep_alive_s,
        h11_max_incomplete_event_size=limits.max_head_bytes,
        timeout_graceful_shutdown=5,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )
