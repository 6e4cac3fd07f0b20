"""The real app over ASGI with its lifespan (toy model): endpoints, limits, errors, admin auth."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from app_support import ADMIN_CALLS, wait_captured, wait_ready
from fastapi.testclient import TestClient

from app.settings import load_settings
from models import cpu_has_native_bf16, make_toy_encoder
from tests.front_end_support import make_app

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_client(**overrides: Any) -> TestClient:
    # float32: answers are compared with the float32 toy reference at 1e-5 (auto would pick
    # bfloat16 on a CPU with native bfloat16; test_service_api covers that default)
    overrides.setdefault("dtype", "float32")
    settings = load_settings(model_path="toy", **overrides)
    return TestClient(make_app(settings), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with make_client(
        admin_token=TOKEN,
        graph_mode="FULL",  # the admin and cache views are this module's subject
        idle_prewarm_top_k=0,  # exact capture counts: only what traffic and prewarms capture
        max_body_bytes=20_000,
        max_inputs_per_request=8,
        max_queue=64,
        max_text_chars=500,
    ) as c:
        wait_ready(c)
        yield c


def assert_error(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


TEXTS = ["hello world", "a much longer sentence about graphs and batches", "x"]


def reference(texts: list[str]) -> torch.Tensor:
    """The toy model's plain eager embeddings, one text at a time."""
    enc = make_toy_encoder()
    return torch.cat([enc.embed([t]) for t in texts])


# ---------------------------------------------------------------------------- basics
def test_health_ready_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["model"] == "toy-bert"
    assert (ready.json()["device"], ready.json()["dtype"]) == ("cpu", "float32")
    assert client.get("/docs").status_code == 200
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


def test_infer_returns_embeddings_in_order(client: TestClient) -> None:
    resp = client.post("/infer", json={"inputs": TEXTS})
    assert resp.status_code == 200
    body = resp.json()
    assert body["model"] == "toy-bert" and body["dimensions"] == 32
    enc = make_toy_encoder()
    assert body["usage"] == {"tokens": sum(len(ids) for ids in enc.tokenizer.encode(TEXTS))}
    got = torch.tensor(body["embeddings"])
    assert got.shape == (3, 32)
    torch.testing.assert_close(got, reference(TEXTS), atol=1e-5, rtol=1e-4)
    # Unit length (the model L2-normalises), and each text its own vector.
    torch.testing.assert_close(got.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    assert not torch.allclose(got[0], got[1])


def test_auto_dtype_serves_what_the_cpu_multiplies_natively() -> None:
    """SIDECAR_DTYPE=auto (the default): bfloat16 on a CPU with native bfloat16, else float32;
    /readyz says which, and the answers stay within cosine 0.995 of the float32 reference."""
    want = "bfloat16" if cpu_has_native_bf16() else "float32"
    with TestClient(make_app(load_settings(model_path="toy")), raise_server_exceptions=False) as c:
        wait_ready(c)
        assert c.get("/readyz").json()["dtype"] == want
        resp = c.post("/infer", json={"inputs": TEXTS})
        assert resp.status_code == 200, resp.text
        got = torch.tensor(resp.json()["embeddings"])
    cos = torch.nn.functional.cosine_similarity(got, reference(TEXTS))
    assert cos.min() >= 0.995, cos
    torch.testing.assert_close(got.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)


def test_openai_embeddings_float_and_base64(client: TestClient) -> None:
    single = client.post("/v1/embeddings", json={"input": "hello world", "model": "anything"})
    assert single.status_code == 200
    body = single.json()
    assert body["object"] == "list" and body["model"] == "toy-bert"
    assert [d["index"] for d in body["data"]] == [0]
    assert body["data"][0]["object"] == "embedding"
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0

    floats = client.post("/v1/embeddings", json={"input": TEXTS}).json()
    b64 = client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"}).json()
    assert [d["index"] for d in floats["data"]] == [0, 1, 2]
    for f, b in zip(floats["data"], b64["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert decoded.shape == (32,)
        # The JSON floats (orjson, shortest float32 form) round-trip float32 exactly.
        assert np.array_equal(decoded, np.asarray(f["embedding"], dtype=np.float32))
    torch.testing.assert_close(
        torch.tensor([d["embedding"] for d in floats["data"]]),
        reference(TEXTS),
        atol=1e-5,
        rtol=1e-4,
    )
    same = client.post("/v1/embeddings", json={"input": "x", "dimensions": 32})
    assert same.status_code == 200


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"input": "x", "dimensions": 33}, 400, "unsupported_dimensions"),  # toy: 32
        ({"input": "x", "dimensions": 0}, 422, "invalid_request"),
        ({"input": "x", "prompt_name": "query"}, 400, "unknown_prompt"),
        ({"input": [1, 2, 3]}, 422, "invalid_request"),
        ({"input": [[1, 2], [3]]}, 422, "invalid_request"),
        ({"input": []}, 422, "invalid_request"),
        ({"input": ""}, 422, "invalid_request"),
        ({"input": "x", "encoding_format": "int8"}, 422, "invalid_request"),
        ({"input": "x", "extra": True}, 422, "invalid_request"),
        ({"model": "m"}, 422, "invalid_request"),
    ],
)
def test_openai_embeddings_rejections(
    client: TestClient, payload: dict[str, Any], status: int, code: str
) -> None:
    err = assert_error(client.post("/v1/embeddings", json=payload), status, code)
    if payload.get("input") == [1, 2, 3]:
        assert "token-id input is not supported" in err["message"]


