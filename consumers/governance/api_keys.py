"""HTTP API tokens of governance actors: an actor's Ed25519 signature over a statement naming it, its current key,
the governance log it is for and when it expires.

``<actor>.<log>.<exp>.<signature hex>``: ``log`` is the first 16 hex digits of the log's genesis hash (the whole hash
is signed), ``exp`` the expiry in seconds since the epoch. A token is checked against the registry replayed from the
log: it is refused once expired, on another log (another genesis: one admin key used for several logs does not make
a token of one valid on the other), or when the key that signed it is no longer the actor's current key (the key it
enrolled last): enrolling an actor again with a new key retires its old tokens, revoking the actor retires them all.
Nothing is stored anywhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from typing import Any

from evostream.consumers.governance.events import canonical_json
from evostream.consumers.governance.keys import ActorKey, verify_signature
from evostream.core.errors import GovernanceError, InvalidTokenError

_STATEMENT = "evostream http api token v2\n"
TOKEN_TTL_DAYS = 30
"""How long a token is valid unless its issuer says otherwise (``governance api-token --ttl-days``)."""
_LOG_PREFIX = 16


def _statement_hash(actor: str, key_id: str, log: str, exp: int) -> str:
    claims = {"actor": actor, "key_id": key_id, "log": log, "exp": exp}
    return hashlib.sha256((_STATEMENT + canonical_json(claims)).encode()).hexdigest()


def token_for(key: ActorKey, actor: str, log: str, *, ttl_s: float | None = None, now_s: float | None = None) -> str:
    """The token ``actor`` presents (``Authorization: Bearer <token>``) to an API following the log whose genesis
    hash is ``log``, valid for ``ttl_s`` seconds (default ``TOKEN_TTL_DAYS``) from ``now_s``."""
    if len(log) != 64:
        raise GovernanceError("a token names the log by its genesis hash: the log has no genesis event yet")
    ttl = TOKEN_TTL_DAYS * 86400 if ttl_s is None else ttl_s
    if ttl <= 0:
        raise GovernanceError(f"a token's lifetime must be positive, got {ttl} s")
    exp = int((time.time() if now_s is None else now_s) + ttl)
    signature = key.sign(_statement_hash(actor, key.key_id, log, exp))
    return f"{actor}.{log[:_LOG_PREFIX]}.{exp}.{signature}"


def _parts(token: str) -> tuple[str, str, str, str]:
    """(actor, log, exp, signature); empty strings when the token has too few parts."""
    parts = token.rsplit(".", 3)
    if len(parts) != 4:
        return "", "", "", ""
    return parts[0], parts[1], parts[2], parts[3]


def check_format(token: str) -> None:
    """InvalidTokenError unless ``token`` looks like one (checked before anything is read to verify it)."""
    actor, log, exp, signature = _parts(token)
    if not actor and "." in token and len(token.rpartition(".")[2]) == 128:
        raise InvalidTokenError(
            "this token has the old form (no log, no expiry), which is no longer accepted: make a new one with "
            "`evostream governance api-token`"
        )
    if (
        not actor
        or len(actor) > 200
        or len(log) != _LOG_PREFIX
        or not exp.isascii()
        or not exp.isdigit()
        or len(signature) != 128
    ):
        raise InvalidTokenError(
            "malformed token: expected <actor>.<log>.<expiry>.<128 hex digits> (evostream governance api-token)"
        )


def actor_of(token: str, registry: Any, now_s: float | None = None) -> tuple[str, list[str]]:
    """The actor a token belongs to and its roles; InvalidTokenError for a malformed, forged, expired, revoked or
    rotated token, or one for another log. The error never repeats the token."""
    check_format(token)
    actor, log, exp_text, signature = _parts(token)
    exp = int(exp_text)
    genesis = str(getattr(registry, "genesis_hash", ""))
    if not genesis.startswith(log):
        raise InvalidTokenError(
            f"the token is for another governance log (genesis {log}...), this API follows {genesis[:16] or 'an empty'}"
            "...: make a token for this log with `evostream governance api-token`"
        )
    if (time.time() if now_s is None else now_s) >= exp:
        when = dt.datetime.fromtimestamp(exp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        raise InvalidTokenError(f"the token expired at {when}: make a new one with `evostream governance api-token`")
    known = registry.actors.get(actor)
    if known is None or known["revoked_seq"] is not None:
        raise InvalidTokenError(f"actor {actor!r} is not enrolled in the governance log, or was revoked")
    live = {kid: k for kid, k in known["keys"].items() if k["revoked_seq"] is None}
    if not live:
        raise InvalidTokenError(f"actor {actor!r} has no unrevoked key")
    current = max(live, key=lambda kid: live[kid]["sequence"])
    if verify_signature(live[current]["public_key"], _statement_hash(actor, current, genesis, exp), signature):
        return actor, list(known["roles"])
    for kid, key in known["keys"].items():
        if kid != current and verify_signature(key["public_key"], _statement_hash(actor, kid, genesis, exp), signature):
            raise InvalidTokenError(
                f"the token was signed by key {kid}, which is no longer {actor!r}'s current key ({current}, enrolled "
                f"at sequence {live[current]['sequence']}): make a new token with the current key"
            )
    raise InvalidTokenError(f"the token does not match the current key of actor {actor!r}")
