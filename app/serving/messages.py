"""What crosses between a front end and the engine process: msgpack via msgspec, a list of
messages per zmq frame (channel.py). Token ids go in; embeddings come back as the raw float32
bytes of an (n, dims) matrix, so neither side builds a Python object per float."""

from __future__ import annotations

from typing import Any

import msgspec


class Embed(msgspec.Struct, tag="embed", array_like=True):
    """Front end -> engine: run these texts (or pairs), already tokenized."""

    id: int
    ids: list[list[int]]


class Cancel(msgspec.Struct, tag="cancel", array_like=True):
    """Front end -> engine: the client left; drop what is still queued of request `id`."""

    id: int


class Call(msgspec.Struct, tag="call", array_like=True):
    """Front end -> engine: an admin or status operation (`app.engine.operations` names them)."""

    id: int
    method: str
    args: dict[str, Any] = {}


class Hello(msgspec.Struct, tag="hello", array_like=True):
    """Front end -> engine, on connecting: answered with the model's description and status."""

    pid: int


class Rows(msgspec.Struct, tag="rows", array_like=True):
    """Engine -> front end: the answer to Embed `id`, a C-order float32 (n, dims) matrix."""

    id: int
    n: int
    data: bytes


class Failed(msgspec.Struct, tag="failed", array_like=True):
    """Engine -> front end: Embed or Call `id` was refused or failed. `kind` names the error
    (`engine_server.failure_kind`); the front end raises the same exception the in-process
    engine would (`client.failure_exception`)."""

    id: int
    kind: str
    message: str
    code: str = ""  # an invalid admin request's error code


class Reply(msgspec.Struct, tag="reply", array_like=True):
    """Engine -> front end: the result of Call `id` (JSON-compatible)."""

    id: int
    value: Any


class Status(msgspec.Struct, tag="status", array_like=True):
    """Engine -> every front end, whenever it changes (and in answer to Hello)."""

    state: str
    prewarm_done: int
    prewarm_total: int
    model: dict[str, Any] | None = None  # the model's description, in answer to Hello only
    error: str | None = None  # why the engine could not start (it exits next)


ToEngine = Embed | Cancel | Call | Hello
FromEngine = Rows | Failed | Reply | Status

# Every frame holds a list of messages (see channel.py).
encode = msgspec.msgpack.Encoder().encode
decode_to_engine = msgspec.msgpack.Decoder(list[ToEngine]).decode
decode_from_engine = msgspec.msgpack.Decoder(list[FromEngine]).decode
