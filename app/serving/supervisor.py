"""`python -m app serve` with several front ends: the supervisor process.

It reserves the port, starts the engine process and `workers` front-end processes, each
listening on that port with SO_REUSEPORT (the kernel spreads new connections evenly over the
front ends that listen; a front end that stops listening takes no more), and then:
- a front end that dies is replaced (its request counts stay: prometheus_client's multiprocess
  files of dead processes are still summed);
- if the engine process dies, the front ends answer 503 and /healthz fails (they see it at
  once), and the supervisor stops them and exits 1, so the container restarts;
- on SIGTERM/SIGINT the front ends drain first (not ready, optional delay, finish what they
  accepted), then the engine drains its queue, saves the hot-shape profile, and everything
  exits 0.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from app.settings import Settings

logger = logging.getLogger("app")

POLL_S = 0.05
# A front end that exits this soon after starting, this many times in a row, will not start.
QUICK_EXIT_S = 5.0
MAX_QUICK_EXITS = 5
ENGINE_STOP_GRACE_S = 60.0


class Supervisor:
    def __init__(self, settings: Settings, workers: int, passthrough: Sequence[str]) -> None:
        self.settings = settings
        self.workers = workers
        self.passthrough = list(passthrough)  # --config/--host/--port/--log-level as given
        self._signals: list[int] = []
        self._quick_exits = 0

    def run(self) -> int:
        runtime = Path(tempfile.mkdtemp(prefix="sidecar-"))
        try:
            return self._run(runtime)
        finally:
            shutil.rmtree(runtime, ignore_errors=True)

    def _run(self, runtime: Path) -> int:
        settings = self.settings
        try:
            # Held, not listening: the port is the front ends' (port 0: one the kernel picks).
            reserved = listening_socket(settings.host, settings.port)
        except OSError as exc:
            logger.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
            return 3
        port = reserved.getsockname()[1]
        address = f"ipc://{runtime / 'engine.sock'}"
        metrics_dir = runtime / "metrics"
        metrics_dir.mkdir()
        alive_r, alive_w = os.pipe()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        base_env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        engine = subprocess.Popen(
            [sys.executable, "-m", "app", "engine", "--address", address, *self.passthrough],
            env=base_env,
            pass_fds=(alive_w,),
        )
        os.close(alive_w)  # the engine holds the only write end: EOF means it has ended
        front_env = {**base_env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        front_cmd = [sys.executable, "-m", "app", "front-end", "--address", address]
        front_cmd += ["--alive-fd", str(alive_r), "--front-ends", str(self.workers)]
        front_cmd += self.passthrough
        front_cmd += ["--port", str(port)]  # the one reserved (the flag may have said 0: any)

        def start_front_end() -> subprocess.Popen[bytes]:
            return subprocess.Popen(front_cmd, env=front_env, pass_fds=(alive_r,))

        front_ends = {i: (start_front_end(), time.monotonic()) for i in range(self.workers)}
        logger.info(
            "serving on http://%s:%d: %d front ends (pids %s), engine pid %d",
            settings.host,
            port,
            self.workers,
            ", ".join(str(p.pid) for p, _ in front_ends.values()),
            engine.pid,
        )
        status = 0
        while not self._signals:
            code = engine.poll()
            if code is not None:
                status = code if code == 3 else 1
                logger.error("the engine process exited with %s; stopping the front ends", code)
                break
            for i, (proc, started) in list(front_ends.items()):
                code = proc.poll()
                if code is None:
                    continue
                if self._signals:  # a Ctrl-C reached it too: shutting down, not replacing
                    break
                quick = time.monotonic() - started < QUICK_EXIT_S
                self._quick_exits = self._quick_exits + 1 if quick else 0
                if code == 3 or self._quick_exits >= MAX_QUICK_EXITS:
                    logger.error("front end %d exited with %s at start; giving up", proc.pid, code)
                    status = 3 if code == 3 else 1
                    break
                logger.warning("front end %d exited with %s; starting another", proc.pid, code)
                # Its live-only gauge files go; counters and histograms stay (totals never
                # go backwards).
                mark_process_dead(proc.pid, str(metrics_dir))
                front_ends[i] = (start_front_end(), time.monotonic())
            else:
                time.sleep(POLL_S)
                continue
            break
        self._stop_front_ends([p for p, _ in front_ends.values()])
        reserved.close()
        os.close(alive_r)
        if engine.poll() is None:
            engine.send_signal(signal.SIGTERM)
            if not _wait(engine, settings.graceful_timeout_s + ENGINE_STOP_GRACE_S):
                logger.error("the engine did not stop in time; killing it")
                engine.kill()
                engine.wait()
                status = status or 1
            elif engine.returncode != 0:
                status = status or 1
        logger.info("stopped")
        return status

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)

    def _stop_front_ends(self, procs: list[subprocess.Popen[bytes]]) -> None:
        """SIGTERM each (a second signal to the supervisor is passed on: drain at once), then
        wait for their drain: the delay, the graceful timeout, and a margin."""
        forwarded = 0
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + (
            self.settings.drain_delay_s + self.settings.graceful_timeout_s + 10.0
        )
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if len(self._signals) > 1 + forwarded:
                forwarded = len(self._signals) - 1
                for proc in procs:
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
            time.sleep(POLL_S)
        for proc in procs:
            if proc.poll() is None:
                logger.error("front end %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT: several processes listen on one
    port and the kernel spreads connections over them. Listening only when `listen` is called:
    a socket that only holds the port takes no connections."""
    family, kind, proto, _, where = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(where)
    return sock


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True