def test_openai_dimensions_truncate_and_renormalise(client: TestClient) -> None:
    full = torch.tensor(
        client.post("/v1/embeddings", json={"input": "matryoshka"}).json()["data"][0]["embedding"]
    )
    body = {"input": "matryoshka", "dimensions": 8, "encoding_format": "float"}
    short = torch.tensor(client.post("/v1/embeddings", json=body).json()["data"][0]["embedding"])
    torch.testing.assert_close(short, full[:8] / full[:8].norm(), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- TEI routes
def test_tei_embed_and_info(client: TestClient) -> None:
    texts = ["text embeddings inference", "b"]
    ref = reference(texts)
    for path in ("/embed", "/"):
        got = client.post(path, json={"inputs": texts})
        assert got.status_code == 200, got.text
        torch.testing.assert_close(torch.tensor(got.json()), ref, atol=1e-5, rtol=0)
    one = client.post("/embed", json={"inputs": "b", "normalize": False, "truncate": True})
    torch.testing.assert_close(torch.tensor(one.json()), ref[1:], atol=1e-5, rtol=0)
    short = torch.tensor(client.post("/embed", json={"inputs": "b", "dimensions": 4}).json())
    torch.testing.assert_close(short[0], ref[1, :4] / ref[1, :4].norm(), atol=1e-5, rtol=0)
    info = client.get("/info").json()
    assert info["model_id"] == "toy-bert" and info["dimensions"] == 32
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 64 and info["max_client_batch_size"] == 8
    assert info["family"] == "bert" and info["normalized"] is True
    assert info["graph_mode"] == "FULL" and info["prompts"] == []
    assert info["tokenization_workers"] == 1  # one app, one process tokenizing


def test_tei_embed_truncates_unless_told_not_to(client: TestClient) -> None:
    long_text = "graph " * 80  # over the toy model's 64 tokens, under max_text_chars (500)
    for extra in ({}, {"truncate": True}):  # unset: cut, as a TEI server with --auto-truncate
        assert client.post("/embed", json={"inputs": ["a", long_text], **extra}).status_code == 200
    refused = client.post("/embed", json={"inputs": ["a", long_text], "truncate": False})
    err = assert_error(refused, 413, "input_too_long")
    assert "input 1 has " in err["message"] and "maximum of 64" in err["message"]
    assert client.post("/embed", json={"inputs": ["a"], "truncate": False}).status_code == 200


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"inputs": []}, 422, "invalid_request"),
        ({"inputs": ["a"] * 9}, 422, "invalid_request"),
        ({"inputs": [1, 2]}, 422, "invalid_request"),
        ({"inputs": "a", "normalize": "yes"}, 422, "invalid_request"),
        ({"inputs": "a", "truncation_direction": "Left"}, 422, "invalid_request"),
        ({"inputs": "a", "prompt_name": "query"}, 400, "unknown_prompt"),
        ({"inputs": "a", "dimensions": 33}, 400, "unsupported_dimensions"),
    ],
)
def test_tei_embed_rejections(
    client: TestClient, payload: dict[str, Any], status: int, code: str
) -> None:
    assert_error(client.post("/embed", json=payload), status, code)


