"""The project's errors as HTTP answers: a status and ``{"error": <type>, "detail": <message>}``, never a traceback.

Messages are the errors' own (written for people, and never containing a key)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

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


STATUS: list[tuple[type[Exception], int]] = [
    (AuthRequiredError, 401),
    (InvalidTokenError, 401),
    (UnauthorizedError, 403),  # the log's rules: the actor's roles do not allow the event
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (TooLargeError, 413),
    (PolicyViolationError, 409),
    (ConflictError, 409),
    (TamperError, 409),
    (GovernanceError, 400),
    (TimeoutAnswerError, 504),
    (BusyError, 503),
    (ConsumeError, 503),
    (DeliveryError, 503),
    (StackError, 503),
]


def status_of(e: Exception) -> int:
    for kind, status in STATUS:
        if isinstance(e, kind):
            return status
    return 400 if isinstance(e, EvoError) else 500


def install(app: FastAPI) -> None:
    async def handle(request: Request, e: Exception) -> JSONResponse:
        status = status_of(e)
        headers = {"WWW-Authenticate": 'Bearer realm="evostream"'} if status == 401 else None
        return JSONResponse({"error": type(e).__name__, "detail": str(e)}, status_code=status, headers=headers)

    app.add_exception_handler(EvoError, handle)
