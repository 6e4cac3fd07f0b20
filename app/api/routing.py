"""Route classes: strict JSON parsing for request bodies, plumbed into FastAPI's own body
handling; a direct path for the hot inference routes; the admin token check.

Python's json module quietly takes the last of duplicate keys and accepts NaN and Infinity,
neither of which is JSON. StrictJSONRoute swaps in a Request whose `.json()` refuses
both; FastAPI turns the resulting JSONDecodeError into its usual 422 (json_invalid), which the
errors module renders in the envelope. Everything else about FastAPI's parsing is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from app.api.auth import check_admin


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def strict_loads(body: bytes) -> Any:
    """json.loads that refuses duplicate keys and NaN/Infinity, as JSONDecodeError."""
    text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
    try:
        return json.loads(
            text,
            object_pairs_hook=_pairs_without_duplicates,
            parse_constant=_reject_constant,
        )
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError):
            raise
        raise json.JSONDecodeError(str(exc), text, 0) from None
    except RecursionError:  # e.g. 100k nested arrays: a client error, not a parser crash
        raise json.JSONDecodeError("JSON nested too deeply", text, 0) from None


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = strict_loads(body)
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError(f"body is not UTF-8: {exc.reason}", "", 0) from None
        return self._json


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


def is_json(content_type: str | None) -> bool:
    """FastAPI's rule for parsing a body as JSON: application/json or application/*+json."""
    if not content_type:
        return False
    media = content_type.partition(";")[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


class DirectBodyRoute(StrictJSONRoute):
    """A route of a hot inference endpoint: `app.api.fast_path` calls its endpoint directly with
    a JSON body the route's model accepts, before the framework's layers; whatever the fast path
    passes on arrives here and is answered as on any StrictJSONRoute (422 in the error envelope).
    The OpenAPI schema is FastAPI's, unchanged. Endpoints on this route take exactly `body` (the
    model) and `request`, and return a Response: that is how the fast path calls them.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        # Called by APIRoute.__init__, once the endpoint's parameters are analysed.
        params = (
            [p.name for p in self.dependant.body_params],
            [d.name for d in self.dependant.dependencies],
            self.dependant.request_param_name,
        )
        model = None if self.body_field is None else self.body_field.field_info.annotation
        if (
            params != (["body"], [], "request")
            or self.dependant.query_params
            or not (isinstance(model, type) and issubclass(model, BaseModel))
        ):
            raise TypeError(
                f"{self.path}: a DirectBodyRoute endpoint takes exactly `body` (a pydantic model) "
                f"and `request`, got body {params[0]} ({model!r}), dependencies {params[1]}, "
                f"request {params[2]!r}"
            )
        return super().get_route_handler()


class AdminRoute(StrictJSONRoute):
    """Checks the admin token before FastAPI parses and validates the body, so a caller without
    the token gets 401/403 whatever it sends, and learns nothing from validation errors."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def admin_handler(request: Request) -> Response:
            check_admin(
                request.app.state.settings.admin_token, request.headers.get("authorization")
            )
            return await handler(request)

        return admin_handler


def bind_body(endpoint: Callable[..., Any], model: Any) -> Callable[..., Any]:
    """Give an endpoint's `body` parameter a model class built at run time.

    With postponed annotations FastAPI resolves annotations in the module's globals only; a
    request model built per app (with that app's limits) lives in a closure, so the class
    object is put in place of the string.
    """
    endpoint.__annotations__["body"] = model
    return endpoint
