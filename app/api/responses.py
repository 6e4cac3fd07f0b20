"""Fast JSON for embeddings: the float-formatting hot path of the inference routes.

This runs on the event loop, which on a small CPU takes its time from the model's threads, so
the float array is written by orjson rather than Python's much slower float formatting. Each
number is the shortest form that reads back as the same float32 (an exact round trip).
Embeddings are checked to be finite on the worker, so no NaN/inf (not JSON) can reach this.
"""

from __future__ import annotations

import base64
import json

import orjson
import torch
from starlette.responses import Response


class RawJSONResponse(Response):
    """Bytes already encoded as JSON."""

    media_type = "application/json"


def float_rows(rows: list[torch.Tensor]) -> list[bytes]:
    """Each (dims,) float32 row as a JSON array of numbers."""
    if not rows:
        return []
    matrix = rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)  # (n, dims)
    return [
        orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
        for values in matrix.to(torch.float32).numpy()
    ]


def base64_row(row: torch.Tensor) -> bytes:
    """OpenAI's base64 encoding: the little-endian float32 bytes of the vector."""
    data = row.to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()
    return base64.b64encode(data)


def infer_body(model: str, dims: int, rows: list[torch.Tensor], tokens: int) -> bytes:
    head = f'{{"model":{json.dumps(model)},"dimensions":{dims:d},"embeddings":['.encode()
    tail = f'],"usage":{{"tokens":{tokens:d}}}}}'.encode()
    return head + b",".join(float_rows(rows)) + tail


def embeddings_body(model: str, rows: list[torch.Tensor], tokens: int, encoding: str) -> bytes:
    if encoding == "base64":
        values = [b'"' + base64_row(row) + b'"' for row in rows]
    else:
        values = float_rows(rows)
    items = b",".join(
        b'{"object":"embedding","index":%d,"embedding":%s}' % (i, v) for i, v in enumerate(values)
    )
    usage = f'{{"prompt_tokens":{tokens:d},"total_tokens":{tokens:d}}}'
    tail = f'],"model":{json.dumps(model)},"usage":{usage}}}'.encode()
    return b'{"object":"list","data":[' + items + tail
