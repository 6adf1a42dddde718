"""The routes' dependencies: the app's state, and who calls (checked by ``auth.Auth``).

They are plain functions: FastAPI runs them on its thread pool, so checking a key (a replay of the log, at most every
few seconds) never holds the event loop. The bearer scheme is declared here so the OpenAPI document shows it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from evostream.api.auth import Actor, Caller, trusted_local
from evostream.api.errors import AuthRequiredError
from evostream.api.quota import client_key
from evostream.api.state import ApiState
from evostream.consumers.governance.api_keys import check_format
from evostream.core.errors import InvalidTokenError

_bearer = HTTPBearer(auto_error=False, description="An actor key: `evostream governance api-token --actor NAME`.")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _state(request: Request) -> ApiState:
    return cast(ApiState, request.app.state.api)


State = Annotated[ApiState, Depends(_state)]
"""The app's parts (``state.ApiState``)."""


def _reader(request: Request, state: State) -> Caller:
    return state.auth.reader(request)


def _publisher(request: Request, state: State, _: Bearer) -> Caller:
    return state.auth.publisher(request)


def _actor(request: Request, state: State, _: Bearer) -> Actor:
    return state.auth.writer(request)


def _admin(request: Request, state: State, _: Bearer) -> Actor:
    return state.auth.admin(request)


Reader = Annotated[Caller, Depends(_reader)]
"""Reads: a key, or anyone with ``--open-reads``, or this machine's clients with ``--trust-loopback``."""


def _governance_reader(request: Request, state: State, caller: Reader) -> Caller:
    state.governance_quota.take(client_key(request, caller.actor))
    return caller


GovernanceReader = Annotated[Caller, Depends(_governance_reader)]
"""Reads of the governance log: a ``Reader``, within its client's quota of them (429 over it)."""
Publisher = Annotated[Caller, Depends(_publisher)]
"""``POST /infer``: a key, or this machine's clients with ``--trust-loopback``."""
CurrentActor = Annotated[Actor, Depends(_actor)]
"""Writes: the actor whose key came (401 without one)."""
AdminActor = Annotated[Actor, Depends(_admin)]
"""Admin endpoints: an actor with the admin role (403 otherwise)."""


def _openai_publisher(request: Request, state: State, _: Bearer) -> Caller:
    """A ``Publisher``; and, from a trusted local client, a bearer that is no actor key at all is taken for none:
    OpenAI's clients always send one (``api_key`` cannot be empty), so a local client without a key sends a
    placeholder. A well-formed key that fails its check is refused as everywhere."""
    return _placeholder_allowed(request, state, state.auth.publisher, trusted_local(request, state.auth.trust_loopback))


def _openai_reader(request: Request, state: State, _: Bearer) -> Caller:
    """A ``Reader``, where a client let in without a key may send a placeholder one (as ``_openai_publisher``)."""
    keyless = state.auth.open_reads or trusted_local(request, state.auth.trust_loopback)
    return _placeholder_allowed(request, state, state.auth.reader, keyless)


def _placeholder_allowed(request: Request, state: State, check: Callable[[Request], Caller], keyless: bool) -> Caller:
    try:
        return check(request)
    except (InvalidTokenError, AuthRequiredError):
        if keyless and not _is_key(request):
            return Caller(None)
        raise


def _is_key(request: Request) -> bool:
    _scheme, _, token = request.headers.get("authorization", "").partition(" ")
    try:
        check_format(token.strip())
    except InvalidTokenError:
        return False
    return True


OpenAIReader = Annotated[Caller, Depends(_openai_reader)]
"""``GET /v1/models``: a ``Reader``, where a client let in without a key may send a placeholder one."""
OpenAIPublisher = Annotated[Caller, Depends(_openai_publisher)]
"""The OpenAI-compatible endpoints: a ``Publisher`` (``Authorization: Bearer <actor key>``, which is how OpenAI's
clients send their ``api_key``), where a trusted local client may send a placeholder key."""
