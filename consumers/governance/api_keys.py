"""HTTP API tokens of governance actors: an actor's Ed25519 signature over a fixed statement naming it.

``<actor>.<signature hex>``: Ed25519 signatures are deterministic, so an actor's token is fixed by its key and is
checked against the public key enrolled in the governance log; nothing else is stored anywhere. Revoking the actor,
or its key, in the log revokes its token; a new key gives a new token.
"""

from __future__ import annotations

import hashlib
from typing import Any

from evostream.consumers.governance.keys import ActorKey, verify_signature
from evostream.core.errors import InvalidTokenError

_STATEMENT = "evostream http api token v1: "


def _statement_hash(actor: str) -> str:
    return hashlib.sha256((_STATEMENT + actor).encode()).hexdigest()


def token_for(key: ActorKey, actor: str) -> str:
    """The token ``actor`` presents (``Authorization: Bearer <token>``)."""
    return f"{actor}.{key.sign(_statement_hash(actor))}"


def check_format(token: str) -> None:
    """InvalidTokenError unless ``token`` looks like one (checked before anything is read to verify it)."""
    actor, _, signature = token.rpartition(".")
    if not actor or len(signature) != 128 or len(actor) > 200:
        raise InvalidTokenError("malformed token: expected <actor>.<128 hex digits> (evostream governance api-token)")


def actor_of(token: str, registry: Any) -> tuple[str, list[str]]:
    """The actor a token belongs to and its roles; InvalidTokenError for a malformed, forged or revoked token. The
    error never repeats the token."""
    check_format(token)
    actor, _, signature = token.rpartition(".")
    known = registry.actors.get(actor)
    if known is None or known["revoked_seq"] is not None:
        raise InvalidTokenError(f"actor {actor!r} is not enrolled in the governance log, or was revoked")
    digest = _statement_hash(actor)
    for key in known["keys"].values():
        if key["revoked_seq"] is None and verify_signature(key["public_key"], digest, signature):
            return actor, list(known["roles"])
    raise InvalidTokenError(f"the token does not match any current key of actor {actor!r}")
