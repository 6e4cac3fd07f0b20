"""Real processes for end-to-end tests: a Prometheus server and the sidecar, on loopback ports.

Every wait is bounded and every failure message carries the process logs; `stop()` always
terminates (then kills) the process, so a fixture finalizer leaves nothing running.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from server_process import ServerProcess

T = TypeVar("T")


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(
    url: str, *, timeout: float = 5.0, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """(status, body) of a GET; HTTP error statuses are returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


class ManagedProcess(ServerProcess):
    """A child process run from the repository root, its stdout and stderr in a log file, stopped
    with SIGTERM then SIGKILL (`ServerProcess`), reported and checked the pytest way."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        super().__init__(args, env, log_path)
        self.name = name

    def logs(self, tail: int = 8000) -> str:
        return self.log_text()[-tail:]

    def report(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return f"--- {self.name} ({state}): {' '.join(self.command)}\n{self.logs()}"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"{self.name} exited early\n{self.report()}", pytrace=False)

    def stop(self, timeout_s: float = 20.0) -> int:
        return super().stop(timeout_s)


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str | Callable[[], str],
    processes: list[ManagedProcess],
    interval: float = 0.25,
) -> T:
    """Poll `probe` until it returns something other than None; fail with the logs on timeout.

    A process in `processes` that exits while waiting fails at once (no point waiting on).
    `what` may be a callable, to describe the state seen last when the wait times out.
    """
    deadline = time.monotonic() + timeout
    last_error: object = None
    while time.monotonic() < deadline:
        for process in processes:
            process.check_alive()
        try:
            value = probe()
        except (OSError, ValueError, KeyError) as exc:  # not up yet, or a partial answer
            last_error = exc
            value = None
        if value is not None:
            return value
        time.sleep(interval)
    description = what() if callable(what) else what
    reports = "\n".join(p.report() for p in processes)
    pytest.fail(
        f"timed out after {timeout:.0f}s waiting for {description} "
        f"(last error: {last_error!r})\n{reports}",
        pytrace=False,
    )


class PrometheusServer:
    """A real `prometheus` on 127.0.0.1:<free port>, with its own config and TSDB directory."""

    def __init__(self, binary: str, config: dict[str, Any], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        args = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=info",
        ]
        self.process = ManagedProcess(
            "prometheus", args, workdir / "prometheus.log", dict(os.environ)
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_for(
            lambda: True if http_get(f"{self.url}/-/ready")[0] == 200 else None,
            timeout=timeout,
            what=f"Prometheus {self.url}/-/ready",
            processes=[self.process],
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query through the HTTP API; the `result` list (vector samples)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, body = http_get(url)
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise AssertionError(f"query {expr!r} answered {status}: {body}")
        result = payload["data"]["result"]
        assert isinstance(result, list)
        return result

    def stop(self) -> None:
        self.process.stop()
