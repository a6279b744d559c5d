"""A WebSocket client on a plain blocking socket, for what a library client will not do:
stop reading (the slow consumer every push server must survive) while still sending
frames, and read the server's frames byte by byte afterwards.

Call these from a thread (``asyncio.to_thread``): the socket blocks.
"""

from __future__ import annotations

import base64
import os
import socket

from app.client import hello_frame, parse


def stalled_client(port: int, token: str, host: str = "127.0.0.1",
                   last_seq: int | None = None) -> socket.socket:
    """Open a socket with a tiny receive buffer, say hello and return it, unread: the
    server's writes back up as soon as a few KB are on their way."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed during the WebSocket handshake")
        response += chunk
    if b" 101 " not in response.split(b"\r\n", 1)[0]:
        raise ConnectionError(response.split(b"\r\n", 1)[0].decode(errors="replace"))
    send_text(sock, hello_frame(token, last_seq))
    return sock


def send_text(sock: socket.socket, text: str) -> None:
    """Send one text frame (client frames are masked, RFC 6455 5.3)."""
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        head = bytes([0x81, 0x80 | len(payload)])
    elif len(payload) < 1 << 16:
        head = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + len(payload).to_bytes(8, "big")
    sock.sendall(head + mask + masked)


def read_notifications(sock: socket.socket, count: int, timeout: float = 20.0) -> list[int]:
    """Read until ``count`` notification frames arrived or ``timeout`` passed without
    data; return their seqs (server frames are unmasked, text frames hold the messages,
    anything else is skipped)."""
    sock.settimeout(timeout)
    buffer = b""
    seqs: list[int] = []

    def take(n: int) -> bytes:
        nonlocal buffer
        while len(buffer) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buffer += chunk
        data, buffer = buffer[:n], buffer[n:]
        return data

    try:
        while len(seqs) < count:
            head = take(2)
            size = head[1] & 0x7F
            if size == 126:
                size = int.from_bytes(take(2), "big")
            elif size == 127:
                size = int.from_bytes(take(8), "big")
            payload = take(size)
            if head[0] & 0x0F != 0x1:
                continue  # a ping (the node's keepalive) or another control frame
            for frame in parse(payload.decode()):
                if frame.get("type") == "notification":
                    seqs.append(frame["seq"])
    except socket.timeout:
        pass
    return seqs

