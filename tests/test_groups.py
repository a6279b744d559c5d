"""Collapse keys (revision 0012, docs/protocol.md): ``group_key`` on every frame and
history row, published from SQL, HTTP and ``herald send``; a group read from the
WebSocket and HTTP marks exactly that group's unread rows of that user read, and the
push reaches every socket on every node. Bad input of every kind changes nothing. Two
real nodes, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest

from app import cli
from tests.conftest import API_KEY, token_for
from tests.helpers import WsClient, call


async def add(sql: asyncpg.Connection, user: str, title: str, group_key: str | None = None,
              **fields: Any) -> Any:
    return await sql.fetchrow(
        "INSERT INTO herald.notifications (user_id, title, group_key, category, expires_at) "
        "VALUES ($1, $2, $3, $4, $5) RETURNING id, seq", user, title, group_key,
        fields.get("category"), fields.get("expires_at"))


async def unread_ids(sql: asyncpg.Connection, user: str) -> list[int]:
    return [r["id"] for r in await sql.fetch(
        "SELECT id FROM herald.notifications WHERE user_id = $1 AND read_at IS NULL "
        "ORDER BY id", user)]


def key_order(frame: dict[str, Any]) -> list[str]:
    keys = list(frame)
    return keys[keys.index("category"):keys.index("category") + 2]


async def test_group_key_travels_in_frames_and_history(make_node, clients, sql, user) -> None:
    """Inline frame, fetched frame (replay) and history item alike: group_key right after
    category, null when absent; HTTP and SQL publish it; history lists one group."""
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    await add(sql, user, "inline", "pr-12", category="reviews")
    status, _ = await call(node.port, "POST", "/api/notifications",
                           [{"user_id": user, "title": "over http", "group_key": "pr-12"},
                            {"user_id": user, "title": "no group"}],
                           headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 201
    live = await client.notifications(3)
    assert [(f["title"], f["group_key"]) for f in live] == [
        ("inline", "pr-12"), ("over http", "pr-12"), ("no group", None)]
    assert all(key_order(f) == ["category", "group_key"] for f in live)

    replayed = await clients(node.port)
    await replayed.hello(token_for(user), last_seq=0)
    again = await replayed.notifications(3)
    assert [f["group_key"] for f in again] == ["pr-12", "pr-12", None]
    assert all(key_order(f) == ["category", "group_key"] for f in again)

    status, page = await call(node.port, "GET", "/api/notifications", token=token_for(user))
    assert status == 200
    assert [i["group_key"] for i in page["notifications"]] == [None, "pr-12", "pr-12"]
    assert all(key_order(i) == ["category", "group_key"] for i in page["notifications"])
    status, page = await call(node.port, "GET", "/api/notifications?group_key=pr-12",
                              token=token_for(user))
    assert status == 200
    assert [i["title"] for i in page["notifications"]] == ["over http", "inline"]


async def test_herald_send_takes_a_group_key(database_url, sql, user, capsys) -> None:
    code = await asyncio.to_thread(
        cli.main, ["send", user, "from the cli", "--group-key", "pr-7",
                   "--database-url", database_url])
    assert code == 0
    row = json.loads(capsys.readouterr().out)
    assert await sql.fetchval("SELECT group_key FROM herald.notifications WHERE id = $1",
                              row["id"]) == "pr-7"
    code = await asyncio.to_thread(
        cli.main, ["send", user, "too long", "--group-key", "k" * 201,
                   "--database-url", database_url])
    assert code != 0 and "group_key must be" in capsys.readouterr().err
    assert await sql.fetchval("SELECT count(*) FROM herald.notifications "
                              "WHERE user_id = $1", user) == 1


async def test_bad_group_keys_are_refused_and_push_nothing(make_node, clients, sql, user) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    for bad in ("", "k" * 201):
        with pytest.raises(asyncpg.CheckViolationError) as err:
            await add(sql, user, "bad", bad)
        assert err.value.constraint_name == "ck_notifications_group_key_length"
    for bad in ("", "k" * 201, 12, ["a"], {"k": 1}):
        status, body = await call(node.port, "POST", "/api/notifications",
                                  {"user_id": user, "title": "bad", "group_key": bad},
                                  headers={"Authorization": f"Bearer {API_KEY}"})
        assert status == 400 and "group_key" in body["error"]["message"], (bad, body)
    status, body = await call(node.port, "GET", "/api/notifications?group_key=" + "k" * 201,
                              token=token_for(user))
    assert status == 400 and body["error"]["code"] == "invalid_request"
    ok = await add(sql, user, "exactly 200", "k" * 200)
    (frame,) = await client.notifications(1)  # the first frame is the good row: none before
    assert (frame["seq"], frame["group_key"]) == (ok["seq"], "k" * 200)
    assert await sql.fetchval("SELECT count(*) FROM herald.notifications "
                              "WHERE user_id = $1", user) == 1


async def group_fixture(sql: asyncpg.Connection, user: str, other: str) -> dict[str, Any]:
    """pr-12: two unread (one archived), one read, one expired; pr-13: one unread; one
    without a group; another user's pr-12."""
    rows = {
        "unread": await add(sql, user, "a", "pr-12"),
        "archived": await add(sql, user, "b", "pr-12"),
        "read": await add(sql, user, "c", "pr-12"),
        "expired": await add(sql, user, "d", "pr-12"),
        "other group": await add(sql, user, "e", "pr-13"),
        "no group": await add(sql, user, "f"),
        "other user": await add(sql, other, "g", "pr-12"),
    }
    await sql.execute("UPDATE herald.notifications SET archived_at = now() WHERE id = $1",
                      rows["archived"]["id"])
    await sql.execute("UPDATE herald.notifications SET read_at = now() WHERE id = $1",
                      rows["read"]["id"])
    await sql.execute("UPDATE herald.notifications SET expires_at = now() - interval '1 s' "
                      "WHERE id = $1", rows["expired"]["id"])
    return {name: row["id"] for name, row in rows.items()}