# ---------------------------------------------------------------------------- limits
def _raw(client: TestClient, body: bytes, path: str = "/infer", **headers: str) -> Any:
    return client.post(path, content=body, headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"inputs": []}, "at least 1"),
        ({"inputs": ["a"] * 9}, "at most 8"),
        ({"inputs": ["a" * 501]}, "at most 500"),
        ({"inputs": [""]}, "at least 1"),
        ({"inputs": "not a list"}, "inputs"),
        ({"inputs": [1]}, "inputs.0"),
        ({"inputs": [["nested"]]}, "inputs.0"),
        ({"inputs": [None]}, "inputs.0"),
        ({"inputs": ["a"], "extra": 1}, "extra"),
        ({"texts": ["a"]}, "texts"),
        ([], "body"),
        ("just a string", "body"),
    ],
)
def test_infer_limits_answer_422(client: TestClient, body: Any, needle: str) -> None:
    err = assert_error(client.post("/infer", json=body), 422, "invalid_request")
    assert needle in err["message"]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"inputs": ["a"]', "invalid JSON"),
        (b'{"inputs": ["a"], "inputs": ["b"]}', "duplicate key"),
        (b'{"inputs": [NaN]}', "NaN"),
        (b'{"inputs": ["\\ud800"]}', "inputs.0"),
        (b'{"inputs": ["\xff"]}', "UTF-8"),
        (b"", "body"),
    ],
)
def test_malformed_bodies_answer_422(client: TestClient, raw: bytes, needle: str) -> None:
    err = assert_error(_raw(client, raw), 422, "invalid_request")
    assert needle in err["message"]


def test_control_characters_are_text(client: TestClient) -> None:
    resp = client.post("/infer", json={"inputs": ["tab\tnew\nline\x00nul\x7f"]})
    assert resp.status_code == 200


def test_body_too_large_with_and_without_content_length(client: TestClient) -> None:
    big = json.dumps({"inputs": ["a" * 400] * 60}).encode()  # ~24 kB > 20 kB
    err = assert_error(_raw(client, big), 413, "body_too_large")
    assert "SIDECAR_MAX_BODY_BYTES" in err["message"]

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length header
        for _ in range(30):
            yield b" " * 1000

    assert_error(
        client.post("/infer", content=chunks(), headers={"content-type": "application/json"}),
        413,
        "body_too_large",
    )
    assert_error(_raw(client, big, "/admin/prewarm", **AUTH), 413, "body_too_large")
    # The service still answers normally afterwards.
    assert client.post("/infer", json={"inputs": ["still fine"]}).status_code == 200


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/infer"), 405, "method_not_allowed")


# ---------------------------------------------------------------------------- admin
@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
def test_admin_auth(client: TestClient, method: str, path: str) -> None:
    err = assert_error(client.request(method, path), 401, "unauthorized")
    assert "token" in err["message"]
    resp = client.request(method, path)
    assert resp.headers["www-authenticate"].startswith("Bearer")
    bad_values = ["Bearer wrong-token", "Basic dGVzdDp0ZXN0", "Bearer", TOKEN, "Bearer ünï"]
    for bad in bad_values:
        raw = [(b"authorization", bad.encode("utf-8"))]  # bytes: non-ASCII sent as is
        err = assert_error(client.request(method, path, headers=raw), 401)
        assert TOKEN not in err["message"]
    assert client.request(method, path, headers=AUTH).status_code == 200


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
def test_admin_disabled_without_token(method: str, path: str) -> None:
    with make_client() as c:
        err = assert_error(c.request(method, path, headers=AUTH), 403, "admin_disabled")
        assert "SIDECAR_ADMIN_TOKEN" in err["message"]


