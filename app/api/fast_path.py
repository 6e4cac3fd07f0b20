"""The hot inference routes without the framework around them.

A POST to an inference route with a JSON body that the route's model accepts is validated here
and handed to the route's endpoint, before FastAPI's and Starlette's middlewares, routing and
request handling (each a few layers of coroutines per request: most of the event loop's time per
request once the model is fast). The answer, its metrics and its errors are the same: errors go
through the app's own exception handlers, and everything else (another method or content type,
a body over the limit, malformed or refused JSON, any other route) goes to the full app
untouched, with the body read so far replayed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.routing import DirectBodyRoute, StrictJSONRequest, is_json, strict_loads

Observe = Callable[[str, int, float | None], None]


Direct = dict[str, tuple[Callable[..., Any], Callable[[Any], Any]]]


def direct_routes(routers: list[APIRouter]) -> Direct:
    """path -> (endpoint, body validator) of every POST DirectBodyRoute of `routers`."""
    table: Direct = {}
    for route in (r for router in routers for r in router.routes):
        if isinstance(route, DirectBodyRoute) and route.methods == {"POST"}:
            assert route.body_field is not None
            model = route.body_field.field_info.annotation
            table[route.path] = (route.endpoint, model.model_validate)  # type: ignore[union-attr]
    return table


class FastPath:
    def __init__(self, routes: Direct, max_bytes: int, observe: Observe) -> None:
        self.routes = routes
        self.max_bytes = max_bytes
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        """Serve a POST to one of `routes`; `app` (the full app) answers what is not for here."""
        entry = self.routes[scope["path"]]
        if not _json_within(scope, self.max_bytes):
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await app(scope, _replay(b"".join(chunks), True, receive, message), send)
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            chunks.append(chunk)
            if total > self.max_bytes:
                await app(scope, _replay(b"".join(chunks), True, receive, None), send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        endpoint, validate = entry
        try:
            parsed = validate(strict_loads(body))
        except Exception:  # malformed, not strict JSON or refused: the app answers as it does
            await app(scope, _replay(body, False, receive, None), send)
            return
        request = StrictJSONRequest(scope, receive)  # as the route itself would pass it
        try:
            response: Response = await endpoint(body=parsed, request=request)
        except Exception as exc:
            response = await _handled(scope["app"], request, exc)
        status = response.status_code
        try:
            await response(scope, receive, send)
        finally:
            self.observe(scope["path"], status, time.perf_counter() - start)


def _json_within(scope: Scope, max_bytes: int) -> bool:
    content_type = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value.decode("latin-1")
        elif name == b"content-length":
            try:
                if int(value) > max_bytes:
                    return False
            except ValueError:
                return False
    return is_json(content_type)


def _replay(body: bytes, more_body: bool, receive: Receive, then: Message | None) -> Receive:
    """A receive that first gives back what was already read (then `then`, if given)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": more_body}]
    if then is not None:
        pending.append(then)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _handled(app: FastAPI, request: Request, exc: Exception) -> Response:
    """The app's own exception handler for `exc` (the closest class first)."""
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            response = handler(request, exc)
            return response if isinstance(response, Response) else await response
    raise exc


class SidecarApp(FastAPI):
    """FastAPI with the inference routes' fast path in front (`fast_path`, set once the routes
    exist)."""

    fast_path: FastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast_path
        if (
            fast is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in fast.routes
        ):
            scope["app"] = self  # as Starlette sets it: request.app, exception handlers
            await fast(scope, receive, send, super().__call__)
            return
        await super().__call__(scope, receive, send)
