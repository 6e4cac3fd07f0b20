"""Several front ends around one engine process (`SIDECAR_WORKERS=2`), as real processes: one
graph cache and one set of metrics whatever front end answers, a dead front end replaced, a dead
engine answered with 503 and the server exiting non-zero, SIGTERM draining everything."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.deploy_support import prometheus_tool
from tests.server_process import SidecarProcess

pytestmark = pytest.mark.slow

TOKEN = "workers-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {
    "SIDECAR_MODEL": "toy",
    "SIDECAR_DEVICE": "cpu",
    "SIDECAR_WORKERS": "2",
    "SIDECAR_ADMIN_TOKEN": TOKEN,
    "SIDECAR_NUM_THREADS": "1",
}


def _sample(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert found is not None, f"{name} not in the scrape"
    return float(found.group(1))


def _post_many(url: str, n: int, clients: int = 8) -> list[int]:
    """`n` one-text /infer requests, each on a new connection, from `clients` threads; their
    statuses (-1: the connection was refused or reset before the server read the request)."""

    def one(i: int) -> int:
        try:
            with httpx.Client(base_url=url, timeout=30.0) as client:
                return client.post("/infer", json={"inputs": [f"text number {i}"]}).status_code
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            return -1

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(n)))


def _wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_front_ends_share_one_engine_one_cache_and_one_set_of_metrics(tmp_path: Path) -> None:
    env = {**ENV, "SIDECAR_MAX_BACH_SIZE": "8"}  # a typo, warned about once for the service
    with SidecarProcess(env, tmp_path / "server.log") as server:
        server.wait_ready()
        assert server.log_text().count("ignoring SIDECAR_MAX_BACH_SIZE") == 1
        roles = server.children()
        assert len(roles["engine"]) == 1 and len(roles["front-end"]) == 2, roles
        statuses = _post_many(server.url, 60)
        assert statuses == [200] * 60
        # The same text gives the same vector whichever front end tokenized it.
        answers = {
            tuple(
                httpx.post(server.url + "/infer", json={"inputs": ["same"]}).json()["embeddings"][0]
            )
            for _ in range(6)
        }
        assert len(answers) == 1
        # TEI's /info counts the processes that tokenize: the front ends.
        assert httpx.get(server.url + "/info").json()["tokenization_workers"] == 2
        # One engine: its counters hold every text, asked through any front end.
        for _ in range(4):
            stats = httpx.get(server.url + "/admin/stats", headers=AUTH).json()
            assert stats["texts"] == 66
        # One set of metrics: every scrape (any front end) sums the front ends' request counts
        # and shows the engine's families once.
        for _ in range(4):
            text = httpx.get(server.url + "/metrics").text
            assert _sample(text, 'sidecar_requests_total{route="/infer",status="200"}') == 66
            assert _sample(text, "sidecar_batch_size_sum") == 66
            assert text.count("# TYPE sidecar_batch_size histogram") == 1
            assert text.count("# TYPE sidecar_requests_total counter") == 1
            assert text.count("# TYPE cudagraph_hits_total counter") == 1
        check = subprocess.run(
            [prometheus_tool("promtool"), "check", "metrics"],
            input=text.encode(),
            capture_output=True,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        # Having served, tokenized and answered admin and metrics calls, the front ends (and
        # the supervisor) still have no torch loaded: only the engine process holds the model.
        assert _maps_torch(roles["engine"][0])
        assert not any(_maps_torch(pid) for pid in [server.pid, *roles["front-end"]])


def _maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_a_dead_front_end_is_replaced_and_counts_never_go_backwards(tmp_path: Path) -> None:
    with SidecarProcess(ENV, tmp_path / "server.log") as server:
        server.wait_ready()
        assert _post_many(server.url, 20) == [200] * 20
        before = _sample(
            httpx.get(server.url + "/metrics").text,
            'sidecar_requests_total{route="/infer",status="200"}',
        )
        victim = server.children()["front-end"][0]
        os.kill(victim, signal.SIGKILL)
        _wait_for(
            lambda: (
                len(server.children().get("front-end", [])) == 2
                and victim not in server.children()["front-end"]
            )
        )
        _wait_for(lambda: httpx.get(server.url + "/readyz").status_code == 200)
        assert _post_many(server.url, 20) == [200] * 20
        after = _sample(
            httpx.get(server.url + "/metrics").text,
            'sidecar_requests_total{route="/infer",status="200"}',
        )
        assert after >= before + 20
        assert "exited with -9; starting another" in server.log_text()
        assert server.stop() == 0


def test_a_dead_engine_answers_503_and_the_server_exits_non_zero(tmp_path: Path) -> None:
    with SidecarProcess(ENV, tmp_path / "server.log") as server:
        server.wait_ready()
        engine = server.children()["engine"][0]
        os.kill(engine, signal.SIGSTOP)  # requests now wait on the engine
        with ThreadPoolExecutor(6) as pool:
            waiting = [
                pool.submit(httpx.post, server.url + "/infer", json={"inputs": ["x"]}, timeout=30.0)
                for _ in range(6)
            ]
            time.sleep(0.5)
            assert not any(f.done() for f in waiting)
            os.kill(engine, signal.SIGKILL)
            answers = [f.result() for f in waiting]
        # Nobody hangs, nobody is dropped silently: a 503 in the error envelope.
        for answer in answers:
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "not_ready"
            assert "engine process has stopped" in answer.json()["error"]["message"]
        try:
            health = httpx.get(server.url + "/healthz", timeout=5.0).status_code
        except httpx.HTTPError:
            health = None  # the front ends are already gone: fails too
        assert health != 200
        assert server.wait(60) == 1
        assert "the engine process exited" in server.log_text()


def test_sigterm_drains_every_process_and_saves_the_profile_once(tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    env = {**ENV, "SIDECAR_PROFILE_PATH": str(profile), "SIDECAR_DRAIN_DELAY_S": "0.3"}
    with SidecarProcess(env, tmp_path / "server.log") as server:
        server.wait_ready()
        with ThreadPoolExecutor(8) as pool:
            load = pool.submit(_post_many, server.url, 80)
            time.sleep(0.1)
            server.terminate()
            statuses = load.result()
        # Accepted while draining: answered (200 or 503 draining); once the front ends stop
        # accepting, refused: never a 500, never a hang.
        assert statuses.count(200) > 0
        assert set(statuses) <= {200, 503, -1}, statuses
        assert server.wait(60) == 0
    log = server.log_text()
    assert log.count("saved the hot-shape profile") == 1
    assert profile.is_file()


def test_a_port_in_use_is_refused_with_its_reason(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = SidecarProcess(ENV, tmp_path / "server.log", args=("--port", str(port)))
        with server:
            assert server.wait(60) == 3
        assert f"cannot listen on 127.0.0.1:{port}" in server.log_text()
