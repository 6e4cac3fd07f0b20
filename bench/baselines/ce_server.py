"""Rerank baseline: the server most users write first, `CrossEncoder.predict` per request.

A FastAPI app with text-embeddings-inference's `POST /rerank` (`{"query", "texts"}` ->
`[{"index", "score"}]`, best first: the sidecar's shape) that loads the reranker directory with
sentence-transformers (offline) and scores every request with
`CrossEncoder(path).predict([(query, text) for text in texts])`, its defaults (batches of 32
pairs padded to the longest, sigmoid of the one logit), in float32 on the device it is given, as
users first write it. One uvicorn process, a plain `def` route, as the other baselines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from bench.baselines.common import parse_args, pin_threads, serve


class RerankRequest(BaseModel):
    query: str = Field(min_length=1)
    texts: list[str] = Field(min_length=1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(
        "python -m bench.baselines.ce_server",
        "FastAPI calling sentence-transformers CrossEncoder.predict() per request.",
        argv,
    )
    if args.model_dir is None:
        raise SystemExit("--model-dir: a cross-encoder directory is required")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    pin_threads(args.threads)
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(args.model_dir), device=args.device)
    model.model.to(getattr(torch, args.dtype))
    app = FastAPI(title="CrossEncoder baseline")

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/rerank")
    def rerank(req: RerankRequest) -> list[dict[str, Any]]:
        scores = model.predict([(req.query, t) for t in req.texts], show_progress_bar=False)
        order = sorted(range(len(req.texts)), key=lambda i: -float(scores[i]))
        return [{"index": i, "score": float(scores[i])} for i in order]

    serve(app, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
