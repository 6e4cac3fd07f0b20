"""Pure ASGI middleware (no per-request task or thread): body size limit and request metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body
from app.settings import env_name

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BodySizeLimitMiddleware:
    """Refuse bodies over `max_bytes` with 413, counting the bytes actually received.

    A declared Content-Length over the limit is refused before reading anything; otherwise the
    body is read (chunked uploads included) and the request refused as soon as the count passes
    the limit. The body read here is replayed to the app, so it is read from the socket once.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1  # the server rejects a malformed length itself
                if declared > self.max_bytes:
                    await self._too_large(send)
                    return
                break
        chunks: list[bytes] = []
        total = 0
        disconnect: Message | None = None
        while True:
            message = await receive()
            if message["type"] != "http.request":
                disconnect = message
                break
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._too_large(send)
                return
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                if disconnect is not None:
                    return disconnect
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        content = error_body(
            "body_too_large",
            f"request body is larger than {self.max_bytes} bytes ({env_name('max_body_bytes')})",
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


class RequestMetricsMiddleware:
    """Counts every answer by route template and status; times the inference routes."""

    def __init__(
        self,
        app: ASGIApp,
        route_label: Callable[[str], str],
        observe: Callable[[str, int, float | None], None],
        timed_routes: frozenset[str],
    ) -> None:
        self.app = app
        self.route_label = route_label
        self.observe = observe
        self.timed_routes = timed_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the server answers if the app raises before starting a response

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = self.route_label(scope["path"])
            seconds = time.perf_counter() - start if route in self.timed_routes else None
            self.observe(route, status, seconds)
