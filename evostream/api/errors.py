"""The project's errors as HTTP answers: a status and ``{"error": <type>, "detail": <message>}``, never a traceback.

Messages are the errors' own (written for people, and never containing a key)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
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


class AnswerFailedError(EvoError):
    """The inference service could not answer: its model failed, or the route's reference did (502)."""


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
    (AnswerFailedError, 502),
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
    502: "The inference service failed the answer (its model, or the route's reference).",
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


OPENAI_PREFIX = "/v1/"
"""The OpenAI-compatible endpoints: their refusals have OpenAI's shape (``{"error": {"message", "type", "param",
"code"}}``), which OpenAI's client libraries read."""
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class OpenAIErrorBody(BaseModel):
    message: str = Field(description="What was wrong, for people.")
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error, server_error, ...")
    param: str | None = Field(description="The request field at fault, where one is.")
    code: str | None = Field(description="The error's own name (e.g. rate_limit_exceeded, insufficient_quota).")


class OpenAIRefusal(BaseModel):
    """A refusal of an OpenAI-compatible endpoint, in OpenAI's shape."""

    error: OpenAIErrorBody


def openai_refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of an OpenAI-compatible route that may answer with ``codes``."""
    return {code: {"model": OpenAIRefusal, "description": MEANING.get(code, "")} for code in codes}


def openai_error(
    status: int, message: str, code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _openai_code(e: Exception) -> str:
    limit = getattr(getattr(e, "refusal", None), "limit", None)
    if limit in ("tokens_per_day", "cost_per_day_usd"):
        return "insufficient_quota"
    if isinstance(e, TooManyRequestsError):
        return "rate_limit_exceeded"
    return type(e).__name__


def install(app: FastAPI) -> None:
    async def handle(request: Request, e: Exception) -> JSONResponse:
        status = status_of(e)
        headers = {"WWW-Authenticate": 'Bearer realm="evostream"'} if status == 401 else None
        if isinstance(e, TooManyRequestsError):
            headers = {"Retry-After": str(e.retry_after_s)}
        if request.url.path.startswith(OPENAI_PREFIX):
            return openai_error(status, str(e), _openai_code(e), headers=headers)
        return JSONResponse({"error": type(e).__name__, "detail": str(e)}, status_code=status, headers=headers)

    async def invalid(request: Request, e: Exception) -> Response:
        if not isinstance(e, RequestValidationError) or not request.url.path.startswith(OPENAI_PREFIX):
            return await request_validation_exception_handler(request, e)  # type: ignore[arg-type]
        first = e.errors()[0] if e.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = f"{'.'.join(loc) or 'the body'}: {first.get('msg', 'invalid')}"
        return openai_error(400, message, "invalid_value", ".".join(loc) or None)

    app.add_exception_handler(EvoError, handle)
    app.add_exception_handler(RequestValidationError, invalid)
