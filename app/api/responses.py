"""Fast JSON for embeddings: the float-formatting hot path of the inference routes.

`json.dumps` spells each float with up to 17 digits (a float32 widened to a double), about
170 us per 384-dim row here. `%.9g` is the shortest width that round-trips every float32 exactly
and formats a whole row in one C call: ~3x faster and ~40% smaller. Embeddings are checked to be
finite on the worker, so no "nan"/"inf" can reach this (they are not JSON).
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache

import torch
from starlette.responses import Response


class RawJSONResponse(Response):
    """Bytes already encoded as JSON."""

    media_type = "application/json"


@lru_cache(maxsize=8)
def _row_format(dims: int) -> str:
    return "[" + ",".join(["%.9g"] * dims) + "]"


def float_rows(rows: list[torch.Tensor]) -> list[str]:
    """Each (dims,) float32 row as a JSON array of numbers."""
    if not rows:
        return []
    fmt = _row_format(rows[0].shape[0])
    matrix = rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)  # (n, dims)
    return [fmt % tuple(values) for values in matrix.tolist()]


def base64_row(row: torch.Tensor) -> str:
    """OpenAI's base64 encoding: the little-endian float32 bytes of the vector."""
    data = row.to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()
    return base64.b64encode(data).decode("ascii")


def infer_body(model: str, dims: int, rows: list[torch.Tensor], tokens: int) -> bytes:
    head = f'{{"model":{json.dumps(model)},"dimensions":{dims:d},"embeddings":['
    tail = f'],"usage":{{"tokens":{tokens:d}}}}}'
    return (head + ",".join(float_rows(rows)) + tail).encode()


def embeddings_body(model: str, rows: list[torch.Tensor], tokens: int, encoding: str) -> bytes:
    if encoding == "base64":
        values = [f'"{base64_row(row)}"' for row in rows]
    else:
        values = float_rows(rows)
    items = ",".join(
        f'{{"object":"embedding","index":{i:d},"embedding":{v}}}' for i, v in enumerate(values)
    )
    usage = f'{{"prompt_tokens":{tokens:d},"total_tokens":{tokens:d}}}'
    tail = f'],"model":{json.dumps(model)},"usage":{usage}}}'
    return ('{"object":"list","data":[' + items + tail).encode()
