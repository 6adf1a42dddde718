"""Who may call what. Reads need a key, unless opened to everyone (``open_reads``) or to this machine's clients
(``trust_loopback``, off by default: see ``trusted_local``). ``POST /infer`` needs a key, unless from a trusted
local client; ``open_reads`` does not open it (it publishes, and its traffic feeds drift and evolution). Writes
need an actor key: ``Authorization: Bearer <actor>.<log>.<expiry>.<signature>``, the token ``evostream governance
api-token`` prints, checked against the actor's current public key in the governance log, the log's genesis and the
clock (so revoking the actor there, or enrolling it with a new key, retires it here, and it expires); the action is
then signed with that actor's key from this machine's key folder, and the log's own rules decide whether the actor's
roles allow it. Admin endpoints need the admin role.

"This machine" is the TCP peer's address: the server does not read proxy headers (``evostream api`` starts uvicorn
with ``proxy_headers=False``), so a client cannot claim to be local; and a request that carries a proxy's forwarding
header is not trusted as local at all. A token is never logged and never repeated in an answer. Checking one replays
the log at most every ``ttl_s`` (and again after any governance event the API sees): the dependencies run on the
server's thread pool, never on its event loop."""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from evostream.api.errors import AuthRequiredError, ForbiddenError
from evostream.consumers.governance.api_keys import actor_of, check_format
from evostream.core.errors import ConsumeError, TamperError
from evostream.views.governance import GovernanceView


@dataclass(frozen=True)
class Caller:
    """Who reads or publishes: an actor, or an anonymous client of this machine."""

    actor: str | None
    """None for an anonymous local reader."""
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Actor:
    """Who writes: an enrolled actor whose key was checked (never anonymous)."""

    name: str
    roles: tuple[str, ...] = ()


def is_local(request: Request) -> bool:
    """Whether the TCP peer is this machine (loopback, IPv4-mapped loopback included)."""
    host = request.client.host if request.client else ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


FORWARDING = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip", "via")
"""Headers a proxy adds: a request carrying one came through a proxy, whatever its TCP peer."""


def trusted_local(request: Request, trust_loopback: bool) -> bool:
    """Whether a request counts as this machine's own client, trusted without a key: only with ``trust_loopback``
    (``--trust-loopback``; behind a proxy on this machine every client is a loopback peer), from a loopback peer,
    carrying no proxy's forwarding header."""
    if not trust_loopback or not is_local(request):
        return False
    return not any(name in request.headers for name in FORWARDING)


class RegistryCache:
    """The replayed registry, kept for ``ttl_s`` and dropped at once by ``invalidate`` (a governance event seen, a
    write made here)."""

    def __init__(self, governance: GovernanceView, ttl_s: float = 2.0) -> None:
        self.governance = governance
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._registry: Any = None
        self._at = 0.0
        self._exists = False
        """Whether the log's topic was seen: once it exists it is not asked again."""

    def get(self) -> Any:
        with self._lock:
            if self._registry is None or time.monotonic() - self._at > self.ttl_s:
                self._check_log()
                self._registry = anchored_registry(self.governance.replayed())
                self._at = time.monotonic()
            return self._registry

    def _check_log(self) -> None:
        """ConsumeError at once when the log's topic does not exist (no ``governance init`` yet): a reader of a
        missing topic waits out its whole timeout (30 s) for it, on every read, each behind the last."""
        if self._exists:
            return
        from evostream.core.bus.admin import cluster_metadata

        topic = self.governance.settings.governance_topic
        if topic not in cluster_metadata(self.governance.bootstrap, 5.0).topics:
            raise ConsumeError(
                f"there is no governance log yet: its topic {topic} does not exist (run `evostream governance init`)"
            )
        self._exists = True

    def invalidate(self) -> None:
        with self._lock:
            self._registry = None


def anchored_registry(replayed: Any) -> Any:
    """The registry keys are checked against; TamperError (409) when this machine's anchors (its head file, its
    signed checkpoints) say the log was cut short or replaced: a revoked actor or an old key could be back in it."""
    cut = [f for f in replayed.findings if f.kind == "truncated"]
    if cut:
        raise TamperError(f"no key is accepted: the governance log fails this machine's anchor check: {cut[0].detail}")
    return replayed.registry


class Auth:
    """The checks of the dependencies in ``deps``: each returns who called, or raises the error the caller sees."""

    def __init__(self, registry: RegistryCache, open_reads: bool = False, trust_loopback: bool = False) -> None:
        self.registry = registry
        self.open_reads = open_reads
        self.trust_loopback = trust_loopback

    def _token(self, request: Request) -> str | None:
        header = request.headers.get("authorization")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthRequiredError(
                "the Authorization header must be 'Bearer <actor key>' (evostream governance api-token)"
            )
        token = token.strip()
        check_format(token)  # before any read of the log: a malformed token costs nothing
        return token

    def _actor(self, token: str) -> Actor:
        name, roles = actor_of(token, self.registry.get())
        return Actor(name, tuple(roles))

    def _caller(self, token: str) -> Caller:
        actor = self._actor(token)
        return Caller(actor.name, actor.roles)

    def reader(self, request: Request) -> Caller:
        """Reads: this machine's clients (everyone with ``open_reads``), or a key."""
        token = self._token(request)
        if token is not None:
            return self._caller(token)
        if self.open_reads or trusted_local(request, self.trust_loopback):
            return Caller(None)
        raise AuthRequiredError(
            "reads need an actor key (or start the API with --open-reads, or --trust-loopback for this machine's "
            "clients when no proxy runs on it)"
        )

    def publisher(self, request: Request) -> Caller:
        """``POST /infer``: this machine's clients, or a key."""
        token = self._token(request)
        if token is not None:
            return self._caller(token)
        if trusted_local(request, self.trust_loopback):
            return Caller(None)
        raise AuthRequiredError(
            "publishing needs an actor key (or, for this machine's clients, an API started with --trust-loopback; "
            "--open-reads opens reads only)"
        )

    def writer(self, request: Request) -> Actor:
        """Writes: a key, always."""
        token = self._token(request)
        if token is None:
            raise AuthRequiredError(
                "this endpoint needs an actor key: Authorization: Bearer <token from "
                "`evostream governance api-token --actor NAME`>"
            )
        return self._actor(token)

    def admin(self, request: Request) -> Actor:
        """Admin endpoints: the key of an actor with the admin role."""
        actor = self.writer(request)
        if "admin" not in actor.roles:
            raise ForbiddenError(f"actor {actor.name!r} is not an admin (roles: {', '.join(actor.roles) or 'none'})")
        return actor
