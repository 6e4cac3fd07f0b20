"""Cross-encoder routes: rerank in Cohere's and Jina's shape (POST /v1/rerank, /v2/rerank), in
text-embeddings-inference's (POST /rerank), and TEI's POST /predict for classifiers. Pairs go
through the same batcher, runner and graph cache as texts; a pair's row holds the model's
logits."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import engine_of
from app.api.embedding import gone_response, require_task, score_pairs
from app.api.responses import RawJSONResponse
from app.api.routing import DirectBodyRoute, bind_body
from app.api.schemas import RequestModels
from app.errors import error_responses

_ERRORS = error_responses(400, 413, 422, 500, 503)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _scores(rows: np.ndarray, activation: str, raw: bool) -> list[float]:
    """A reranker's score per pair from its one logit: the model's declared activation (the
    sigmoid unless its CrossEncoder config says identity), or the logit itself when `raw`."""
    logits = rows[:, 0]  # (n,)
    scores = logits if raw or activation == "identity" else _sigmoid(logits)
    return [float(x) for x in scores.astype(np.float32)]


def _ranked(scores: list[float], top_n: int | None) -> list[int]:
    """Indices by score, best first (ties: input order); at most `top_n` (Cohere: a top_n above
    the number of documents returns them all)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return order if top_n is None else order[:top_n]


def _labels(
    row: np.ndarray, names: tuple[str, ...], raw: bool, multi_label: bool
) -> list[dict[str, Any]]:
    """TEI's predict answer for one input: every label with its score, best first. Scores are
    the softmax over the labels (the sigmoid of each for a one-label or a multi-label model)
    unless `raw`."""
    if raw:
        probs = row
    elif row.size == 1 or multi_label:
        probs = _sigmoid(row)
    else:
        shifted = np.exp(row.astype(np.float64) - row.max())
        probs = shifted / shifted.sum()
    scores = [float(x) for x in probs.astype(np.float32)]
    out = [{"label": name, "score": score} for name, score in zip(names, scores, strict=True)]
    return sorted(out, key=lambda item: -item["score"])


def build_rerank_router(models: RequestModels) -> APIRouter:
    router = APIRouter(route_class=DirectBodyRoute, tags=["rerank and classify"])

    async def rerank(body: Any, request: Request) -> Response:
        """Score each document against the query; results sorted by relevance."""
        engine = engine_of(request)
        require_task(engine, "rerank")
        docs = [d if isinstance(d, str) else d.text for d in body.documents]
        done = await score_pairs(request, engine, [(body.query, d) for d in docs])
        if done is None:
            return gone_response()
        scores = _scores(done.rows, engine.encoder.score_activation, raw=False)
        results = []
        for i in _ranked(scores, body.top_n):
            item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if body.return_documents:
                item["document"] = {"text": docs[i]}
            results.append(item)
        answer = {
            "id": str(uuid.uuid4()),
            "results": results,
            "meta": {"billed_units": {"search_units": 1}},
            "model": engine.encoder.name,
            "usage": {"total_tokens": done.tokens},
        }
        return RawJSONResponse(orjson.dumps(answer))

    async def tei_rerank(body: Any, request: Request) -> Response:
        """text-embeddings-inference's rerank: `[{"index", "score", "text"?}]`, best first."""
        engine = engine_of(request)
        require_task(engine, "rerank")
        pairs = [(body.query, t) for t in body.texts]
        done = await score_pairs(request, engine, pairs, truncate=body.truncate is not False)
        if done is None:
            return gone_response()
        scores = _scores(done.rows, engine.encoder.score_activation, raw=body.raw_scores)
        answer = []
        for i in _ranked(scores, None):
            item: dict[str, Any] = {"index": i, "score": scores[i]}
            if body.return_text:
                item["text"] = body.texts[i]
            answer.append(item)
        return RawJSONResponse(orjson.dumps(answer))

    async def predict(body: Any, request: Request) -> Response:
        """text-embeddings-inference's predict: labels with scores, best first, for one input
        (a text or a [text, text pair]) or a list of them."""
        engine = engine_of(request)
        require_task(engine, "classify", "rerank")
        # As TEI reads it: a text, or [text] / [text, pair] is one input; [[...], ...] a batch.
        single = isinstance(body.inputs, str) or isinstance(body.inputs[0], str)
        inputs = [body.inputs] if single else body.inputs
        sequences = [[x] if isinstance(x, str) else x for x in inputs]
        pairs = [(s[0], s[1] if len(s) > 1 else None) for s in sequences]
        done = await score_pairs(request, engine, pairs, truncate=body.truncate is not False)
        if done is None:
            return gone_response()
        names = engine.encoder.labels
        multi = engine.encoder.multi_label
        answer = [_labels(row, names, body.raw_scores, multi) for row in done.rows]
        return RawJSONResponse(orjson.dumps(answer[0] if single else answer))

    routes = [
        ("/v1/rerank", rerank, models.rerank, "Rerank documents (Cohere and Jina compatible)"),
        ("/v2/rerank", rerank, models.rerank, "Rerank documents (Cohere and Jina compatible)"),
        ("/rerank", tei_rerank, models.tei_rerank, "Rerank texts (TEI compatible)"),
        ("/predict", predict, models.predict, "Classify texts or pairs (TEI compatible)"),
    ]
    for path, endpoint, model, summary in routes:
        router.add_api_route(
            path,
            bind_body(endpoint, model),
            methods=["POST"],
            response_model=None,
            responses=_ERRORS,
            summary=summary,
        )
    return router
