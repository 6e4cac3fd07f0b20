"""A server under test as a real process: started in its own session with its output in a log
file, polled until /readyz answers, stopped with SIGTERM (so it drains the way it would in
production), SIGKILL if it will not go.

`ServerProcess` runs any command whose readiness URL is known (the service benchmark's servers);
`SidecarProcess` builds on it for `python -m app serve` on an OS-chosen port.

Test support shared by the end-to-end tests and the benchmarks (bench/ imports it from here, as
`tests.server_process`); product code (app/, models/) never imports it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


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

    def children(self) -> dict[str, list[int]]:
        """With several front ends: {"engine": [pid], "front-end": [pids]} (else empty)."""
        roles: dict[str, list[int]] = {}
        for pid in child_pids(self.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for role in ("engine", "front-end"):
                if role.encode() in argv:
                    roles.setdefault(role, []).append(pid)
        return roles

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


_LISTENING = re.compile(rb"(?:Uvicorn running|serving) on http://[^:\s]+:(\d+)")


def read_rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/<pid>/status), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                value, unit = line.split()[1:3]
                if unit != "kB":
                    raise ValueError(f"unexpected VmRSS unit {unit!r}")
                return int(value) * 1024
    raise ValueError(f"no VmRSS for pid {pid} (a zombie?)")


class SidecarProcess(ServerProcess):
    """`python -m app serve` on 127.0.0.1 with an OS-chosen port, output to a log file.

    `env` holds SIDECAR_* settings on top of this process's environment (whose own SIDECAR_*
    variables are dropped, except SIDECAR_WORKERS: `SIDECAR_WORKERS=2 pytest` runs every server
    process test with two front ends and an engine process); `args` are more command-line
    arguments (e.g. `--config FILE`). The log level must stay info or debug: the port is read
    from uvicorn's "Uvicorn running on" line.
    """

    name = "sidecar"

    def __init__(self, env: Mapping[str, str], log_path: Path, args: Sequence[str] = ()) -> None:
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SIDECAR_") or k == "SIDECAR_WORKERS"
        }
        full_env.setdefault("SIDECAR_LOG_LEVEL", "info")
        full_env.update(env)
        full_env["PYTHONUNBUFFERED"] = "1"
        if full_env["SIDECAR_LOG_LEVEL"].lower() not in ("info", "debug"):
            raise ValueError("SIDECAR_LOG_LEVEL must be info or debug (the port is read from it)")
        command = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", "0"]
        super().__init__([*command, *args], full_env, log_path)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready_url(self) -> str | None:
        if not self.port:
            found = _LISTENING.search(self.log_path.read_bytes())
            if found is None:
                return None
            self.port = int(found.group(1))
        return self.url + "/readyz"

    def rss_bytes(self) -> int:
        """Resident memory of the server: its processes together (front ends and engine)."""
        return sum(read_rss_bytes(pid) for pid in [self.pid, *child_pids(self.pid)])


def child_pids(pid: int) -> list[int]:
    """The live children of `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out
