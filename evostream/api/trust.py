"""Where a request may come from: the Host names served, the origins whose pages may call, writes refused from other
sites' pages, and where the API may listen (TLS off loopback).

A same-host reverse proxy makes every client a loopback peer, and nginx's default ``Host`` (the upstream's name)
passes a loopback allow-list; bound to ``0.0.0.0`` any name reached the app (DNS rebinding). So: the Host header is
always checked against a list that holds the bound address (a wildcard bind needs the operator's names), no origin
may be ``*``, and a write that a browser marks as sent from another site's page (``Sec-Fetch-Site: cross-site``, or
an ``Origin`` that is neither this server nor an allowed one) is refused before any route runs. Whether a loopback
peer is trusted at all is ``auth.trusted_local``'s question (off unless ``--trust-loopback``)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from evostream.core.errors import EvoError

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
"""The Host names of a server bound to loopback."""
WILDCARD_BINDS = ("0.0.0.0", "::", "")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class TrustConfigError(EvoError):
    """A listening address, Host list or origin that would let other sites' pages or other machines in unchecked."""


def is_loopback_address(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) names this machine's loopback."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts_for(bind: str, named: Iterable[str] = ()) -> list[str]:
    """The Host names accepted by a server bound to ``bind``: loopback names on loopback, else the bound address;
    ``named`` are added. A wildcard bind (``0.0.0.0``, ``::``) has no name of its own: the operator must name them."""
    extra = [h.strip() for h in named if h.strip()]
    if "*" in extra:
        raise TrustConfigError("an allowed host of '*' accepts any name (DNS rebinding); name the hosts served")
    if is_loopback_address(bind):
        base = list(LOOPBACK_NAMES)
    elif bind in WILDCARD_BINDS:
        if not extra:
            raise TrustConfigError(
                f"bound to {bind or 'every interface'}, the API needs the names it is reached by: "
                "--allowed-host NAME (repeat), e.g. the machine's DNS name or address"
            )
        base = []
    else:
        base = [bind, f"[{bind}]"] if ":" in bind else [bind]
    return list(dict.fromkeys([*base, *extra]))


def check_origins(origins: Sequence[str]) -> list[str]:
    """``origins`` as CORS takes them (``scheme://host[:port]``); ``*`` and anything else refused."""
    out = []
    for origin in origins:
        o = origin.strip().rstrip("/")
        if o == "*" or "*" in o:
            raise TrustConfigError(
                "--cors-origin '*' would let every site's pages call this API with its users' keys; "
                "name each origin (e.g. https://dash.example.com)"
            )
        parts = urlsplit(o)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            raise TrustConfigError(f"a CORS origin is scheme://host[:port], got {origin!r}")
        out.append(o)
    return out


def check_binding(host: str, tls: bool, insecure: bool) -> None:
    """Refuse to listen off loopback in plain HTTP (keys and answers in clear) unless ``insecure`` says so."""
    if not is_loopback_address(host) and not tls and not insecure:
        raise TrustConfigError(
            f"listening on {host or 'every interface'} without TLS sends actor keys in clear: give --tls-cert and "
            "--tls-key, or --insecure if a TLS proxy on this machine terminates it"
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or []:
        if k == name:
            return bytes(v).decode("latin-1")
    return None


def cross_site_write(scope: Scope, allowed_origins: Sequence[str]) -> str | None:
    """Why a request is a write from another site's page, or None: a non-safe method that the browser marks
    ``Sec-Fetch-Site: cross-site``, or whose ``Origin`` is neither this server's nor an allowed one."""
    if scope.get("method", "GET") in SAFE_METHODS:
        return None
    origin = _header(scope, b"origin")
    if origin is not None and origin.rstrip("/") in allowed_origins:
        return None  # an origin the operator named: its pages may write (with a key)
    site = (_header(scope, b"sec-fetch-site") or "").strip().lower()
    if site == "cross-site":
        return "a write from another site's page (Sec-Fetch-Site: cross-site) is refused"
    if origin is not None and origin != "null":
        host = _header(scope, b"host") or ""
        if urlsplit(origin).netloc.lower() != host.lower():
            return f"a write from the page of {origin!r} is refused (not this server, not an allowed origin)"
    elif origin == "null":
        return "a write from an opaque origin (Origin: null) is refused"
    return None


class SameSiteWrites:
    """ASGI middleware: writes from other sites' pages are refused (403) before any route runs."""

    def __init__(self, app: ASGIApp, allowed_origins: Sequence[str]) -> None:
        self.app = app
        self.allowed_origins = list(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        why = cross_site_write(scope, self.allowed_origins) if scope["type"] == "http" else None
        if why is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "ForbiddenError", "detail": why}).encode()
        headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})
