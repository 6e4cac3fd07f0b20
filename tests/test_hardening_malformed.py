"""A catalogue of malformed requests against the real app (ASGI, lifespan, toy model).

Each row is sent as raw bytes with the headers given. Every one must be answered with the
expected 4xx, the `{"error": {"code", "message"}}` envelope, a status the route declares in the
OpenAPI schema, and afterwards the service must still answer a good request with the right
embeddings (equal to the model's own unbatched answer).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from app_support import wait_ready
from fastapi.testclient import TestClient
from test_hardening_support import assert_envelope
from test_hardening_support import reference as eager_reference

from app.settings import load_settings
from tests.front_end_support import make_app

TOKEN = "catalogue-admin-token"
JSON = {"content-type": "application/json"}
ADMIN = {**JSON, "Authorization": f"Bearer {TOKEN}"}
MAX_INPUTS = 8
MAX_CHARS = 500
MAX_BODY = 1_000_000
GOOD_TEXTS = ["the service still answers", "after a bad request"]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _nested(depth: int) -> bytes:
    return b'{"inputs": ' + b"[" * depth + b'"a"' + b"]" * depth + b"}"


# (id, path, body, headers, status, error code)
CATALOGUE: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    # --- not JSON
    ("truncated-json", "/infer", b'{"inputs": ["a"', JSON, 422, "invalid_request"),
    ("trailing-comma", "/infer", b'{"inputs": ["a",]}', JSON, 422, "invalid_request"),
    ("single-quotes", "/infer", b"{'inputs': ['a']}", JSON, 422, "invalid_request"),
    ("plain-text-body", "/infer", b"hello", JSON, 422, "invalid_request"),
    ("empty-body", "/infer", b"", JSON, 422, "invalid_request"),
    ("utf8-bom", "/infer", b'\xef\xbb\xbf{"inputs": ["a"]}', JSON, 422, "invalid_request"),
    ("utf16-body", "/infer", '{"inputs": ["a"]}'.encode("utf-16"), JSON, 422, "invalid_request"),
    ("deep-nesting-100k", "/infer", b"[" * 100_000, JSON, 422, "invalid_request"),
    ("deep-nesting-in-field", "/infer", _nested(50_000), JSON, 422, "invalid_request"),
    # --- wrong content type (the body itself is fine)
    (
        "text-plain",
        "/infer",
        b'{"inputs": ["a"]}',
        {"content-type": "text/plain"},
        422,
        "invalid_request",
    ),
    (
        "form-urlencoded",
        "/infer",
        b"inputs=a",
        {"content-type": "application/x-www-form-urlencoded"},
        422,
        "invalid_request",
    ),
    (
        "multipart",
        "/v1/embeddings",
        b'--b\r\nContent-Disposition: form-data; name="input"\r\n\r\na\r\n--b--\r\n',
        {"content-type": "multipart/form-data; boundary=b"},
        422,
        "invalid_request",
    ),
    # --- wrong and nested types
    ("top-level-list", "/infer", b'["a"]', JSON, 422, "invalid_request"),
    ("top-level-null", "/infer", b"null", JSON, 422, "invalid_request"),
    ("top-level-number", "/infer", b"42", JSON, 422, "invalid_request"),
    ("inputs-string", "/infer", _dumps({"inputs": "a"}), JSON, 422, "invalid_request"),
    ("inputs-number", "/infer", _dumps({"inputs": 5}), JSON, 422, "invalid_request"),
    ("inputs-null", "/infer", _dumps({"inputs": None}), JSON, 422, "invalid_request"),
    ("inputs-object", "/infer", _dumps({"inputs": {"a": 1}}), JSON, 422, "invalid_request"),
    ("inputs-ints", "/infer", _dumps({"inputs": [1, 2]}), JSON, 422, "invalid_request"),
    ("inputs-bools", "/infer", _dumps({"inputs": [True]}), JSON, 422, "invalid_request"),
    ("inputs-nested-list", "/infer", _dumps({"inputs": [["a"]]}), JSON, 422, "invalid_request"),
    (
        "inputs-objects",
        "/infer",
        _dumps({"inputs": [{"text": "a"}]}),
        JSON,
        422,
        "invalid_request",
    ),
    ("openai-input-int", "/v1/embeddings", _dumps({"input": 7}), JSON, 422, "invalid_request"),
    (
        "openai-token-ids",
        "/v1/embeddings",
        _dumps({"input": [[1, 2, 3]]}),
        JSON,
        422,
        "invalid_request",
    ),
    (
        "openai-mixed-list",
        "/v1/embeddings",
        _dumps({"input": ["a", 1]}),
        JSON,
        422,
        "invalid_request",
    ),
    (
        "openai-bad-encoding",
        "/v1/embeddings",
        _dumps({"input": "a", "encoding_format": "hex"}),
        JSON,
        422,
        "invalid_request",
    ),
    (
        "prewarm-shapes-object",
        "/admin/prewarm",
        _dumps({"shapes": {"batch_size": 1, "seq_len": 8}}),
        ADMIN,
        422,
        "invalid_request",
    ),
    (
        "prewarm-string-number",
        "/admin/prewarm",
        _dumps({"shapes": [{"batch_size": "2", "seq_len": 8}]}),
        ADMIN,
        422,
        "invalid_request",
    ),
    (
        "prewarm-float-size",
        "/admin/prewarm",
        _dumps({"shapes": [{"batch_size": 1.5, "seq_len": 8}]}),
        ADMIN,
        422,
        "invalid_request",
    ),
    (
        "prewarm-two-kinds",
        "/admin/prewarm",
        _dumps({"top_k": 2, "shapes": [{"batch_size": 1, "seq_len": 8}]}),
        ADMIN,
        422,
        "invalid_request",
    ),
    # --- empty and huge lists
    ("empty-list", "/infer", _dumps({"inputs": []}), JSON, 422, "invalid_request"),
    ("one-too-many", "/infer", _dumps({"inputs": ["a"] * 9}), JSON, 422, "invalid_request"),
    (
        "huge-list",
        "/infer",
        _dumps({"inputs": ["a"] * 150_000}),
        JSON,
        422,
        "invalid_request",
    ),
    ("openai-empty-list", "/v1/embeddings", _dumps({"input": []}), JSON, 422, "invalid_request"),
    (
        "prewarm-empty-shapes",
        "/admin/prewarm",
        _dumps({"shapes": []}),
        ADMIN,
        422,
        "invalid_request",
    ),
    (
        "prewarm-huge-shapes",
        "/admin/prewarm",
        _dumps({"shapes": [{"batch_size": 1, "seq_len": 8}] * 5000}),
        ADMIN,
        422,
        "invalid_request",
    ),
    # --- empty, long and odd strings
    ("empty-string", "/infer", _dumps({"inputs": [""]}), JSON, 422, "invalid_request"),
    ("openai-empty-string", "/v1/embeddings", _dumps({"input": ""}), JSON, 422, "invalid_request"),
    (
        "string-one-over",
        "/infer",
        _dumps({"inputs": ["a" * (MAX_CHARS + 1)]}),
        JSON,
        422,
        "invalid_request",
    ),
    ("string-900kb", "/infer", _dumps({"inputs": ["a" * 900_000]}), JSON, 422, "invalid_request"),
    ("invalid-utf8", "/infer", b'{"inputs": ["\xff\xfe"]}', JSON, 422, "invalid_request"),
    ("overlong-utf8", "/infer", b'{"inputs": ["\xc0\xaf"]}', JSON, 422, "invalid_request"),
    ("lone-surrogate", "/infer", b'{"inputs": ["a\\ud800b"]}', JSON, 422, "invalid_request"),
    ("raw-nul-in-string", "/infer", b'{"inputs": ["a\x00b"]}', JSON, 422, "invalid_request"),
    ("raw-control-char", "/infer", b'{"inputs": ["a\x1fb"]}', JSON, 422, "invalid_request"),
    ("raw-newline", "/infer", b'{"inputs": ["a\nb"]}', JSON, 422, "invalid_request"),
    # --- NaN, Infinity and huge numbers where numbers are expected
    (
        "dimensions-nan",
        "/v1/embeddings",
        b'{"input": "a", "dimensions": NaN}',
        JSON,
        422,
        "invalid_request",
    ),
    (
        "dimensions-infinity",
        "/v1/embeddings",
        b'{"input": "a", "dimensions": Infinity}',
        JSON,
        422,
        "invalid_request",
    ),
    (
        "dimensions-1e999",
        "/v1/embeddings",
        b'{"input": "a", "dimensions": 1e999}',
        JSON,
        422,
        "invalid_request",
    ),
    (
        "dimensions-5000-digits",
        "/v1/embeddings",
        b'{"input": "a", "dimensions": ' + b"9" * 5000 + b"}",
        JSON,
        422,
        "invalid_request",
    ),
    (
        "dimensions-other-model",
        "/v1/embeddings",
        _dumps({"input": "a", "dimensions": 1536}),
        JSON,
        400,
        "unsupported_dimensions",
    ),
    ("top-k-nan", "/admin/prewarm", b'{"top_k": NaN}', ADMIN, 422, "invalid_request"),
    ("top-k-neg-inf", "/admin/prewarm", b'{"top_k": -Infinity}', ADMIN, 422, "invalid_request"),
    ("top-k-huge", "/admin/prewarm", _dumps({"top_k": 10**30}), ADMIN, 422, "invalid_request"),
    ("top-k-zero", "/admin/prewarm", _dumps({"top_k": 0}), ADMIN, 422, "invalid_request"),
    # --- negative and huge prewarm shapes
    *[
        (
            f"prewarm-{name}",
            "/admin/prewarm",
            _dumps({"shapes": [shape]}),
            ADMIN,
            422,
            "invalid_request",
        )
        for name, shape in [
            ("negative-batch", {"batch_size": -1, "seq_len": 8}),
            ("zero-batch", {"batch_size": 0, "seq_len": 8}),
            ("negative-seq", {"batch_size": 1, "seq_len": -8}),
            ("huge-batch", {"batch_size": 10**9, "seq_len": 8}),
            ("huge-seq", {"batch_size": 1, "seq_len": 10**9}),
            ("giant-int", {"batch_size": 10**100, "seq_len": 8}),
            ("missing-seq", {"batch_size": 1}),
        ]
    ],
    (
        "prewarm-negative-tokens",
        "/admin/prewarm",
        _dumps({"descriptors": [{"num_tokens": -5, "num_reqs": 1}]}),
        ADMIN,
        422,
        "invalid_request",
    ),
    (
        "prewarm-huge-tokens",
        "/admin/prewarm",
        _dumps({"descriptors": [{"num_tokens": 10**12, "num_reqs": 1}]}),
        ADMIN,
        422,
        "invalid_request",
    ),
    (
        "prewarm-off-ladder",
        "/admin/prewarm",
        _dumps({"descriptors": [{"num_tokens": 7, "num_reqs": 3}]}),
        ADMIN,
        422,
        "invalid_descriptor",
    ),
    # --- unknown fields
    (
        "unknown-field",
        "/infer",
        _dumps({"inputs": ["a"], "extra": 1}),
        JSON,
        422,
        "invalid_request",
    ),
    ("misspelt-field", "/infer", _dumps({"input": ["a"]}), JSON, 422, "invalid_request"),
    (
        "openai-unknown-field",
        "/v1/embeddings",
        _dumps({"input": "a", "temperature": 0.5}),
        JSON,
        422,
        "invalid_request",
    ),
    (
        "prewarm-unknown-nested",
        "/admin/prewarm",
        _dumps({"shapes": [{"batch_size": 1, "seq_len": 8, "dtype": "fp16"}]}),
        ADMIN,
        422,
        "invalid_request",
    ),
    # --- duplicate keys
    (
        "duplicate-key",
        "/infer",
        b'{"inputs": ["a"], "inputs": ["b"]}',
        JSON,
        422,
        "invalid_request",
    ),
    (
        "duplicate-nested-key",
        "/admin/prewarm",
        b'{"shapes": [{"batch_size": 1, "batch_size": 2, "seq_len": 8}]}',
        ADMIN,
        422,
        "invalid_request",
    ),
    (
        "duplicate-openai-key",
        "/v1/embeddings",
        b'{"input": "a", "model": "x", "model": "y"}',
        JSON,
        422,
        "invalid_request",
    ),
    # --- routes and methods
    ("unknown-route", "/embeddings", _dumps({"inputs": ["a"]}), JSON, 404, "not_found"),
]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = load_settings(
        model_path="toy",
        dtype="float32",  # the answers are compared with the float32 toy reference at 1e-5
        admin_token=TOKEN,
        max_inputs_per_request=MAX_INPUTS,
        max_text_chars=MAX_CHARS,
        max_body_bytes=MAX_BODY,
        max_queue=64,
        max_batch_size=MAX_INPUTS,
    )
    with TestClient(make_app(settings), raise_server_exceptions=False) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def declared(client: TestClient) -> dict[tuple[str, str], set[int]]:
    """(method, path) -> the statuses the OpenAPI schema declares for it."""
    spec = client.get("/openapi.json").json()
    return {
        (method.upper(), path): {int(s) for s in op["responses"]}
        for path, item in spec["paths"].items()
        for method, op in item.items()
    }


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    return eager_reference(GOOD_TEXTS)


def assert_still_serving(client: TestClient, reference: torch.Tensor) -> None:
    resp = client.post("/infer", json={"inputs": GOOD_TEXTS})
    assert resp.status_code == 200, resp.text
    got = torch.tensor(resp.json()["embeddings"])
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code"),
    [pytest.param(*row[1:], id=row[0]) for row in CATALOGUE],
)
def test_malformed_request_is_refused(
    client: TestClient,
    declared: dict[tuple[str, str], set[int]],
    reference: torch.Tensor,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    assert len(body) <= MAX_BODY, "catalogue rows stay under the body limit (413 is tested apart)"
    t0 = time.perf_counter()
    resp = client.post(path, content=body, headers=headers)
    elapsed = time.perf_counter() - t0
    message = assert_envelope(resp, status, code)
    assert TOKEN not in message
    if ("POST", path) in declared:
        assert status in declared[("POST", path)], f"{status} not declared for POST {path}"
    assert elapsed < 5.0, f"refusing took {elapsed:.2f} s"
    assert_still_serving(client, reference)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/infer"), ("PUT", "/v1/embeddings"), ("PATCH", "/admin/prewarm")],
)
def test_wrong_method_is_405_with_envelope(
    client: TestClient, reference: torch.Tensor, method: str, path: str
) -> None:
    assert_envelope(client.request(method, path, headers=ADMIN), 405, "method_not_allowed")
    assert_still_serving(client, reference)


@pytest.mark.parametrize(
    "query",
    ["top_k=NaN", "top_k=1e400", "top_k=-1", "top_k=0", "top_k=" + "9" * 40, "top_k=%00", "top_k="],
)
def test_malformed_query_is_refused(
    client: TestClient, reference: torch.Tensor, query: str
) -> None:
    assert_envelope(client.get(f"/admin/hot-shapes?{query}", headers=ADMIN), 422, "invalid_request")
    assert_still_serving(client, reference)


def test_escaped_control_characters_are_text(client: TestClient) -> None:
    """JSON-escaped control characters (unlike raw ones) are valid text: embedded, not refused,
    and answered the same as the eager model."""
    texts = ["tab\there", "nul\u0000byte", "bell\u0007 and \u001f"]
    resp = client.post("/infer", content=_dumps({"inputs": texts}), headers=JSON)
    assert resp.status_code == 200, resp.text
    expected = eager_reference(texts)
    torch.testing.assert_close(torch.tensor(resp.json()["embeddings"]), expected, atol=1e-5, rtol=0)


def test_refusals_are_counted_not_served(client: TestClient) -> None:
    """Malformed requests never reach the model: the batch counter does not move."""
    before = client.get("/admin/stats", headers=ADMIN).json()
    for _, path, body, headers, _, _ in CATALOGUE[:20]:
        client.post(path, content=body, headers=headers)
    after = client.get("/admin/stats", headers=ADMIN).json()
    assert after["batches"] == before["batches"] and after["texts"] == before["texts"]
    assert after["queue_depth"] == 0
