"""A zmq socket on the asyncio event loop, carrying lists of messages.

zmq's file descriptor only says "look at the socket", edge-triggered, so the reader drains the
socket until it is empty, and re-looks after every send (a send may consume the edge). Messages
queued for one peer during one turn of the loop leave in one frame: under load a front end sends
many requests, and the engine many answers, per zmq send.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import zmq

from app.serving.messages import encode

logger = logging.getLogger(__name__)

Peer = bytes  # a ROUTER's peer identity; b"" on a DEALER (its one peer)


class Channel:
    """`on_frame(peer, payload)` for every frame received; `send(peer, message)` buffers until
    the end of the loop's turn."""

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        loop: asyncio.AbstractEventLoop,
        on_frame: Callable[[Peer, bytes], None],
        routed: bool,
    ) -> None:
        self._sock = sock
        self._loop = loop
        self._on_frame = on_frame
        self._routed = routed  # ROUTER: frames carry the peer identity first
        self._outbox: dict[Peer, list[Any]] = {}
        self._flush_scheduled = False
        self._closed = False
        self._fd: int = sock.FD
        loop.add_reader(self._fd, self.drain)
        loop.call_soon(self.drain)  # anything that arrived before the reader was added

    def send(self, peer: Peer, message: Any) -> None:
        if self._closed:
            return
        box = self._outbox.get(peer)
        if box is None:
            self._outbox[peer] = [message]
        else:
            box.append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, {}
        for peer, messages in outbox.items():
            payload = encode(messages)
            try:
                if self._routed:
                    self._sock.send_multipart((peer, payload), zmq.NOBLOCK)
                else:
                    self._sock.send(payload, zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # the peer is gone (ROUTER_MANDATORY) or closing
                logger.debug("could not send %d messages: %s", len(messages), exc)
        self.drain()

    def drain(self) -> None:
        """Handle every frame received so far (run whenever the socket signals)."""
        sock = self._sock
        while not self._closed and int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            peer, payload = (frames[0], frames[-1]) if self._routed else (b"", frames[-1])
            try:
                self._on_frame(peer, payload)
            except Exception:  # one bad frame must not stop the channel
                logger.exception("could not handle a message")

    def close(self) -> None:
        if self._closed:
            return
        if self._outbox:
            self._flush()
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._sock.close(linger=500)
