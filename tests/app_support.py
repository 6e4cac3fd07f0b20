"""Helpers the in-process app tests share (no tests here): waiting for readiness, the admin
routes. Free of the web stack itself, so the GPU check can import it anywhere."""

from __future__ import annotations

import time
from typing import Any, Protocol


class _Getter(Protocol):
    def get(self, url: str) -> Any: ...


# Every admin route, for tests that must cover all of them.
ADMIN_CALLS = [
    ("POST", "/admin/prewarm"),
    ("GET", "/admin/graphs"),
    ("DELETE", "/admin/graphs"),
    ("GET", "/admin/hot-shapes"),
    ("GET", "/admin/stats"),
]


def wait_ready(client: _Getter, timeout_s: float = 60.0) -> None:
    """Poll GET /readyz (any synchronous client) until 200, failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the app never became ready"
        time.sleep(0.02)


def wait_captured(client: _Getter, headers: dict[str, str], timeout_s: float = 30.0) -> None:
    """Poll GET /admin/stats until no deferred capture is waiting for an idle gap."""
    deadline = time.monotonic() + timeout_s
    while client.get("/admin/stats", headers=headers).json()["pending_captures"]:
        assert time.monotonic() < deadline, "deferred captures never ran"
        time.sleep(0.01)
