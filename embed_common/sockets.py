"""The ZeroMQ socket options every part sets the same way."""

from __future__ import annotations

from typing import Any

import zmq

# The largest message any socket takes: a RESULT of the largest request's vectors fits many times over
# (http_front limits: max_texts x a model's dim x 4 bytes), a garbage length prefix is refused by libzmq.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def configure(sock: zmq.Socket) -> zmq.Socket:
    """No linger (close never blocks) and the one message-size limit."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    return sock


def configure_router(sock: zmq.Socket) -> zmq.Socket:
    """A broker ROUTER: a reply to a peer that is gone is dropped, not an error."""
    configure(sock)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
    return sock


def received(frames: list[zmq.Frame], envelope: int) -> list[Any]:
    """A message received with ``copy=False``: its first ``envelope`` frames (a ROUTER's routing identity, then
    the protocol tag, command and header) as bytes, the rest (texts, vectors) as the received frames themselves,
    so that a payload passed on or answered with is never copied (a frame sent on is libzmq's reference to the
    same data; one answered with is read through its buffer)."""
    return [f.bytes if i < envelope else f for i, f in enumerate(frames)]