async def two_sockets(make_node, clients, user: str) -> tuple[int, list[WsClient]]:
    """A socket of ``user`` on each of two nodes; the first node's port."""
    node_a, node_b = await make_node("node-a"), await make_node("node-b")
    sockets = []
    for node in (node_a, node_b):
        client = await clients(node.port)
        await client.hello(token_for(user))
        await client.sync()
        sockets.append(client)
    return node_a.port, sockets


async def next_of(client: WsClient, *kinds: str) -> Any:
    """The next frame of each of ``kinds``, skipping others: the frame when one kind is
    named, else ``{kind: frame}`` (they may come in any order)."""
    got: dict[str, Any] = {}
    while set(got) != set(kinds):
        frame = await client.recv()
        assert frame is not None
        if frame["type"] in kinds:
            assert frame["type"] not in got, frame
            got[frame["type"]] = frame
    return got[kinds[0]] if len(kinds) == 1 else got


@pytest.mark.parametrize("via", ["ws", "http"])
async def test_a_group_read_marks_exactly_that_group_and_reaches_every_socket(
    make_node, clients, sql, user, via
) -> None:
    other = user + "-other"
    ids = await group_fixture(sql, user, other)
    port, (a, b) = await two_sockets(make_node, clients, user)
    for client in (a, b):
        while len([f for f in client.frames if f["type"] == "notification"]) < 4:
            await client.recv()  # replay: unread, archived, read, other group, no group
    if via == "ws":
        await a.send({"type": "read", "group_key": "pr-12", "ref": 7})
    else:
        status, body = await call(port, "POST", "/api/notifications/read",
                                  {"group_key": "pr-12"}, token=token_for(user))
        assert status == 200 and body == {"updated": 2, "unread": 2}, body
    pushed = [await next_of(b, "read")]
    if via == "ws":
        got = await next_of(a, "done", "read")  # in either order
        assert got["done"] == {"type": "done", "ref": 7, "changed": 2}
        pushed.append(got["read"])
    else:
        pushed.append(await next_of(a, "read"))
    for frame in pushed:
        assert frame == {"type": "read", "ids": sorted([ids["unread"], ids["archived"]]),
                         "unread": 2}
    assert await unread_ids(sql, user) == sorted(
        [ids["expired"], ids["other group"], ids["no group"]])
    assert await unread_ids(sql, other) == [ids["other user"]]
    # Again: nothing left to read in the group, nothing pushed.
    await a.send({"type": "read", "group_key": "pr-12", "ref": 8})
    assert await next_of(a, "done") == {"type": "done", "ref": 8, "changed": 0}
    await b.expect_silence(0.5)


BAD_WS_READS = [
    {"type": "read", "group_key": "pr-12", "ids": [1]},
    {"type": "read", "group_key": "pr-12", "all": True},
    {"type": "read", "group_key": ""},
    {"type": "read", "group_key": "k" * 201},
    {"type": "read", "group_key": 12},
    {"type": "read", "group_key": None},
    {"type": "read", "group_key": "pr-12", "extra": 1},
    {"type": "read", "group_key": "pr-12", "ref": -1},
    {"type": "unread", "group_key": "pr-12"},
    {"type": "archive", "group_key": "pr-12"},
    {"type": "unarchive", "group_key": "pr-12"},
]


@pytest.mark.parametrize("frame", BAD_WS_READS, ids=[json.dumps(f)[:60] for f in BAD_WS_READS])
async def test_bad_group_reads_over_the_socket_are_malformed_and_change_nothing(
    make_node, clients, sql, user, frame
) -> None:
    await add(sql, user, "one", "pr-12")
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.sync()
    await client.send(frame)
    code, seen = await client.closed()
    assert code == 4400 and seen[-1]["code"] == "malformed", seen
    assert len(await unread_ids(sql, user)) == 1


BAD_HTTP_READS: list[tuple[str, Any]] = [
    ("read", {"group_key": "pr-12", "ids": [1]}),
    ("read", {"group_key": "pr-12", "all": True}),
    ("read", {"group_key": ""}),
    ("read", {"group_key": "k" * 201}),
    ("read", {"group_key": 12}),
    ("read", {"group_key": "pr-12", "ref": 1}),
    ("read", ["pr-12"]),
    ("unread", {"group_key": "pr-12"}),
    ("archive", {"group_key": "pr-12"}),
    ("unarchive", {"group_key": "pr-12"}),
]


async def test_bad_group_reads_over_http_are_400_and_change_nothing(
    make_node, sql, user
) -> None:
    await add(sql, user, "one", "pr-12")
    node = await make_node()
    for kind, body in BAD_HTTP_READS:
        status, answer = await call(node.port, "POST", f"/api/notifications/{kind}", body,
                                    token=token_for(user))
        assert status == 400 and answer["error"]["code"] == "invalid_request", (kind, body)
    assert len(await unread_ids(sql, user)) == 1
    status, answer = await call(node.port, "POST", "/api/notifications/read",
                                {"group_key": "pr-12"})
    assert status == 401
    assert len(await unread_ids(sql, user)) == 1
