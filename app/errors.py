"""Every error a client can see: one envelope, one place.

The body is always `{"error": {"code": "<stable_snake_case>", "message": "<for humans>"}}`.
`code` is stable (clients may branch on it); `message` may change wording.
Handlers here turn request-validation errors (422), HTTP exceptions (404, 405, ...), the
batcher's refusals (503 with Retry-After), model failures (500) and anything unexpected
(500, never a bare one) into that envelope.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.engine.batcher import BatcherError, BatchFailed, RequestTimedOut
from app.settings import env_name

logger = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    message: str


class ErrorEnvelope(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


class ApiError(Exception):
    """Raise from a route or dependency to answer with the envelope."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        content=error_body(code, message),
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )


# What each status means in the OpenAPI schema; routes declare the ones they can return.
_DESCRIPTIONS: dict[int, str] = {
    400: "Bad request (e.g. unsupported `dimensions`)",
    401: "Missing or wrong admin bearer token",
    403: f"Admin API disabled (set {env_name('admin_token')} to enable it)",
    404: "Not found",
    413: f"Request body larger than {env_name('max_body_bytes')}",
    422: "Invalid request (types, limits, unknown fields, malformed JSON)",
    500: "Inference failed for the batch holding this request",
    503: "Not ready, shutting down, queue full or request timed out; see Retry-After",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status documented with the error envelope schema."""
    return {
        status: {"model": ErrorEnvelope, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }


_HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}


def describe_validation_errors(errors: Iterable[Any], limit: int = 5) -> str:
    """`body.inputs.3: String should have at most 8192 characters; ...` (first few errors)."""
    parts: list[str] = []
    errors = list(errors)
    for err in errors[:limit]:
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
        where = ".".join(loc) or "body"
        msg = str(err.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            msg = f"invalid JSON: {ctx.get('error', msg)}"
            where = "body"
        parts.append(f"{where}: {msg}")
    if len(errors) > limit:
        parts.append(f"... and {len(errors) - limit} more")
    return "; ".join(parts) or "invalid request"


def retry_after_header(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


def install_error_handlers(app: FastAPI, retry_after_s: int = 1) -> None:
    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, "invalid_request", describe_validation_errors(exc.errors()))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, exc.headers)

    async def on_batcher(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BatcherError)
        if isinstance(exc, BatchFailed):
            return error_response(500, "inference_failed", str(exc))
        code = "timeout" if isinstance(exc, RequestTimedOut) else exc.reason
        return error_response(503, code, str(exc), retry_after_header(retry_after_s))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Last resort: Starlette's ServerErrorMiddleware calls this, then re-raises for the log.
        logger.error("unhandled %s on %s", type(exc).__name__, request.url.path)
        return error_response(500, "internal_error", "internal server error")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(BatcherError, on_batcher)
    app.add_exception_handler(Exception, on_unexpected)
