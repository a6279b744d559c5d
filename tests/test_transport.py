"""The contract app/transport.py relies on, against the installed Tornado: rerun before
each Tornado upgrade. A real server and a real client on a socket: frames written
straight to the connection's IOStream arrive as the messages they encode, in order and
after what ``write_message`` sent, and the IOStream's private counters say how many
bytes are still queued."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web
import tornado.websocket

from app import transport

pytestmark = pytest.mark.unit  # no database; one local socket, about a second

BIG = "x" * 6_000_000  # more than a loopback socket's send buffer takes at once


class Sender(tornado.websocket.WebSocketHandler):
    seen: list[int] = []

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.write_message("through write_message")
        stream = self.ws_connection.stream  # type: ignore[union-attr]
        assert isinstance(stream, tornado.iostream.IOStream)
        before = transport.pending_bytes(stream)
        data = transport.encode_frames(['{"n":1}', '{"n":2}'], batch=True)
        data += transport.encode_frames(['{"n":3}', BIG], batch=False)
        transport.write(stream, data)
        Sender.seen = [before, transport.pending_bytes(stream)]


async def test_frames_written_to_the_stream_arrive_as_messages() -> None:
    app = tornado.web.Application([(r"/ws", Sender)])
    (sock,) = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    port = sock.getsockname()[1]
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    try:
        client = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{port}/ws")
        received = [await asyncio.wait_for(client.read_message(), 5) for _ in range(4)]
        assert received == ["through write_message", '{"n":1}\n{"n":2}', '{"n":3}', BIG]
        before, after = Sender.seen
        assert after > before  # the big frame could not all leave at once
        client.close()
    finally:
        server.stop()


def test_the_private_counters_exist_on_iostream() -> None:
    left, right = socket.socketpair()
    try:
        stream = tornado.iostream.IOStream(left)
        assert transport.pending_bytes(stream) == 0
        assert hasattr(stream, "_total_write_index")
        assert hasattr(stream, "_total_write_done_index")
        stream.close()
    finally:
        right.close()