def test_admin_prewarm_variants_and_cache_views(client: TestClient) -> None:
    assert client.delete("/admin/graphs", headers=AUTH).status_code == 200
    r = client.post(
        "/admin/prewarm", headers=AUTH, json={"shapes": [{"batch_size": 3, "seq_len": 10}]}
    ).json()
    assert r["captured"] == [{"num_tokens": 64, "num_reqs": 4, "is_uniform_decode": False}]
    assert r["skipped"] == [] and r["failed"] == [] and r["seconds"] >= 0
    again = client.post(
        "/admin/prewarm", headers=AUTH, json={"descriptors": [{"num_tokens": 64, "num_reqs": 4}]}
    ).json()
    assert again["captured"] == [] and len(again["skipped"]) == 1

    graphs = client.get("/admin/graphs", headers=AUTH).json()
    assert graphs["mode"] == "FULL" and graphs["cached_graphs"] == 1
    (entry,) = graphs["graphs"]
    assert entry["descriptor"]["num_tokens"] == 64 and entry["memory_bytes"] > 0
    assert entry["last_used"] > 1e9

    # Traffic at a shape of 1 x 16 tokens: counted as a hot shape.
    for _ in range(3):
        assert client.post("/infer", json={"inputs": ["abc"]}).status_code == 200
        wait_captured(client, AUTH)
    hot = client.get("/admin/hot-shapes", headers=AUTH, params={"top_k": 2}).json()["hot_shapes"]
    assert hot[0]["rank"] == 1 and hot[0]["count"] >= 3
    assert hot[0]["descriptor"] == {"num_tokens": 16, "num_reqs": 1, "is_uniform_decode": False}
    # its 2nd lookup crossed capture_threshold=2: answered eagerly, captured in the idle gap
    assert hot[0]["captured"] is True

    stats = client.get("/admin/stats", headers=AUTH).json()
    assert stats["mode"] == "FULL" and stats["queue_depth"] == 0
    assert stats["captures"] >= 2 and stats["hits"] >= 1 and stats["batches"] >= 3
    assert 0.0 <= stats["hit_rate"] <= 1.0

    # top_k: the predicted shapes (hot ones without a graph first).
    assert client.delete("/admin/graphs", headers=AUTH).json()["cleared"] == 2
    top = client.post("/admin/prewarm", headers=AUTH, json={"top_k": 1}).json()
    assert top["captured"] == [hot[0]["descriptor"]]
    ladder = client.post("/admin/prewarm", headers=AUTH).json()  # empty body: the ladder
    assert len(ladder["captured"]) == 20 and ladder["skipped"] == [hot[0]["descriptor"]]
    sizes = [d["num_tokens"] for d in ladder["captured"]]
    assert sizes == sorted(sizes, reverse=True)  # largest first

    cleared = client.delete("/admin/graphs", headers=AUTH).json()
    assert cleared["cleared"] == 21  # the toy ladder: 7 batch sizes x 3 sequence buckets
    assert client.get("/admin/graphs", headers=AUTH).json()["graphs"] == []


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"shapes": [{"batch_size": 0, "seq_len": 8}]}, "invalid_request"),
        ({"shapes": [{"batch_size": 1, "seq_len": 10**9}]}, "invalid_request"),
        ({"shapes": [{"batch_size": "1", "seq_len": 8}]}, "invalid_request"),
        ({"shapes": [{"batch_size": 1.5, "seq_len": 8}]}, "invalid_request"),
        ({"shapes": [{"batch_size": 1, "seq_len": 65}]}, "invalid_shape"),  # toy max is 64
        ({"descriptors": [{"num_tokens": 7}]}, "invalid_descriptor"),
        ({"descriptors": [{"num_tokens": 4, "num_reqs": 8}]}, "invalid_descriptor"),
        ({"descriptors": [{"num_tokens": -1}]}, "invalid_request"),
        ({"top_k": 0}, "invalid_request"),
        ({"top_k": 2, "shapes": [{"batch_size": 1, "seq_len": 8}]}, "invalid_request"),
        ({"bogus": 1}, "invalid_request"),
    ],
)
def test_admin_prewarm_rejections(client: TestClient, payload: dict[str, Any], code: str) -> None:
    assert_error(client.post("/admin/prewarm", headers=AUTH, json=payload), 422, code)


def test_hot_shapes_top_k_bounds(client: TestClient) -> None:
    for bad in ("0", "100000", "x"):
        assert_error(
            client.get("/admin/hot-shapes", headers=AUTH, params={"top_k": bad}),
            422,
            "invalid_request",
        )


# ---------------------------------------------------------------------------- OpenAPI
def test_openapi_declares_error_responses() -> None:
    schema = make_client().app.openapi()  # type: ignore[attr-defined]
    paths = schema["paths"]
    expected = {
        ("/infer", "post"): {"200", "413", "422", "503"},
        ("/v1/embeddings", "post"): {"200", "400", "413", "422", "503"},
        ("/admin/prewarm", "post"): {"200", "401", "403", "413", "422", "503"},
        ("/admin/graphs", "get"): {"200", "401", "403", "503"},
        ("/admin/graphs", "delete"): {"200", "401", "403", "503"},
        ("/admin/hot-shapes", "get"): {"200", "401", "403", "422", "503"},
        ("/admin/stats", "get"): {"200", "401", "403", "503"},
        ("/readyz", "get"): {"200", "503"},
    }
    for (path, method), statuses in expected.items():
        declared = paths[path][method]["responses"]
        assert statuses <= set(declared), (path, method, set(declared))
        for status in statuses - {"200"}:
            ref = declared[status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorEnvelope")
    infer_schema = schema["components"]["schemas"]["InferRequest"]["properties"]["inputs"]
    assert infer_schema["maxItems"] == 256 and infer_schema["minItems"] == 1
