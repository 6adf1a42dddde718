"""The project's errors as HTTP answers: a status and ``{"error": <type>, "detail": <message>}``, never a traceback.

Messages are the errors' own (written for people, and never containing a key)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from evostream.core.errors import (
    ConflictError,
    ConsumeError,
    DeliveryError,
    EvoError,
    GovernanceError,
    InvalidTokenError,
    NotFoundError,
    PolicyViolationError,
    StackError,
    TamperError,
    UnauthorizedError,
)
from evostream.stream_processors.risk.outcomes import OutcomeError


class AuthRequiredError(EvoError):
    """The endpoint needs an actor key and none came."""


class ForbiddenError(EvoError):
    """The actor is known but may not do this here (its role, or its key is not on this server)."""


class TimeoutAnswerError(EvoError):
    """The service did not answer within the request's timeout."""


class TooLargeError(EvoError):
    """The request body is over the size limit."""


class BusyError(EvoError):
    """The server is at a limit it keeps (event streams open); try again later."""


class TooManyRequestsError(EvoError):
    """This client is over its quota; ``retry_after_s`` says when a retry may succeed."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, retry_after_s)


STATUS: list[tuple[type[Exception], int]] = [
    (AuthRequiredError, 401),
    (InvalidTokenError, 401),
    (UnauthorizedError, 403),  # the log's rules: the actor's roles do not allow the event
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (OutcomeError, 422),  # a label outside the set, where the body's own checks could not tell
    (TooLargeError, 413),
    (PolicyViolationError, 409),
    (ConflictError, 409),
    (TamperError, 409),
    (GovernanceError, 400),
    (TimeoutAnswerError, 504),
    (TooManyRequestsError, 429),
    (BusyError, 503),
    (ConsumeError, 503),
    (DeliveryError, 503),
    (StackError, 503),
]


class Refusal(BaseModel):
    """Every refusal's answer (413 from the body limit included)."""

    error: str = Field(description="The error's type, e.g. NotFoundError.")
    detail: str = Field(description="What was wrong, for people.")


MEANING = {
    400: "The request names something wrongly (a time, a recipe, a version the log does not know).",
    401: "No actor key where one is needed, or a key the governance log does not accept.",
    403: "The actor's roles do not allow it, or its private key is not on this server.",
    404: "No such thing among what this API keeps.",
    409: "The governance log's rules refuse it, or a cycle is running already.",
    429: "This client is over its quota; `Retry-After` says in how many seconds to retry.",
    503: "A limit this server keeps, or the broker is away; try again later.",
    504: "The service did not answer in time.",
}


def refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that may answer with ``codes``."""
    return {code: {"model": Refusal, "description": MEANING[code]} for code in codes}


def status_of(e: Exception) -> int:
    for kind, status in STATUS:
        if isinstance(e, kind):
            return status
    return 400 if isinstance(e, EvoError) else 500


def install(app: FastAPI) -> None:
    async def handle(request: Request, e: Exception) -> JSONResponse:
        status = status_of(e)
        headers = {"WWW-Authenticate": 'Bearer realm="evostream"'} if status == 401 else None
        if isinstance(e, TooManyRequestsError):
            headers = {"Retry-After": str(e.retry_after_s)}
        return JSONResponse({"error": type(e).__name__, "detail": str(e)}, status_code=status, headers=headers)

    app.add_exception_handler(EvoError, handle)
