"""Hostile and broken clients, forged bus messages, retried publishes, database trouble:
each defence with a test that fails without it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import asyncpg
import pytest
from tornado.httpclient import HTTPClientError

from app import auth
from herald_dev.rawws import stalled_client
from tests.conftest import API_KEY, SECRET, insert, token_for
from tests.helpers import WsClient, call, metric, wait_for
from tests.proxy import PgProxy

# --- idempotent publish -------------------------------------------------------------


async def test_retried_publish_with_a_key_creates_one_notification(make_node, sql, user) -> None:
    node = await make_node()
    body = {"user_id": user, "title": "Order #7 shipped"}
    headers = {"Idempotency-Key": "order-7-shipped"}
    status1, first = await call(node.port, "POST", "/api/notifications", body, API_KEY,
                                headers=headers)
    status2, again = await call(node.port, "POST", "/api/notifications", body, API_KEY,
                                headers=headers)
    assert (status1, status2) == (201, 200)
    assert again["notifications"][0]["id"] == first["notifications"][0]["id"]
    assert again["notifications"][0]["duplicate"] is True
    assert first["notifications"][0]["duplicate"] is False
    status, body3 = await call(node.port, "POST", "/api/notifications",
                               {"user_id": user, "title": "next"}, API_KEY)
    assert body3["notifications"][0]["seq"] == 2  # the retry left no gap
    assert await sql.fetchval("SELECT count(*) FROM herald.notifications WHERE user_id = $1",
                              user) == 2


async def test_concurrent_retries_and_keys_in_lists(make_node, sql, user) -> None:
    node = await make_node()
    results = await asyncio.gather(*(
        call(node.port, "POST", "/api/notifications",
             [{"user_id": user, "title": "once", "idempotency_key": "k1"},
              {"user_id": user, "title": "plain"}], API_KEY) for _ in range(10)))
    ids = {r[1]["notifications"][0]["id"] for r in results}
    assert len(ids) == 1
    rows = await sql.fetch("SELECT seq, title FROM herald.notifications WHERE user_id = $1 "
                           "ORDER BY seq", user)
    assert [r["title"] for r in rows].count("once") == 1
    assert [r["seq"] for r in rows] == list(range(1, 12))  # 1 keyed + 10 plain, no gaps
    # the same key twice in one request: one row, the second item is the duplicate
    status, body = await call(node.port, "POST", "/api/notifications", [
        {"user_id": user, "title": "a", "idempotency_key": "k2"},
        {"user_id": user, "title": "b", "idempotency_key": "k2"}], API_KEY)
    first, second = body["notifications"]
    assert first["id"] == second["id"] and [first["duplicate"], second["duplicate"]] == [
        False, True]
    # keys are per user: another user may use the same key
    status, body = await call(node.port, "POST", "/api/notifications",
                              {"user_id": user + "-2", "title": "x", "idempotency_key": "k1"},
                              API_KEY)
    assert status == 201 and body["notifications"][0]["duplicate"] is False


async def test_sql_insert_with_a_used_key_is_skipped(sql, user) -> None:
    await sql.execute("INSERT INTO herald.notifications (user_id, title, idempotency_key) "
                      "VALUES ($1, 'x', 'k')", user)
    status = await sql.execute("INSERT INTO herald.notifications (user_id, title, "
                               "idempotency_key) VALUES ($1, 'x again', 'k')", user)
    assert status == "INSERT 0 0"
    row = await insert(sql, user, "unkeyed")
    assert row["seq"] == 2


# --- tokens -------------------------------------------------------------------------


async def test_audience_and_issuer_are_enforced_when_configured(make_node, clients, user) -> None:
    node = await make_node(jwt_audience="herald", jwt_issuer="shop")
    good = auth.mint_token(SECRET, user, audience="herald", issuer="shop")
    for bad in (token_for(user),
                auth.mint_token(SECRET, user, audience="other", issuer="shop"),
                auth.mint_token(SECRET, user, audience="herald", issuer="evil")):
        client = await clients(node.port)
        await client.send({"type": "hello", "token": bad})
        code, _ = await client.closed()
        assert code == 4401
    ok = await clients(node.port)
    assert (await ok.hello(good))["user"] == user
    status, _ = await call(node.port, "GET", "/api/notifications", token=good)
    assert status == 200
    status, _ = await call(node.port, "GET", "/api/notifications", token=token_for(user))
    assert status == 401


# --- origins ------------------------------------------------------------------------


@pytest.mark.parametrize("origin", [
    "https://evil.example", "null", "https://shop.example.evil.example",
    "https://shop.example:8443", "http://shop.example", "https://xshop.example",
])
async def test_cross_site_websocket_hijacking_is_refused(make_node, origin) -> None:
    node = await make_node(allowed_origins=("https://shop.example",))
    cookie = f"herald_token={token_for('victim')}"
    with pytest.raises(HTTPClientError) as err:
        await WsClient.connect(node.port, headers={"Origin": origin, "Cookie": cookie})
    assert err.value.code == 403
    assert await metric(node.port, 'herald_refused_total{reason="origin"}') >= 1


# --- connection limits --------------------------------------------------------------


async def test_connections_per_user_are_limited(make_node, clients, user) -> None:
    node = await make_node(max_connections_per_user=2)
    for _ in range(2):
        await (await clients(node.port)).hello(token_for(user))
    third = await clients(node.port)
    await third.send({"type": "hello", "token": token_for(user)})
    code, frames = await third.closed()
    assert code == 4409 and frames[0]["code"] == "too_many_connections"
    other = await clients(node.port)  # other users are unaffected
    await other.hello(token_for(user + "-other"))


async def test_connections_per_node_are_limited(make_node, clients, user) -> None:
    node = await make_node(max_connections=3)
    for i in range(3):
        await (await clients(node.port)).hello(token_for(f"{user}-{i}"))
    fourth = await clients(node.port)
    code, frames = await fourth.closed()
    assert code == 4503 and frames[0]["code"] == "node_full"
    assert await metric(node.port, 'herald_refused_total{reason="node_full"}') == 1


# --- slow consumers -----------------------------------------------------------------


async def test_a_client_that_stops_reading_is_cut_and_others_are_served(
    make_node, clients, sql, user
) -> None:
    node = await make_node(max_pending_bytes=256 * 1024, slow_consumer_timeout=1.0)
    stalled = await asyncio.to_thread(stalled_client, node.port, token_for(user + "-slow"))
    try:
        reader = await clients(node.port)
        await reader.hello(token_for(user))
        await reader.sync()
        body = "x" * 9000
        for _ in range(20):
            await sql.execute(
                "INSERT INTO herald.notifications (user_id, title, body) "
                "SELECT u, 'n', $2 FROM unnest(ARRAY[$1 || '-slow', $1]) u, "
                "generate_series(1, 50)", user, body)
        frames = await reader.notifications(1000, timeout=60)
        assert [f["seq"] for f in frames] == list(range(1, 1001))
        await wait_for(lambda: node.hub.clients(user + "-slow") == [], timeout=10)
        assert await metric(node.port, 'herald_refused_total{reason="slow_consumer"}') == 1
    finally:
        stalled.close()


async def test_a_big_replay_pauses_instead_of_cutting_a_healthy_client(
    make_node, clients, sql, user
) -> None:
    """600 rows of 9 KB (5 MB) are far over the 256 KB buffer limit: delivery pauses
    while the buffer drains and resumes from the cursor; the client gets all of it."""
    node = await make_node(max_pending_bytes=256 * 1024, slow_consumer_timeout=5.0)
    await sql.execute("INSERT INTO herald.notifications (user_id, title, body) "
                      "SELECT $1, 'n' || g, repeat('x', 9000) FROM generate_series(1, 600) g",
                      user)
    client = await clients(node.port)
    await client.hello(token_for(user))
    frames = await client.notifications(600, timeout=60)
    assert [f["seq"] for f in frames] == list(range(1, 601))
    assert await metric(node.port, 'herald_refused_total{reason="slow_consumer"}') == 0


# --- the bus is untrusted -----------------------------------------------------------


async def test_forged_notifies_inject_nothing_and_crash_nothing(
    make_node, clients, sql, user
) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.sync()
    unread = (await insert(sql, user, "real, unread"))["id"]
    (real,) = await client.notifications(1)
    other = (await insert(sql, user + "-other", "someone else's"))["id"]
    forged = [
        "not json", "[]", '{"k": "new"}', '{"k": "new", "u": []}',
        json.dumps({"k": "new", "u": {user: 99}, "title": "FORGED"}),
        json.dumps({"k": "new", "u": {user: "1; DROP TABLE x"}}),
        json.dumps({"k": "new", "u": {"": 1}}),
        json.dumps({"k": "read", "u": user, "ids": [unread, other]}),
        json.dumps({"k": "read", "u": user, "ids": ["x"]}),
        json.dumps({"k": "nuke"}), "x" * 7000,
    ]
    for payload in forged:
        await sql.execute("SELECT pg_notify('herald', $1)", payload)
    await client.expect_silence(0.7)  # no fake notification, no fake read frame
    assert await metric(node.port, 'herald_refused_total{reason="bus_payload"}') >= 7
    await insert(sql, user, "still works")
    (after,) = await client.notifications(1)
    assert after["seq"] == real["seq"] + 1 and after["title"] == "still works"


# --- database pressure and outages --------------------------------------------------


async def test_notify_queue_usage_is_exported_and_degrades_readiness(
    make_node, database_url, user
) -> None:
    node = await make_node(notify_queue_max=1e-7, bus_ping_interval=0.2)
    assert (await call(node.port, "GET", "/readyz"))[0] == 200
    laggard = await asyncpg.connect(database_url)
    sender = await asyncpg.connect(database_url)
    try:
        await laggard.execute("LISTEN herald_lag_test")
        tx = laggard.transaction()  # a listener inside a transaction consumes nothing
        await tx.start()
        await laggard.execute("SELECT 1")
        for _ in range(20):
            await sender.execute("SELECT pg_notify('herald_lag_test', $1)", "p" * 7000)
        await wait_for(lambda: node.bus.queue_usage > 1e-7, timeout=5)
        status, body = await call(node.port, "GET", "/readyz")
        assert status == 503 and body["notify_queue_usage"] > 0
        assert await metric(node.port, "herald_notify_queue_usage") > 0
        await tx.rollback()
        await wait_for(lambda: node.bus.queue_usage == 0, timeout=5)
        assert (await call(node.port, "GET", "/readyz"))[0] == 200
    finally:
        await laggard.close()
        await sender.close()


async def test_database_unreachable_for_a_while(make_node, clients, sql, database_url,
                                                user) -> None:
    """The node loses every database connection (pool and LISTEN) for two seconds:
    connected clients stay, new ones get a clear 'unavailable', publishing (the API and
    the dev send form alike) answers 503, /readyz says 503, and everything committed
    meanwhile arrives once the database is back."""
    proxy = PgProxy(database_url)
    await proxy.start()
    try:
        node = await make_node(database_url=proxy.url, bus_ping_interval=0.3, dev=True)
        client = await clients(node.port)
        await client.hello(token_for(user))
        await client.sync()
        proxy.refuse_new = True
        proxy.cut_all()
        await wait_for(lambda: not node.bus.connected, timeout=5)
        assert (await call(node.port, "GET", "/readyz"))[0] == 503
        for i in range(5):
            await insert(sql, user, f"during outage {i}")
        newcomer = await clients(node.port)
        await newcomer.send({"type": "hello", "token": token_for(user + "-new")})
        code, frames = await newcomer.closed(timeout=30)
        assert code == 1011 and frames[-1]["code"] == "unavailable"
        for path, key in (("/api/notifications", API_KEY), ("/dev/send", token_for(user))):
            code, body = await call(node.port, "POST", path,
                                    {"user_id": user, "title": "not now"}, token=key)
            assert (code, body["error"]["code"]) == (503, "unavailable"), (path, body)
        proxy.refuse_new = False
        frames = await client.notifications(5, timeout=20)
        assert [f["title"] for f in frames] == [f"during outage {i}" for i in range(5)]
        await wait_for(lambda: node.bus.connected, timeout=10)
        assert (await call(node.port, "GET", "/readyz"))[0] == 200
    finally:
        await proxy.stop()


# --- observability ------------------------------------------------------------------


def test_logs_are_one_json_object_per_line_without_secrets(database_url, user) -> None:
    from tests.test_cli import clean_env, free_port, wait_http

    port = free_port()
    token = token_for(user)
    env = clean_env(HERALD_DATABASE_URL=database_url, HERALD_SECRET=SECRET,
                    HERALD_PORT=str(port), HERALD_NODE="log-node")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        wait_http(port)

        async def session() -> None:
            client = await WsClient.connect(port)
            await client.hello(token)
            await client.send({"type": "ack", "seq": 0})
            client.close()
            bad = await WsClient.connect(port)
            await bad.send({"type": "hello", "token": "forged.token.value"})
            await bad.closed()

        asyncio.run(session())
        time.sleep(0.5)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=15)
    records = [json.loads(line) for line in stderr.splitlines()
               if line.startswith("{")]
    assert records and all(r["node"] == "log-node" for r in records)
    non_json = [line for line in stderr.splitlines() if line and not line.startswith("{")]
    assert all(line.startswith("herald:") for line in non_json), non_json
    starts = [r for r in records if r["msg"] == "session start"]
    ends = [r for r in records if r["msg"] == "session end"]
    assert starts[0]["user"] == user and starts[0]["conn"] == ends[0]["conn"]
    refused = [r for r in records if r["msg"] == "session refused"]
    assert refused and refused[0]["code"] == 4401 and refused[0]["reason"] == "unauthorized"
    assert token not in stderr and "forged.token.value" not in stderr
