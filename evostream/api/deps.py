"""The routes' dependencies: the app's state, and who calls (checked by ``auth.Auth``).

They are plain functions: FastAPI runs them on its thread pool, so checking a key (a replay of the log, at most every
few seconds) never holds the event loop. The bearer scheme is declared here so the OpenAPI document shows it."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from evostream.api.auth import Actor, Caller
from evostream.api.quota import client_key
from evostream.api.state import ApiState

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
