"""The service serving a model the user brings: a sentence-transformers directory with its own
pipeline and prompts, named by path or by hub id, through the real app and its routes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from app_support import wait_ready
from fastapi.testclient import TestClient
from model_builders import TinySpec, fill_hub_cache, st_encode, tiny_model

from app.main import create_app
from app.settings import load_settings

# An e5-style model: prompts with a default, a Dense layer that changes the size, normalised.
SPEC = TinySpec(
    family="xlm-roberta",
    pooling="mean",
    dense=(24, "tanh", True),
    normalize=True,
    prompts=(("query", "query: "), ("passage", "passage: ")),
    default_prompt_name="query",
)
TEXTS = ["a brought model", "served with its own pipeline"]


def serve(model: str, **overrides: object) -> TestClient:
    values: dict[str, object] = {"dtype": "float32", "graph_mode": "FULL", **overrides}
    settings = load_settings(model=model, **values)
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with serve(str(tiny_model(SPEC)), capture_threshold=1) as c:
        wait_ready(c)
        yield c


def rows(resp) -> torch.Tensor:  # type: ignore[no-untyped-def]
    assert resp.status_code == 200, resp.text
    return torch.tensor(resp.json()["embeddings"])


def test_prompts_as_sentence_transformers_applies_them(client: TestClient) -> None:
    folder = tiny_model(SPEC)
    default = st_encode(folder, TEXTS)  # the model's default prompt ("query")
    passage = st_encode(folder, TEXTS, prompt_name="passage")
    for _ in range(2):  # eager, then (after the idle gap) a replay
        got = rows(client.post("/infer", json={"inputs": TEXTS}))
        torch.testing.assert_close(got, default, atol=1e-5, rtol=0)
        named = rows(client.post("/infer", json={"inputs": TEXTS, "prompt_name": "passage"}))
        torch.testing.assert_close(named, passage, atol=1e-5, rtol=0)
    assert not torch.allclose(default, passage, atol=1e-3)  # the prompt matters
    # token counts include the prompt ("document" is sentence-transformers' empty prompt)
    with_prompt = client.post("/infer", json={"inputs": TEXTS[:1]}).json()["usage"]["tokens"]
    body = {"input": TEXTS[0], "prompt_name": "document"}
    without = client.post("/v1/embeddings", json=body).json()["usage"]["prompt_tokens"]
    assert with_prompt > without > 0
    unknown = client.post("/infer", json={"inputs": TEXTS[:1], "prompt_name": "none"})
    assert unknown.status_code == 400
    assert "document, passage, query" in unknown.json()["error"]["message"]


def test_dimensions_come_from_the_pipeline(client: TestClient) -> None:
    body = client.post("/infer", json={"inputs": TEXTS}).json()
    assert body["dimensions"] == 24 and len(body["embeddings"][0]) == 24
    info = client.get("/info").json()
    assert (info["family"], info["dimensions"], info["normalized"]) == ("xlm-roberta", 24, True)
    assert info["prompts"] == ["document", "passage", "query"]
    assert info["default_prompt_name"] == "query"
    openai = client.post("/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "float"})
    assert len(openai.json()["data"][0]["embedding"]) == 24
    too_many = client.post("/v1/embeddings", json={"input": TEXTS[0], "dimensions": 25})
    assert too_many.status_code == 400


def test_a_hub_id_is_served_from_the_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never the network
    fill_hub_cache(home, "tiny-org/tiny-e5", tiny_model(SPEC), "0" * 40)
    with serve("tiny-org/tiny-e5") as c:
        wait_ready(c)
        got = rows(c.post("/infer", json={"inputs": TEXTS}))
        assert c.get("/info").json()["model_id"] == "tiny-org/tiny-e5"
    torch.testing.assert_close(got, st_encode(tiny_model(SPEC), TEXTS), atol=1e-5, rtol=0)


def test_a_model_that_is_not_cached_offline_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    app = create_app(load_settings(model="tiny-org/absent", dtype="float32"))
    with pytest.raises(Exception, match="tiny-org/absent"), TestClient(app):
        pass


# A Qwen3-Embedding-style model: a causal decoder, its last token pooled, an instruction prompt
# for queries and none for documents.
QWEN3 = TinySpec(
    family="qwen3",
    pooling="lasttoken",
    normalize=True,
    prompts=(
        ("query", "Instruct: Given a web search query, retrieve relevant passages\nQuery:"),
        ("document", ""),
    ),
)


def test_a_decoder_embedder_with_its_prompts_in_piecewise() -> None:
    folder = tiny_model(QWEN3)
    documents = st_encode(folder, TEXTS)  # no default prompt: documents as they are
    queries = st_encode(folder, TEXTS, prompt_name="query")
    with serve(str(folder), graph_mode="PIECEWISE", capture_threshold=1) as c:
        wait_ready(c)
        for _ in range(2):  # eager, then (after the idle gap) replays
            got = rows(c.post("/infer", json={"inputs": TEXTS}))
            torch.testing.assert_close(got, documents, atol=1e-5, rtol=0)
            body = {"input": TEXTS, "prompt_name": "query", "encoding_format": "float"}
            data = c.post("/v1/embeddings", json=body).json()["data"]
            got = torch.tensor([d["embedding"] for d in data])
            torch.testing.assert_close(got, queries, atol=1e-5, rtol=0)
        info = c.get("/info").json()
    assert (info["family"], info["max_input_length"]) == ("qwen3", 48)
    assert info["model_type"] == {"embedding": {"pooling": "last_token"}}  # as TEI says it


def test_a_model_longer_than_a_batch_is_served_truncated(caplog: pytest.LogCaptureFixture) -> None:
    """The model's own limit (48) above the largest batch (32 tokens): lowered, with a warning,
    rather than a service that does not start."""
    with serve(str(tiny_model(QWEN3)), max_batch_tokens=32) as c:
        wait_ready(c)
        assert c.get("/info").json()["max_input_length"] == 32
        long = c.post("/infer", json={"inputs": ["document " * 60]}).json()
        assert long["usage"]["tokens"] == 32
    assert "more than the 32 tokens of the largest batch: using 32" in caplog.text


def test_a_character_limit_below_the_models_reach_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """48 tokens read about 192 characters of English: a 100-character limit would refuse
    texts the model reads whole, and the start-up log says which setting to raise; the
    default (8192) says nothing."""
    with serve(str(tiny_model(QWEN3)), max_text_chars=100) as c:
        wait_ready(c)
        assert c.post("/infer", json={"inputs": ["a" * 101]}).status_code == 422
    assert "texts over 100 characters (SIDECAR_MAX_TEXT_CHARS) are refused" in caplog.text
    assert "the model reads up to 48" in caplog.text
    caplog.clear()
    with serve(str(tiny_model(QWEN3))) as c:
        wait_ready(c)
    assert "SIDECAR_MAX_TEXT_CHARS" not in caplog.text
