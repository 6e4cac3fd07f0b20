"""Baseline 1: the same MiniLM model, one eager padded forward per request, no batching.

This is the honest same-model comparison: the same weights, tokenizer and torch code as the
sidecar (`models.load_sentence_encoder` and `SentenceEncoder.embed`, the plain padded forward),
served the simplest way, so any difference is what batching, bucketing and the service add.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.baselines.common import build_app, parse_args, pin_threads, serve


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(
        "python -m bench.baselines.naive",
        "Same model, plain FastAPI route, one eager forward per request.",
        argv,
    )
    pin_threads(args.threads)
    import torch

    from models import load_sentence_encoder, make_toy_encoder

    dtype = getattr(torch, args.dtype)
    # "toy" (the tiny test model, as SIDECAR_MODEL_PATH=toy) lets tests run this server fast.
    encoder = (
        make_toy_encoder(args.device, dtype)
        if args.model_dir == "toy"
        else load_sentence_encoder(args.model_dir, device=args.device, dtype=dtype)
    )

    def embed(texts: list[str]) -> list[list[float]]:
        # (n, 384), L2-normalised, padded to the longest text of this request only.
        return encoder.embed(texts).tolist()

    serve(build_app("naive same-model baseline", embed, args.route), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
