"""The contract app/transport.py relies on, against the installed Tornado: rerun before
each Tornado upgrade. A real server and a real client on a socket: frames written
straight to the connection's IOStream arrive as the messages they encode, in order and
after what ``write_message`` sent, and the IOStream's private counters say how many
bytes are still queued. A write that finds nothing queued goes straight to the socket
(nothing to wait for); one behind queued bytes waits its turn, never overtaking them."""

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


class Overtaker(tornado.websocket.WebSocketHandler):
    """Writes a small frame, a frame too big to leave at once, then another small one."""

    results: list[Any] = []

    def open(self, *args: Any, **kwargs: Any) -> None:
        stream = self.ws_connection.stream  # type: ignore[union-attr]
        assert isinstance(stream, tornado.iostream.IOStream)
        first = transport.write(stream, transport.frame(b'{"n":1}'))
        after_first = transport.pending_bytes(stream)
        big = transport.write(stream, transport.frame(BIG.encode()))
        after_big = transport.pending_bytes(stream)
        last = transport.write(stream, transport.frame(b'{"n":2}'))
        Overtaker.results = [first, after_first, big, after_big, last]


async def _serve(handler: type[tornado.websocket.WebSocketHandler]
                 ) -> tuple[tornado.httpserver.HTTPServer, int]:
    app = tornado.web.Application([(r"/ws", handler)])
    (sock,) = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    return server, sock.getsockname()[1]


async def test_writes_reach_the_client_in_order_and_only_queued_ones_wait() -> None:
    server, port = await _serve(Overtaker)
    try:
        client = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{port}/ws")
        received = [await asyncio.wait_for(client.read_message(), 5) for _ in range(3)]
        assert received == ['{"n":1}', BIG, '{"n":2}']
        first, after_first, big, after_big, last = Overtaker.results
        assert first is None and after_first == 0  # sent at once: nothing to wait for
        assert big is not None and after_big > 0  # the rest of it queued
        assert last is not None  # behind the queue, so it waited its turn
        await asyncio.wait_for(last, 5)  # and its future completes once it is sent
        client.close()
    finally:
        server.stop()


async def test_a_write_behind_queued_bytes_never_overtakes_them() -> None:
    """The kernel has room again (the peer read some) but the IOStream has not flushed its
    queue yet (the loop has not run): a new write must still go behind the queue."""
    left, right = socket.socketpair()
    right.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        stream = tornado.iostream.IOStream(left)
        head = b"a" * 6_000_000
        transport.write(stream, head)
        assert transport.pending_bytes(stream) > 0
        received = bytearray()
        try:  # room in the kernel again, without running the loop
            while True:
                received += right.recv(65536)
        except BlockingIOError:
            pass
        assert 0 < len(received) < len(head)
        assert transport.write(stream, b"tail") is not None
        while len(received) < len(head) + 4:
            received += await asyncio.wait_for(loop.sock_recv(right, 1 << 20), 5)
        assert bytes(received) == head + b"tail"
        stream.close()
    finally:
        right.close()


async def test_a_write_to_a_closed_stream_raises() -> None:
    left, right = socket.socketpair()
    try:
        stream = tornado.iostream.IOStream(left)
        stream.close()
        with pytest.raises(tornado.iostream.StreamClosedError):
            transport.write(stream, transport.frame(b"{}"))
    finally:
        right.close()


async def test_frames_written_to_the_stream_arrive_as_messages() -> None:
    server, port = await _serve(Sender)
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
        assert len(stream._write_buffer) == 0
        stream.close()
    finally:
        right.close()
