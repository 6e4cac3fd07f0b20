"""Admin authentication: a bearer token (the admin_token setting), compared in constant time.

No token configured: the admin API is disabled and answers 403 saying how to enable it.
Missing or wrong token: 401 with `WWW-Authenticate: Bearer`. The token is never logged or echoed.
"""

from __future__ import annotations

import hmac

from fastapi import Request
from pydantic import SecretStr

from app.errors import ApiError
from app.settings import env_name

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="sidecar-admin"'}


def check_admin(token: SecretStr | None, authorization: str | None) -> None:
    """Raise ApiError(403 or 401) unless `authorization` carries the configured token."""
    if token is None:
        raise ApiError(
            403,
            "admin_disabled",
            f"the admin API is disabled: set {env_name('admin_token')} to enable it",
        )
    if not authorization:
        raise ApiError(401, "unauthorized", "missing bearer token", _CHALLENGE)
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "unauthorized", "expected 'Authorization: Bearer <token>'", _CHALLENGE)
    # Compare bytes: compare_digest on str refuses non-ASCII, which would make a 500 out of a
    # client's odd header instead of a 401.
    expected = token.get_secret_value().encode("utf-8")
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected):
        raise ApiError(401, "unauthorized", "wrong bearer token", _CHALLENGE)


async def require_admin(request: Request) -> None:
    """FastAPI dependency for every /admin route: a second check after AdminRoute's, so an admin
    route added with another route class is still protected."""
    check_admin(request.app.state.settings.admin_token, request.headers.get("authorization"))
