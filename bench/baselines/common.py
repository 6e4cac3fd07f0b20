"""What both baseline servers share: the request model, the route, the command line.

The route is a plain `def` path operation: FastAPI's documented choice for blocking work (it
runs in the threadpool, so the event loop keeps accepting connections) and what a user who
follows the FastAPI docs writes first. `--route async` gives the other common first draft, an
`async def` route with the forward inline on the event loop, for comparison.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field

EmbedFn = Callable[[list[str]], list[list[float]]]


class InferRequest(BaseModel):
    inputs: list[str] = Field(min_length=1)


def build_app(title: str, embed: EmbedFn, route: str = "def") -> FastAPI:
    """A FastAPI app with `POST /infer` calling `embed(texts)` per request, and `/readyz`."""
    app = FastAPI(title=title)

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        # The model is loaded before the server starts listening, so listening means ready.
        return {"status": "ready"}

    if route == "def":

        @app.post("/infer")
        def infer(req: InferRequest) -> dict[str, Any]:
            return {"embeddings": embed(req.inputs)}

    elif route == "async":

        @app.post("/infer")
        async def infer_async(req: InferRequest) -> dict[str, Any]:
            return {"embeddings": embed(req.inputs)}

    else:
        raise ValueError(f"route must be 'def' or 'async', got {route!r}")
    return app


def parse_args(prog: str, description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch.set_num_threads (same for every server)"
    )
    parser.add_argument("--route", choices=("def", "async"), default="def")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="weights"
    )
    parser.add_argument(
        "--model-dir", default=None, help="model directory (default: the shipped MiniLM)"
    )
    parser.add_argument("--access-log", action="store_true", help="uvicorn access log (off)")
    return parser.parse_args(argv)


def pin_threads(threads: int) -> None:
    """Same intra-op thread count in every server under test, for a fair comparison."""
    if threads > 0:
        torch.set_num_threads(threads)
    # Tokenizers' own Rust threadpool would otherwise add threads on top of torch's.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def serve(app: FastAPI, args: argparse.Namespace) -> None:
    """One uvicorn worker, like the sidecar; access log off unless asked (as the sidecar's)."""
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", access_log=args.access_log
    )
