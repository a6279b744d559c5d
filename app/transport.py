"""The bytes on a WebSocket, written past Tornado's ``write_message``: RFC 6455 text frames
built here and queued on the connection's IOStream in one write, and the IOStream's
private counters read for the bytes not yet sent; a write that finds nothing queued goes
straight to the socket.

Tornado has no public API for either: ``write_message`` wraps every frame in a Task (~60
µs each, tornado#2955) and makes a ``send()`` per frame, and there is no public "bytes
pending". So this module leans on internals (``WebSocketProtocol.stream``,
``IOStream._write_buffer``, ``_total_write_index`` / ``_total_write_done_index``):
tests/test_transport.py is the contract to rerun before each Tornado upgrade (setup.cfg
pins the minor version).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Sequence

import tornado.iostream

# Messages per WebSocket frame for batching clients: big enough to amortise the frame,
# small enough that a client's parser never holds much.
BATCH_BYTES = 64 * 1024


def frame(payload: bytes) -> bytes:
    """One final, unmasked text frame (RFC 6455 section 5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size <= 0xFFFF:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def encode_frames(texts: Sequence[str], batch: bool) -> bytes:
    """``texts`` as WebSocket text frames: one frame each, or with ``batch`` as few frames
    as fit ``BATCH_BYTES``, their messages separated by newlines (a JSON text never
    contains a raw newline)."""
    if not batch or len(texts) == 1:
        return b"".join(frame(text.encode()) for text in texts)
    frames = []
    lines: list[bytes] = []
    size = 0
    for text in texts:
        line = text.encode()
        if lines and size + len(line) > BATCH_BYTES:
            frames.append(frame(b"\n".join(lines)))
            lines, size = [], 0
        lines.append(line)
        size += len(line) + 1
    frames.append(frame(b"\n".join(lines)))
    return b"".join(frames)


def _ignore_closed(future: "asyncio.Future[None]") -> None:
    # Retrieve the exception of a write that failed because the peer went away, so asyncio
    # does not log "exception was never retrieved" for every frame queued to a dead socket.
    if not future.cancelled():
        future.exception()


def write(stream: tornado.iostream.IOStream, data: bytes) -> "asyncio.Future[None] | None":
    """Send ``data`` on ``stream`` (raises ``StreamClosedError`` if it is closed). When
    nothing is queued before it, it goes to the socket at once and, all sent, nothing is
    returned; what the kernel did not take is queued on the IOStream, and the returned
    future completes when that is all sent (its failure is retrieved here)."""
    if not stream._write_buffer and type(stream) is tornado.iostream.IOStream:
        # IOStream.write makes a Future, two done callbacks and an error listener for every
        # write even when the kernel takes it all at once, as it nearly always does for a
        # push: about a twentieth of a node's CPU per notification. Sending on the socket
        # first is safe only while nothing is queued (else bytes would overtake).
        sent = _send_now(stream, data)
        if sent:
            # Both counters move: pending_bytes() and the IOStream's own future positions
            # stay consistent (every queued write's future is already resolved).
            stream._total_write_index += sent
            stream._total_write_done_index += sent
            if sent == len(data):
                return None
            data = data[sent:]
    future = stream.write(data)
    future.add_done_callback(_ignore_closed)
    return future


def _send_now(stream: tornado.iostream.IOStream, data: bytes) -> int:
    """Bytes of ``data`` the kernel took at once (0 when it took none, or on any error:
    IOStream.write then meets the error itself and closes the stream its usual way)."""
    sock = stream.socket
    if sock is None or stream.closed():
        return 0
    try:
        return sock.send(data)
    except OSError:
        return 0


def pending_bytes(stream: Any) -> int:
    """Bytes queued on ``stream`` and not yet handed to the kernel (0 without a stream)."""
    # IOStream keeps these counters privately; there is no public "bytes pending".
    total = getattr(stream, "_total_write_index", 0)
    done = getattr(stream, "_total_write_done_index", 0)
    return int(total - done)
