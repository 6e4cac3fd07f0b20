"""The two baseline servers the service benchmark compares the sidecar against.

- `naive`: the same model (this project's MiniLM encoder) behind a plain FastAPI route, one
  eager padded forward per request, no batching, no graphs.
- `st_server`: what most users write first: FastAPI calling
  `sentence_transformers.SentenceTransformer(<model dir>).encode(texts)` per request.

Both answer `POST /infer {"inputs": [text, ...]}` with `{"embeddings": [[...], ...]}` (the
sidecar's request and answer shape) and `GET /readyz`, and are started as their own processes:
`python -m bench.baselines.naive --port P` / `python -m bench.baselines.st_server ...`.
"""
