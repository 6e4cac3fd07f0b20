"""A real `python -m app serve` process on a free loopback port: HTTP, the official OpenAI
client, a client that hangs up mid-request, SIGTERM, and refusing bad settings at start."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from server_process import SidecarProcess

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "server-test-token-9c1e"

pytestmark = pytest.mark.slow


SERVER_ENV = {
    "SIDECAR_MODEL_PATH": "toy",
    "SIDECAR_ADMIN_TOKEN": TOKEN,
    "SIDECAR_CAPTURE_THRESHOLD": "1",
}


def sidecar_env(**extra: str) -> dict[str, str]:
    """The environment of a server started by hand (SidecarProcess builds its own alike)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(SERVER_ENV, SIDECAR_LOG_LEVEL="info", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    tmp = tmp_path_factory.mktemp("server")
    config = tmp / "sidecar.toml"
    config.write_text(f'max_batch_size = 16\nprofile_path = "{tmp / "hot.json"}"\n')
    srv = SidecarProcess(SERVER_ENV, tmp / "server.log", ["--config", str(config)])
    try:
        srv.wait_ready()
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


def test_http_round_trip(server: SidecarProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        body = c.post("/infer", json={"inputs": ["over real http", "two"]}).json()
        assert body["dimensions"] == 32 and len(body["embeddings"]) == 2
        err = c.post("/infer", json={"inputs": "nope"})
        assert err.status_code == 422 and err.json()["error"]["code"] == "invalid_request"
        stats = c.get("/admin/stats", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert stats["batches"] >= 1
        assert "sidecar_requests_total" in c.get("/metrics").text


def test_official_openai_client(server: SidecarProcess) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    texts = ["The sidecar batches requests.", "CUDA graphs replay kernels."]
    # The SDK asks for base64 by default and decodes it to floats.
    result = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    assert [d.index for d in result.data] == [0, 1]
    assert result.model == "toy-bert" and result.usage.total_tokens > 0
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    floats = client.embeddings.create(model="x", input=texts[0], encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, vectors[0], atol=1e-6)
    # `dimensions` below the model's: the first values, renormalised (Matryoshka)
    short = client.embeddings.create(model="x", input=texts[0], dimensions=8)
    expected = vectors[0][:8] / np.linalg.norm(vectors[0][:8])
    np.testing.assert_allclose(short.data[0].embedding, expected, atol=1e-5)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="x", input="hi", dimensions=64)
    # The model list and lookup that tools call to discover what a server serves.
    assert [(m.id, m.object, m.owned_by) for m in client.models.list()] == [
        ("toy-bert", "model", "cudagraph-sidecar")
    ]
    assert client.models.retrieve("toy-bert").id == "toy-bert"
    with pytest.raises(openai.NotFoundError, match="'org/other-model' is not served") as missing:
        client.models.retrieve("org/other-model")
    assert missing.value.code == "model_not_found"


def test_text_embeddings_inference_client(
    server: SidecarProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """huggingface_hub's InferenceClient speaks text-embeddings-inference: at the base URL (POST
    /, as TEI serves it) and at /embed; /info answers with TEI's fields."""
    hub = pytest.importorskip("huggingface_hub")
    # Other tests switch the hub library offline; this client only talks to the local server.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    texts = ["The sidecar batches requests.", "CUDA graphs replay kernels."]
    with httpx.Client(base_url=server.url, timeout=30) as c:
        reference = np.array(c.post("/infer", json={"inputs": texts}).json()["embeddings"])
        info = c.get("/info").json()
    assert info["model_id"] == "toy-bert" and info["max_input_length"] == 64
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    for url in (server.url, server.url + "/embed"):
        client = hub.InferenceClient(model=url)
        got = client.feature_extraction(texts)
        assert got.shape == (2, 32)
        np.testing.assert_allclose(got, reference, atol=1e-5)
        one = client.feature_extraction(texts[0], normalize=True, truncate=True)
        np.testing.assert_allclose(one.reshape(-1), reference[0], atol=1e-5)
    with pytest.raises(hub.errors.HfHubHTTPError):  # a 400, not a crash
        hub.InferenceClient(model=server.url).feature_extraction("x", prompt_name="nope")


def test_client_hanging_up_mid_request_breaks_nothing(server: SidecarProcess) -> None:
    # A burst of clients that give up almost at once, while others keep going.
    texts = [f"request number {i} " * 20 for i in range(24)]
    with httpx.Client(base_url=server.url, timeout=0.001) as impatient:
        for t in texts:
            try:
                impatient.post("/infer", json={"inputs": [t, t]})
            except httpx.TimeoutException:
                pass
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for t in texts[:4]:
            assert c.post("/infer", json={"inputs": [t]}).status_code == 200
        metrics = c.get("/metrics").text
    assert 'status="500"' not in metrics
    assert server.proc.poll() is None


def test_sigterm_exits_cleanly_and_saves_the_profile(server: SidecarProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        c.post("/infer", json={"inputs": ["remember this shape"]})
    assert server.stop() == 0
    log = server.log_text()
    assert "Application shutdown complete" in log
    assert "saved the hot-shape profile" in log
    assert TOKEN not in log  # the admin token is never logged
    hot = Path(log.split("saved the hot-shape profile to ")[1].split()[0])
    assert hot.is_file()


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")


@pytest.mark.parametrize(
    ("variable", "value", "reason", "workers"),
    [
        ("SIDECAR_MAX_BATCH_SIZE", "0", "greater than or equal to 1", "1"),
        # valid spellings this host cannot serve, in one process and with an engine process
        pytest.param("SIDECAR_DEVICE", "cuda:0", "CUDA is not available", "1", marks=NO_CUDA),
        pytest.param("SIDECAR_DEVICE", "cuda", "CUDA is not available", "2", marks=NO_CUDA),
        pytest.param("SIDECAR_DTYPE", "float16", "only supported on CUDA", "2", marks=NO_CUDA),
    ],
)
def test_bad_setting_refuses_to_start(variable: str, value: str, reason: str, workers: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "0"],
        cwd=ROOT,
        env=sidecar_env(**{variable: value, "SIDECAR_WORKERS": workers}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert f"error: invalid setting {variable}" in out.stderr and reason in out.stderr
    assert "Traceback" not in out.stderr


def test_model_that_cannot_load_refuses_to_start(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    srv = SidecarProcess({**SERVER_ENV, "SIDECAR_MODEL_PATH": str(empty)}, tmp_path / "s.log")
    code = srv.proc.wait(timeout=120)
    srv.stop()
    assert code == 3
    assert "config.json" in srv.log_text() and "start-up failed" in srv.log_text()


def test_cli_help_lists_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0 and "serve" in out.stdout
    assert "bench" not in out.stdout  # benchmarks are `python -m bench`, not shipped
    out = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0 and "--config" in out.stdout and "--port" in out.stdout


def test_the_served_process_does_not_spin_openmp_threads(server: SidecarProcess) -> None:
    """`serve` asks OpenMP to wait passively before torch loads, unless the operator chose."""
    expected = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")  # the server inherits our env
    assert f"OpenMP threads wait {expected}" in server.log_text()
