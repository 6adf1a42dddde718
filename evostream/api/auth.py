"""Who may call what. Reads are open to clients on this machine (and to everyone with ``open_reads``); from elsewhere
they need a key. Writes need an actor key: ``Authorization: Bearer <actor>.<signature>``, the token
``evostream governance api-token`` prints, checked against the actor's public key in the governance log (so revoking
the actor there revokes it here); the action is then signed with that actor's key from this machine's key folder,
and the log's own rules decide whether the actor's roles allow it. Admin endpoints need the admin role.

A token is never logged and never repeated in an answer."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from fastapi import Request

from consumers.governance.tokens import actor_of
from evostream.api.errors import AuthRequiredError, ForbiddenError
from evostream.views.governance import GovernanceView


@dataclass(frozen=True)
class Caller:
    actor: str | None
    """None for an anonymous local reader."""
    roles: tuple[str, ...] = ()


def _local(request: Request) -> bool:
    host = request.client.host if request.client else ""
    if host in ("localhost", "testclient"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Auth:
    def __init__(self, governance: GovernanceView, open_reads: bool = False) -> None:
        self.governance = governance
        self.open_reads = open_reads

    def _token(self, request: Request) -> str | None:
        header = request.headers.get("authorization")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthRequiredError(
                "the Authorization header must be 'Bearer <actor key>' (evostream governance api-token)"
            )
        return token.strip()

    def _caller(self, token: str) -> Caller:
        actor, roles = actor_of(token, self.governance.replayed().registry)
        return Caller(actor, tuple(roles))

    async def reader(self, request: Request) -> Caller:
        token = self._token(request)
        if token is not None:
            return self._caller(token)
        if self.open_reads or _local(request):
            return Caller(None)
        raise AuthRequiredError("reads from another machine need an actor key (or start the API with --open-reads)")

    async def writer(self, request: Request) -> Caller:
        token = self._token(request)
        if token is None:
            raise AuthRequiredError("this endpoint needs an actor key: Authorization: Bearer <token from "
                                    "`evostream governance api-token --actor NAME`>")  # fmt: skip
        return self._caller(token)

    async def admin(self, request: Request) -> Caller:
        caller = await self.writer(request)
        if "admin" not in caller.roles:
            raise ForbiddenError(f"actor {caller.actor!r} is not an admin (roles: {', '.join(caller.roles) or 'none'})")
        return caller
