"""The fast path (a SidecarApp calling DirectBodyRoute endpoints itself) answers every body
exactly as FastAPI's own handler (StrictJSONRoute) does: the same endpoint on both route
classes, side by side, over a table of well- and ill-formed requests."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import get_engine
from app.api.fast_path import FastPath, SidecarApp, direct_routes
from app.api.routing import DirectBodyRoute, StrictJSONRoute, bind_body
from app.errors import ApiError, install_error_handlers


class Echo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[str] = Field(min_length=1, max_length=3)
    scale: float = 1.0


async def echo(body: Any, request: Request) -> Response:
    if body.inputs == ["refuse"]:
        raise ApiError(400, "refused", "the endpoint refuses this one")
    return JSONResponse(
        {"inputs": body.inputs, "scale": body.scale, "request": type(request).__name__}
    )


def make_client() -> TestClient:
    app = SidecarApp()
    install_error_handlers(app)
    routers = []
    for prefix, route_class in (("/direct", DirectBodyRoute), ("/standard", StrictJSONRoute)):
        router = APIRouter(route_class=route_class)
        router.add_api_route(
            f"{prefix}/echo", bind_body(echo, Echo), methods=["POST"], response_model=None
        )
        app.include_router(router)
        routers.append(router)
    app.fast_path = FastPath(direct_routes(routers), 1 << 30, lambda *_: None)
    assert set(app.fast_path.routes) == {"/direct/echo"}
    return TestClient(app, raise_server_exceptions=False)


JSON = {"content-type": "application/json"}
CASES: list[tuple[str, bytes, dict[str, str]]] = [
    ("valid", b'{"inputs": ["a", "b"]}', JSON),
    (
        "valid with charset",
        b'{"inputs": ["a"], "scale": 2}',
        {"content-type": "application/json; charset=utf-8"},
    ),
    ("vendor json", b'{"inputs": ["a"]}', {"content-type": "application/vnd.api+json"}),
    ("unknown field", b'{"inputs": ["a"], "extra": 1}', JSON),
    ("too many inputs", b'{"inputs": ["a", "b", "c", "d"]}', JSON),
    ("wrong type", b'{"inputs": "a"}', JSON),
    ("duplicate key", b'{"inputs": ["a"], "inputs": ["b"]}', JSON),
    ("NaN", b'{"inputs": ["a"], "scale": NaN}', JSON),
    ("malformed", b'{"inputs": [', JSON),
    ("not utf-8", b'{"inputs": ["\xff"]}', JSON),
    ("empty body", b"", JSON),
    ("null", b"null", JSON),
    ("array", b"[1, 2]", JSON),
    ("deeply nested", b"[" * 100_000 + b"]" * 100_000, JSON),
    ("text content type", b'{"inputs": ["a"]}', {"content-type": "text/plain"}),
    ("no content type", b'{"inputs": ["a"]}', {}),
    ("endpoint error", b'{"inputs": ["refuse"]}', JSON),
]


@pytest.mark.parametrize(("name", "body", "headers"), CASES, ids=[c[0] for c in CASES])
def test_direct_route_answers_as_fastapi_does(
    name: str, body: bytes, headers: dict[str, str]
) -> None:
    with make_client() as client:
        direct = client.post("/direct/echo", content=body, headers=headers)
        standard = client.post("/standard/echo", content=body, headers=headers)
    assert (direct.status_code, direct.json()) == (standard.status_code, standard.json())
    if name.startswith("valid") or name == "vendor json":
        assert direct.status_code == 200 and direct.json()["request"] == "StrictJSONRequest"
    else:
        assert direct.status_code in (400, 422), direct.text


def test_direct_route_refuses_endpoints_it_cannot_call() -> None:
    async def with_dependency(
        body: Any, request: Request, engine: Annotated[Any, Depends(get_engine)]
    ) -> Response:
        return Response()

    router = APIRouter(route_class=DirectBodyRoute)
    with pytest.raises(TypeError, match="exactly `body`"):
        router.add_api_route(
            "/x", bind_body(with_dependency, Echo), methods=["POST"], response_model=None
        )

    async def no_body(request: Request) -> Response:
        return Response()

    with pytest.raises(TypeError, match="exactly `body`"):
        router.add_api_route("/y", no_body, methods=["POST"], response_model=None)
