"""Fixtures: a real PostgreSQL (embedded via pgserver, or HERALD_TEST_DATABASE_URL),
a freshly migrated database per test session, and real Herald nodes on real ports."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from app import auth, db, schema
from app.config import Config
from app.server import HeraldServer
from tests.helpers import WsClient, listen_everywhere, wait_for

# The browser fixture (tests/browsers.py), for the browser and shop tests.
pytest_plugins = ["tests.browsers"]

SECRET = "test-secret-0123456789abcdef0123456789"
API_KEY = "test-api-key"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL server: HERALD_TEST_DATABASE_URL, else an embedded one (pgserver)."""
    external = os.environ.get("HERALD_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="herald-test-") as tmp:
        yield db.start_embedded(Path(tmp))


def run_in_thread(coro: Any) -> Any:
    """Run ``coro`` to completion on a fresh loop in another thread, so that sync fixtures
    (and alembic, which calls asyncio.run) work even while a test's loop is running."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(db.asyncpg_dsn(url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def make_database(server_url: str) -> Iterator[Callable[[], str]]:
    """Factory of new empty databases on the test server, dropped at the end."""
    created: list[str] = []

    def make() -> str:
        name = f"herald_test_{uuid.uuid4().hex[:10]}"
        run_in_thread(_admin(server_url, f'CREATE DATABASE "{name}"'))
        created.append(name)
        return _with_database(server_url, name)

    yield make
    for name in created:
        run_in_thread(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def database_url(make_database: Callable[[], str]) -> str:
    """One database migrated to head, shared by the session (tests use unique users)."""
    url = make_database()
    schema.upgrade(url)
    return url


@pytest.fixture
def user() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


def token_for(user: str, ttl: int = 3600) -> str:
    return auth.mint_token(SECRET, user, ttl)


def make_config(**overrides: Any) -> Config:
    values: dict[str, Any] = dict(
        database_url=None, secret=SECRET, api_key=API_KEY, port=0, host="127.0.0.1",
        node="node-test", data_dir=Path(tempfile.gettempdir()), hello_timeout=10.0,
        bus_ping_interval=0.5, shutdown_grace=1.0,
    )
    values.update(overrides)
    return Config(**values)


async def relay_settled(server: HeraldServer) -> None:
    """The first node of a test is elected relay and its sync makes every node re-read
    the table once: let that round finish, so tests that count rounds or fault-recovery
    paths see only what they cause."""
    sync = server.metrics.bus_events.labels("sync")
    await wait_for(lambda: sync._value.get() >= 1, timeout=10, interval=0.01)
    await asyncio.sleep(0.2)


NodeFactory = Callable[..., Awaitable[HeraldServer]]


@asynccontextmanager
async def node_factory(database_url: str) -> AsyncIterator[NodeFactory]:
    """Start real Herald nodes (HTTP + WebSocket on a free port, own pool and LISTEN) on
    ``database_url``, or the ``database_url`` override; all stopped on exit."""
    nodes: list[HeraldServer] = []

    async def start(name: str = "node-a", **overrides: Any) -> HeraldServer:
        url = overrides.pop("database_url", database_url)
        server = HeraldServer(make_config(node=name, **overrides), url)
        await server.start()
        if not nodes:
            await relay_settled(server)
        nodes.append(server)
        return server

    try:
        yield start
    finally:
        for server in nodes:
            await server.stop()
        # A step of stop() that hangs would hang `herald serve` on SIGTERM: the log says
        # what each task was doing.
        assert [server.stuck for server in nodes if server.stuck] == []


@pytest.fixture
async def make_node(database_url: str) -> AsyncIterator[NodeFactory]:
    """Nodes on the session's shared database (tests use unique users)."""
    async with node_factory(database_url) as start:
        yield start


@pytest.fixture
async def fresh(make_database: Callable[[], str]) -> AsyncIterator[dict[str, Any]]:
    """A migrated database of its own (for tests that touch every user's rows or the
    relay's lease), a SQL connection to it and a node factory for it."""
    url = make_database()
    await asyncio.to_thread(schema.upgrade, url)  # alembic runs its own event loop
    conn = await db.connect(url, "herald-test-fresh")
    try:
        async with node_factory(url) as start:
            yield {"url": url, "sql": conn, "node": start}
    finally:
        await conn.close()


async def listen(url: str) -> tuple[asyncpg.Connection, "asyncio.Queue[str]"]:
    """A LISTEN connection on Herald's channel and the queue of its payloads."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    conn = await db.connect(url, "herald-test-listen")
    await listen_everywhere(conn, "herald", lambda *args: queue.put_nowait(args[-1]))
    return conn, queue


@pytest.fixture
async def sql(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain database connection, as a backend writing notifications would have."""
    conn = await db.connect(database_url, "herald-test-sql")
    yield conn
    await conn.close()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Awaitable[WsClient]]]:
    """Open WebSocket clients; every one is closed at teardown."""
    opened: list[WsClient] = []

    async def connect(port: int, **kwargs: Any) -> WsClient:
        client = await WsClient.connect(port, **kwargs)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


async def insert(conn: asyncpg.Connection, user: str, title: str, **fields: Any) -> Any:
    """INSERT one notification as plain SQL; returns the (id, seq) record."""
    return await conn.fetchrow(
        "INSERT INTO herald.notifications (user_id, title, body, data, link) "
        "VALUES ($1, $2, $3, coalesce($4::jsonb, '{}'), $5) RETURNING id, seq",
        user, title, fields.get("body"), fields.get("data"), fields.get("link"),
    )
