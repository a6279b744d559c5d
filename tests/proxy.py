"""TCP proxies that break connections the way networks do: refuse new connections, cut
existing ones, or freeze them silently (no FIN, no RST)."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit, urlunsplit

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class TcpProxy:
    """Listens on 127.0.0.1 and relays every connection to ``open_upstream()``."""

    def __init__(self, open_upstream: Callable[[], Awaitable[Streams]]) -> None:
        self._open_upstream = open_upstream
        self.refuse_new = False
        self.freeze_new = False  # new connections are held, silent, from their first byte
        self._server: asyncio.base_events.Server | None = None
        self._links: list[_Link] = []
        self.port = 0

    @classmethod
    def to_port(cls, port: int) -> "TcpProxy":
        return cls(lambda: asyncio.open_connection("127.0.0.1", port))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse_new:
            writer.close()
            return
        up_reader, up_writer = await self._open_upstream()
        link = _Link(reader, writer, up_reader, up_writer)
        link.frozen = self.freeze_new
        self._links.append(link)
        await link.run()

    def links(self, match: Callable[["_Link"], bool] = lambda link: True) -> list["_Link"]:
        return [link for link in self._links if not link.done and match(link)]

    def relayed(self) -> int:
        """How many connections were let through so far."""
        return len(self._links)

    def cut_all(self) -> None:
        for link in self.links():
            link.cut()

    async def stop(self) -> None:
        self.cut_all()
        if self._server:
            self._server.close()


class PgProxy(TcpProxy):
    """A proxy in front of the PostgreSQL server of ``upstream_url`` (TCP or socket)."""

    def __init__(self, upstream_url: str) -> None:
        self.upstream_url = upstream_url
        parts = urlsplit(upstream_url)
        host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
        port = parts.port or 5432

        async def open_upstream() -> Streams:
            if host.startswith("/"):
                return await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            return await asyncio.open_connection(host, port)

        super().__init__(open_upstream)

    @property
    def url(self) -> str:
        """The upstream URL, pointed at the proxy."""
        parts = urlsplit(self.upstream_url)
        user = parts.username or "postgres"
        return urlunsplit(("postgresql", f"{user}@127.0.0.1:{self.port}", parts.path, "", ""))


class _Link:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.up_reader, self.up_writer = up_reader, up_writer
        self.frozen = False
        self.done = False
        self.startup = b""  # the client's first bytes (PostgreSQL: contain application_name)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    first: bool) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if first and len(self.startup) < 4096:
                    self.startup += data  # SSLRequest, then the startup packet
                while self.frozen and not self.done:
                    await asyncio.sleep(0.05)  # hold the bytes: a silently dead network
                if self.done:
                    break
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.cut()

    async def run(self) -> None:
        await asyncio.gather(self._pump(self.reader, self.up_writer, True),
                             self._pump(self.up_reader, self.writer, False))

    def cut(self) -> None:
        if self.done:
            return
        self.done = True
        for w in (self.writer, self.up_writer):
            try:
                w.close()
            except (ConnectionError, OSError, RuntimeError):
                pass
