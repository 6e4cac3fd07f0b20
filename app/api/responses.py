"""Fast JSON for embeddings: the float-formatting hot path of the inference routes.

This runs on the event loop, which on a small CPU takes its time from the model's threads, so
the float array is written by orjson rather than Python's much slower float formatting. Each
number is the shortest form that reads back as the same float32 (an exact round trip).
Embeddings are checked to be finite on the worker, so no NaN/inf (not JSON) can reach this.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import orjson
from starlette.responses import Response


class RawJSONResponse(Response):
    """Bytes already encoded as JSON."""

    media_type = "application/json"


def float_rows(rows: np.ndarray) -> list[bytes]:
    """Each row of an (n, dims) float32 matrix as a JSON array of numbers."""
    return [orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY) for values in rows]


def base64_row(row: np.ndarray) -> bytes:
    """OpenAI's base64 encoding: the little-endian float32 bytes of the vector."""
    return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes())


def infer_body(model: str, dims: int, rows: np.ndarray, tokens: int) -> bytes:
    head = f'{{"model":{json.dumps(model)},"dimensions":{dims:d},"embeddings":['.encode()
    tail = f'],"usage":{{"tokens":{tokens:d}}}}}'.encode()
    return head + b",".join(float_rows(rows)) + tail


def embeddings_body(model: str, rows: np.ndarray, tokens: int, encoding: str) -> bytes:
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
