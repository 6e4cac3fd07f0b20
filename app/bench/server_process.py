"""A server under test as a real process: started in its own session with its output in a log
file, polled until /readyz answers, stopped with SIGTERM (so it drains the way it would in
production), SIGKILL if it will not go.

`ServerProcess` runs any command whose readiness URL is known (the service benchmark's servers);
`app.bench.soak.SidecarProcess` builds on it for `python -m app serve` on an OS-chosen port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """`command` with exactly `env` as its environment, run from the repository root; ready once
    `ready_url` answers 200."""

    name = "server"  # in error messages

    def __init__(
        self, command: list[str], env: Mapping[str, str], log_path: Path, ready_url: str = ""
    ) -> None:
        self.command = command
        self.log_path = log_path
        self._ready_url = ready_url
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches it only through us
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        # The child writes the file through its own descriptor: nothing to flush on this side.
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def ready_url(self) -> str | None:
        """Where readiness is polled; None while not known yet."""
        return self._ready_url or None

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Seconds until `ready_url()` answers 200; raises with the log tail if the process
        exits or stays unready past `timeout_s`."""
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before ready:\n{self.tail()}"
                )
            url = self.ready_url()
            if url is not None:
                try:
                    if httpx.get(url, timeout=2.0).status_code == 200:
                        return time.monotonic() - t0
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.tail()}")

    def terminate(self) -> None:
        """SIGTERM to the server only (not its process group): what an orchestrator sends."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait, SIGKILL (its whole session) if it will not go; the exit code
        (negative: killed by that signal)."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
