"""What the model routes do with a request: check the model serves the route's task, prompt
and tokenize texts (or pairs), queue them while the client is still there, and Matryoshka
dimensions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response

from app.api.deps import ServingEngine
from app.errors import ApiError, error_response
from models import InputTooLong, TextTokenizer

# Above this many characters in one request, tokenizing moves off the event loop.
TOKENIZE_INLINE_CHARS = 32_768

# nginx's "client closed request": counted in sidecar_requests_total, never received by anyone.
CLIENT_GONE = 499

# What each task is served by (for the 400 a route of another task answers).
TASK_ROUTES = {
    "embed": "POST /infer, /v1/embeddings or /embed",
    "rerank": "POST /v1/rerank, /v2/rerank, /rerank or /predict",
    "classify": "POST /predict",
}


@dataclass(frozen=True)
class Embedded:
    rows: np.ndarray  # (n, dimensions) float32, one row per text, in order
    tokens: int  # tokens the model read, prompts included


def prompted(engine: ServingEngine, texts: list[str], prompt_name: str | None) -> list[str]:
    """The texts with the model's prompt in front, as sentence-transformers does: the named
    prompt, else the model's default one; an unknown name is a 400 listing the known ones."""
    encoder = engine.encoder
    name = prompt_name if prompt_name is not None else encoder.default_prompt_name
    if name is None:
        return texts
    prompt = encoder.prompts.get(name)
    if prompt is None:
        known = ", ".join(sorted(encoder.prompts)) or "none"
        raise ApiError(
            400, "unknown_prompt", f"prompt_name {name!r} is not a prompt of this model ({known})"
        )
    return [prompt + text for text in texts] if prompt else texts


async def tokenize(
    tokenizer: TextTokenizer, items: list[Any], pairs: bool = False, truncate: bool = True
) -> list[list[int]]:
    """Token ids of texts (special tokens added, truncated to the model's max length), or of
    (query, document) pairs when `pairs` (the document truncated first, as the model was
    trained): inline when short (microseconds: not worth a thread hop), else off the loop.
    `truncate` false: an input too long raises InputTooLong instead."""
    if pairs:
        chars = sum(len(q) + len(d) for q, d in items)

        def run() -> list[list[int]]:
            return tokenizer.pair_ids(items, truncate)

    else:
        chars = sum(map(len, items))

        def run() -> list[list[int]]:
            return tokenizer.encode(items, truncate)

    if chars <= TOKENIZE_INLINE_CHARS:
        return run()
    return await asyncio.get_running_loop().run_in_executor(None, run)


def too_long(exc: InputTooLong, index: int) -> ApiError:
    """The 413 for input `index` (of the request) when the client declined truncation, as
    text-embeddings-inference answers it."""
    return ApiError(
        413,
        "input_too_long",
        f"input {index} has {exc.tokens} tokens, more than this model's maximum of "
        f"{exc.max_tokens}; send truncate: true (or leave it out) to have it truncated",
    )


def check_dimensions(engine: ServingEngine, dimensions: int | None) -> None:
    """Refuse (400) more dimensions than the model gives; fewer are a truncation."""
    if dimensions is not None and dimensions > engine.encoder.dimensions:
        raise ApiError(
            400,
            "unsupported_dimensions",
            f"this model returns {engine.encoder.dimensions} dimensions; `dimensions` must be "
            "at most that (fewer truncate the embedding, Matryoshka style)",
        )


