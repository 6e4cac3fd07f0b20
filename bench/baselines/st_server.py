"""Baseline 2: the server most users write first, `SentenceTransformer.encode` per request.

Loads the same shipped MiniLM directory with sentence-transformers (offline: HF_HUB_OFFLINE=1,
nothing is downloaded) and encodes the texts of each request with its defaults (its own
tokenizer, padding to the longest text, mean pooling, normalisation from the model's modules), on
the device and in the dtype it is given (`--device`, `--dtype`: the service benchmark passes the
sidecar's, so all servers compute alike).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from bench.baselines.common import build_app, parse_args, pin_threads, serve


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(
        "python -m bench.baselines.st_server",
        "FastAPI calling sentence-transformers encode() per request.",
        argv,
    )
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    pin_threads(args.threads)
    import torch
    from sentence_transformers import SentenceTransformer

    from models import default_model_path

    # The very directory the sidecar and the naive baseline load: same weights, same tokenizer.
    model_dir = args.model_dir or default_model_path()
    model = SentenceTransformer(str(model_dir), device=args.device)
    # The same dtype as the other servers (the service benchmark passes the sidecar's), whatever
    # sentence-transformers would pick from the checkpoint by itself.
    model.to(getattr(torch, args.dtype))

    def embed(texts: list[str]) -> list[list[float]]:
        vectors = model.encode(texts, show_progress_bar=False)  # (n, 384) numpy float32
        return vectors.tolist()

    serve(build_app("sentence-transformers baseline", embed, args.route), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
