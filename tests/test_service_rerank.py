"""Rerank and classify through the real app: Cohere/Jina (/v1/rerank, /v2/rerank) and
text-embeddings-inference (/rerank, /predict) shapes, against sentence-transformers'
CrossEncoder and the transformers model; a route the model cannot serve; hostile inputs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from app_support import wait_ready
from fastapi.testclient import TestClient
from model_builders import ce_predict, hf_logits, tiny_classifier, tiny_reranker

from app.settings import load_settings
from tests.front_end_support import make_app

QUERY = "what is a cuda graph"
DOCS = [
    "a cuda graph replays kernels",
    "hello",
    "the quick brown fox jumps over the lazy dog",
    "graph token embedding model sentence search query passage",
]


def serve(model: str, **overrides: Any) -> TestClient:
    settings = load_settings(
        model=model, dtype="float32", graph_mode="FULL", capture_threshold=1, **overrides
    )
    return TestClient(make_app(settings), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def reranker() -> Iterator[TestClient]:
    with serve(
        str(tiny_reranker()), max_documents=16, max_inputs_per_request=16, max_queue=64
    ) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def classifier() -> Iterator[TestClient]:
    with serve(str(tiny_classifier())) as c:
        wait_ready(c)
        yield c


def expected_scores() -> torch.Tensor:
    return ce_predict(tiny_reranker(), [(QUERY, d) for d in DOCS])  # sigmoid of the logit


def test_cohere_and_jina_rerank(reranker: TestClient) -> None:
    ref = expected_scores()
    order = sorted(range(len(DOCS)), key=lambda i: -float(ref[i]))
    for path in ("/v1/rerank", "/v2/rerank"):
        for _ in range(2):  # eager, then graphs captured in the idle gap
            body = {"model": "x", "query": QUERY, "documents": DOCS, "return_documents": True}
            resp = reranker.post(path, json=body)
            assert resp.status_code == 200, resp.text
            answer = resp.json()
            assert [r["index"] for r in answer["results"]] == order
            got = torch.tensor([r["relevance_score"] for r in answer["results"]])
            torch.testing.assert_close(got, ref[order], atol=1e-4, rtol=0)
            assert [r["document"]["text"] for r in answer["results"]] == [DOCS[i] for i in order]
            assert answer["id"] and answer["usage"]["total_tokens"] > 0
    # top_n, documents as objects, no documents echoed by default
    objects = [{"text": d} for d in DOCS]
    top = reranker.post("/v1/rerank", json={"query": QUERY, "documents": objects, "top_n": 2})
    results = top.json()["results"]
    assert [r["index"] for r in results] == order[:2] and "document" not in results[0]
    # a top_n above the number of documents returns them all (as Cohere's API does)
    many = reranker.post("/v2/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 100})
    assert len(many.json()["results"]) == len(DOCS)


def test_tei_rerank(reranker: TestClient) -> None:
    ref = expected_scores()
    logits = hf_logits(tiny_reranker(), [(QUERY, d) for d in DOCS])[:, 0]
    body = {"query": QUERY, "texts": DOCS, "return_text": True}
    answer = reranker.post("/rerank", json=body).json()
    order = sorted(range(len(DOCS)), key=lambda i: -float(ref[i]))
    assert [a["index"] for a in answer] == order
    torch.testing.assert_close(
        torch.tensor([a["score"] for a in answer]), ref[order], atol=1e-4, rtol=0
    )
    assert [a["text"] for a in answer] == [DOCS[i] for i in order]
    raw = reranker.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True})
    got = {a["index"]: a["score"] for a in raw.json()}
    torch.testing.assert_close(
        torch.tensor([got[i] for i in range(len(DOCS))]), logits, atol=1e-4, rtol=0
    )


def test_a_query_holding_the_separator_scores_as_cross_encoder(reranker: TestClient) -> None:
    """A literal [SEP] in the query is the separator token; the pair template still keeps the
    query at type 0, and so does the served model (with one process or front ends)."""
    query = "what [SEP] is a cuda graph"
    answer = reranker.post("/rerank", json={"query": query, "texts": DOCS}).json()
    got = {a["index"]: a["score"] for a in answer}
    ref = ce_predict(tiny_reranker(), [(query, d) for d in DOCS])
    torch.testing.assert_close(
        torch.tensor([got[i] for i in range(len(DOCS))]), ref, atol=1e-4, rtol=0
    )


def test_truncate_false_refuses_a_pair_too_long_naming_the_input(reranker: TestClient) -> None:
    long_doc = "graph " * 200  # over the model's maximum length in tokens
    texts = ["d", long_doc]
    assert reranker.post("/rerank", json={"query": "q", "texts": texts}).status_code == 200
    cases = [
        ("/rerank", {"query": "q", "texts": texts}),
        ("/predict", {"inputs": [["short"], ["q", long_doc]]}),  # a pair after a text
        ("/predict", {"inputs": [["q", "d"], [long_doc]]}),  # a text after a pair
    ]
    for path, body in cases:
        refused = reranker.post(path, json={**body, "truncate": False})
        assert refused.status_code == 413, refused.text
        error = refused.json()["error"]
        assert error["code"] == "input_too_long" and "input 1 has " in error["message"]
        assert reranker.post(path, json={**body, "truncate": True}).status_code == 200


def test_predict_on_a_classifier(classifier: TestClient) -> None:
    pairs = [("a cuda graph replays kernels", "it does"), ("hello there", "general kenobi")]
    probs = torch.softmax(hf_logits(tiny_classifier(), pairs), dim=-1)  # (2, 3)
    names = ["positive", "negative", "neutral"]
    assert classifier.get("/info").json()["model_type"] == {
        "classifier": {
            "id2label": {"0": "positive", "1": "negative", "2": "neutral"},
            "label2id": {"positive": 0, "negative": 1, "neutral": 2},
        }
    }
    batch = classifier.post("/predict", json={"inputs": [list(p) for p in pairs]})
    assert batch.status_code == 200, batch.text
    for got, expected in zip(batch.json(), probs, strict=True):
        assert [x["score"] for x in got] == sorted((x["score"] for x in got), reverse=True)
        by_label = {x["label"]: x["score"] for x in got}
        torch.testing.assert_close(
            torch.tensor([by_label[n] for n in names]), expected, atol=1e-4, rtol=0
        )
    one = classifier.post("/predict", json={"inputs": list(pairs[0])}).json()  # [text, pair]
    assert {x["label"] for x in one} == set(names)
    first = batch.json()[0]  # the same pair alone: same labels, same order, same scores
    assert [x["label"] for x in one] == [x["label"] for x in first]
    torch.testing.assert_close(
        torch.tensor([x["score"] for x in one]),
        torch.tensor([x["score"] for x in first]),
        atol=1e-5,
        rtol=0,
    )
    text = classifier.post("/predict", json={"inputs": "just a text"}).json()
    assert len(text) == 3 and abs(sum(x["score"] for x in text) - 1.0) < 1e-5


def test_routes_of_another_task_answer_400(reranker: TestClient, classifier: TestClient) -> None:
    for path, body in [
        ("/infer", {"inputs": ["x"]}),
        ("/v1/embeddings", {"input": "x"}),
        ("/embed", {"inputs": "x"}),
    ]:
        resp = reranker.post(path, json=body)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "wrong_task"
        assert "rerank" in resp.json()["error"]["message"]
    resp = classifier.post("/v1/rerank", json={"query": "q", "documents": ["d"]})
    assert resp.status_code == 400 and "classify" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/rerank", {"query": "q", "documents": []}),
        ("/v1/rerank", {"query": "", "documents": ["d"]}),
        ("/v1/rerank", {"query": "q", "documents": ["d"], "top_n": 0}),
        ("/v1/rerank", {"query": "q", "documents": ["d"], "top_n": -1}),
        ("/v1/rerank", {"query": "q", "documents": ["d"] * 17}),  # max_documents=16
        ("/v1/rerank", {"query": "q", "documents": [1, 2]}),
        ("/v1/rerank", {"query": "q", "documents": [{"title": "t"}]}),
        ("/v1/rerank", {"query": "q", "documents": ["d"], "rank_fields": ["title"]}),
        ("/v2/rerank", {"query": ["q"], "documents": ["d"]}),
        ("/rerank", {"query": "q", "texts": []}),
        ("/rerank", {"query": "q", "texts": ["x" * 10_000]}),
        ("/rerank", {"query": "q", "texts": ["d"], "raw_scores": "yes"}),
        ("/predict", {"inputs": []}),
        ("/predict", {"inputs": ["a", "b", "c"]}),
    ],
)
def test_hostile_rerank_inputs_answer_4xx(reranker: TestClient, path: str, body: Any) -> None:
    resp = reranker.post(path, json=body)
    assert 400 <= resp.status_code < 500, resp.text
    assert "error" in resp.json()
    # and the server keeps serving
    assert reranker.post("/rerank", json={"query": "q", "texts": ["d"]}).status_code == 200


def test_the_official_cohere_client(tmp_path: Any) -> None:
    """`cohere.Client` and `cohere.ClientV2` with base_url at a real sidecar process."""
    cohere = pytest.importorskip("cohere")
    from server_process import SidecarProcess

    env = {"SIDECAR_MODEL": str(tiny_reranker()), "SIDECAR_DTYPE": "float32"}
    server = SidecarProcess(env, tmp_path / "server.log")
    try:
        server.wait_ready()
        ref = expected_scores()
        order = sorted(range(len(DOCS)), key=lambda i: -float(ref[i]))
        v2 = cohere.ClientV2(base_url=server.url, api_key="unused")
        ranked = v2.rerank(model="tiny", query=QUERY, documents=DOCS, top_n=3)
        assert [r.index for r in ranked.results] == order[:3]
        got = torch.tensor([r.relevance_score for r in ranked.results])
        torch.testing.assert_close(got, ref[order[:3]], atol=1e-4, rtol=0)
        v1 = cohere.Client(base_url=server.url, api_key="unused")
        ranked = v1.rerank(query=QUERY, documents=DOCS, return_documents=True)
        assert [r.index for r in ranked.results] == order
        assert ranked.results[0].document is not None
        assert ranked.results[0].document.text == DOCS[order[0]]
    finally:
        server.stop()


def test_nan_and_a_megabyte_answer_4xx(reranker: TestClient) -> None:
    nan = b'{"query": "q", "documents": ["d"], "top_n": NaN}'
    resp = reranker.post("/v1/rerank", content=nan, headers={"content-type": "application/json"})
    assert resp.status_code == 422
    big = reranker.post("/v1/rerank", json={"query": "q", "documents": ["x" * (1 << 20)]})
    assert big.status_code in (413, 422)


def test_a_cross_encoder_that_declares_identity_scores_with_logits(tmp_path: Any) -> None:
    import json
    import shutil

    folder = tmp_path / "identity-reranker"
    shutil.copytree(tiny_reranker(), folder)
    config = folder / "config_sentence_transformers.json"
    raw = json.loads(config.read_text())
    raw["activation_fn"] = "torch.nn.modules.linear.Identity"
    config.write_text(json.dumps(raw))
    logits = hf_logits(tiny_reranker(), [(QUERY, d) for d in DOCS])[:, 0]
    with serve(str(folder)) as c:
        wait_ready(c)
        answer = c.post("/rerank", json={"query": QUERY, "texts": DOCS}).json()
    got = {a["index"]: a["score"] for a in answer}
    torch.testing.assert_close(
        torch.tensor([got[i] for i in range(len(DOCS))]), logits, atol=1e-4, rtol=0
    )
    # an activation the service does not know refuses the model at start-up, naming the file
    raw["activation_fn"] = "torch.nn.modules.activation.Softplus"
    config.write_text(json.dumps(raw))
    from models import ModelLoadError, load_sentence_encoder

    with pytest.raises(ModelLoadError, match="config_sentence_transformers.json.*Softplus"):
        load_sentence_encoder(folder)


def test_a_multi_label_classifier_scores_each_label_on_its_own(tmp_path: Any) -> None:
    import json
    import shutil

    folder = tmp_path / "multi-label"
    shutil.copytree(tiny_classifier(), folder)
    config = json.loads((folder / "config.json").read_text())
    config["problem_type"] = "multi_label_classification"
    (folder / "config.json").write_text(json.dumps(config))
    pair = ("a cuda graph replays kernels", "it does")
    expected = torch.sigmoid(hf_logits(tiny_classifier(), [pair]))[0]  # (3,), not summing to 1
    with serve(str(folder)) as c:
        wait_ready(c)
        got = c.post("/predict", json={"inputs": list(pair)}).json()
    by_label = {x["label"]: x["score"] for x in got}
    names = ["positive", "negative", "neutral"]
    torch.testing.assert_close(
        torch.tensor([by_label[n] for n in names]), expected, atol=1e-4, rtol=0
    )