def resized(rows: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """The first `dimensions` values of each row (all when None), L2-normalised if `normalize`."""
    if len(rows) == 0 or (dimensions is None and not normalize):
        return rows
    matrix = rows[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
        matrix = matrix / np.maximum(norms, 1e-12)  # as torch's F.normalize
    return matrix


def require_task(engine: ServingEngine, *tasks: str) -> None:
    """400 unless the loaded model serves one of `tasks`, naming the task it does serve."""
    served = engine.encoder.task
    if served not in tasks:
        raise ApiError(
            400,
            "wrong_task",
            f"this server's model is a {served} model ({TASK_ROUTES[served]}), not "
            f"{' or '.join(tasks)}",
        )


async def embed_texts(
    request: Request,
    engine: ServingEngine,
    texts: list[str],
    prompt_name: str | None,
    truncate: bool = True,
) -> Embedded | None:
    """Prompt, tokenize and embed `texts`; None when the client left before the answer.
    `truncate` false: a text over the model's maximum is a 413, not cut."""
    require_task(engine, "embed")
    engine.check_ready(len(texts))  # refuse before tokenizing when it cannot be served
    tokenizer = engine.encoder.tokenizer
    texts = prompted(engine, texts, prompt_name)  # the prompt counts towards the maximum
    try:
        token_ids = await tokenize(tokenizer, texts, truncate=truncate)
    except InputTooLong as exc:
        raise too_long(exc, exc.index) from None
    rows = await _embed_while_connected(request, engine, token_ids)
    if rows is None:
        return None
    return Embedded(rows, sum(map(len, token_ids)))


async def score_pairs(
    request: Request,
    engine: ServingEngine,
    pairs: list[tuple[str, str | None]],
    truncate: bool = True,
) -> Embedded | None:
    """Tokenize (text, text pair) inputs (a None pair: the text alone) and run them; each row
    holds the model's logits. None when the client left before the answer. `truncate` false:
    an input over the model's maximum is a 413, not cut."""
    engine.check_ready(len(pairs))  # the queue bound counts pairs
    tokenizer = engine.encoder.tokenizer
    alone = {i: a for i, (a, b) in enumerate(pairs) if b is None}
    both = {i: (a, b) for i, (a, b) in enumerate(pairs) if b is not None}
    token_ids: list[list[int]] = [[] for _ in pairs]
    for group, as_pairs in ((alone, False), (both, True)):
        if not group:
            continue
        try:
            ids = await tokenize(tokenizer, list(group.values()), as_pairs, truncate=truncate)
        except InputTooLong as exc:
            raise too_long(exc, list(group)[exc.index]) from None
        for i, one in zip(group, ids, strict=True):
            token_ids[i] = one
    rows = await _embed_while_connected(request, engine, token_ids)
    if rows is None:
        return None
    return Embedded(rows, sum(map(len, token_ids)))


async def _client_gone(request: Request) -> None:
    """Return once the client has disconnected. The body is read by now, so the server's next
    ASGI message is http.disconnect (uvicorn sends it when the connection drops)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _embed_while_connected(
    request: Request, engine: ServingEngine, token_ids: list[list[int]]
) -> np.ndarray | None:
    """`engine.embed(token_ids)`, abandoned as soon as the client disconnects (None then).

    uvicorn does not cancel a handler whose client went away: without this, a gone client's
    texts stay queued and are computed for nobody, holding queue room and worker time that live
    clients need. Cancelling the wait makes the batcher drop the texts still queued; a batch
    already running finishes normally for the other requests in it.
    """
    handler = asyncio.current_task()
    assert handler is not None
    gone = finished = False

    def on_disconnect(watch: asyncio.Task[None]) -> None:
        nonlocal gone
        if not finished and not watch.cancelled() and watch.exception() is None:
            gone = True
            handler.cancel()

    # One watcher task per request; the wait itself stays in this task.
    watcher = asyncio.get_running_loop().create_task(_client_gone(request))
    watcher.add_done_callback(on_disconnect)
    try:
        return await engine.embed(token_ids)  # the answer, or a refusal/failure (raised)
    except asyncio.CancelledError:
        if not gone:
            raise  # this handler cancelled (server shutdown, in-process client)
        if hasattr(handler, "uncancel"):  # Python 3.11+: the cancel was ours, consumed here
            handler.uncancel()
        return None
    finally:
        finished = True
        watcher.cancel()


def gone_response() -> Response:
    return error_response(
        CLIENT_GONE, "client_closed_request", "the client disconnected before the answer"
    )
