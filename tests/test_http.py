"""The HTTP API: publish, history, read, health, metrics; errors are JSON with 4xx."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import API_KEY, insert, token_for
from tests.helpers import call


async def count(sql, user: str) -> int:
    return await sql.fetchval(
        "SELECT count(*) FROM herald.notifications WHERE user_id LIKE $1 || '%'", user)


async def test_publish_one_object(make_node, sql, user) -> None:
    node = await make_node()
    code, body = await call(node.port, "POST", "/api/notifications", token=API_KEY, body={
        "user_id": user, "title": "Order #1001 shipped", "body": "On its way",
        "data": {"order_id": 1001}, "link": "/orders/1001"})
    assert code == 201
    (item,) = body["notifications"]
    assert item["seq"] == 1 and item["user_id"] == user and item["id"] > 0
    assert item["created_at"].endswith("Z")
    row = await sql.fetchrow("SELECT * FROM herald.notifications WHERE id = $1", item["id"])
    assert row["data"] == {"order_id": 1001} and row["link"] == "/orders/1001"


BAD_BODIES = [
    ("not json", b"{oops", "invalid_json"),
    ("empty list", b"[]", "invalid_request"),
    ("scalar", b"42", "invalid_request"),
    ("no title", None, "invalid_request"),
    ("no user", None, "invalid_request"),
    ("data is a list", None, "invalid_request"),
    ("javascript link", None, "invalid_request"),
    ("unknown field", None, "invalid_request"),
    ("title too long", None, "invalid_request"),
    ("one bad item in a list", None, "invalid_request"),
    ("too many", None, "too_many"),
]


def _bad_body(kind: str, user: str) -> Any:
    good = {"user_id": user, "title": "ok"}
    return {
        "no title": {"user_id": user},
        "no user": {"title": "x"},
        "data is a list": {**good, "data": [1]},
        "javascript link": {**good, "link": "javascript:alert(1)"},
        "unknown field": {**good, "priority": "high"},
        "title too long": {**good, "title": "t" * 1001},
        "one bad item in a list": [good, good, {"user_id": user, "title": 7}],
        "too many": [good] * 1001,
    }[kind]


@pytest.mark.parametrize("kind, raw, code", BAD_BODIES)
async def test_bad_publish_bodies_get_400_and_insert_nothing(
    make_node, sql, user, kind, raw, code
) -> None:
    node = await make_node()
    status, body = await call(node.port, "POST", "/api/notifications", token=API_KEY,
                              raw=raw if raw is not None else json.dumps(_bad_body(kind, user))
                              .encode())
    assert status == 400
    assert body["error"]["code"] == code and body["error"]["message"]
    assert await count(sql, user) == 0


async def test_publish_needs_the_api_key(make_node, sql, user) -> None:
    node = await make_node()
    for key in (None, "wrong-key", token_for(user)):
        status, body = await call(node.port, "POST", "/api/notifications", token=key,
                                  body={"user_id": user, "title": "x"})
        assert status == 401 and body["error"]["code"] == "unauthorized"
    assert await count(sql, user) == 0


async def test_a_list_is_one_transaction(make_node, sql, user) -> None:
    """A list whose last row violates a constraint the validator cannot see (it is over the
    data size limit only once stored) inserts none of the rows."""
    node = await make_node()
    # Compact JSON is 16,384 bytes (passes the API check); jsonb's text form adds a space
    # after the colon, 16,385 bytes, which the database's ck_notifications_data_size refuses.
    big = {"x": "y" * 16_376}
    status, body = await call(node.port, "POST", "/api/notifications", token=API_KEY, body=[
        {"user_id": user, "title": "a"}, {"user_id": user, "title": "b", "data": big}])
    if status == 201:
        pytest.fail("expected the oversized row to be rejected")
    assert status == 400 and body["error"]["code"] == "invalid_request"
    assert "data_size" in body["error"]["message"]
    assert await count(sql, user) == 0


async def test_history_newest_first_paged_by_seq(make_node, sql, user) -> None:
    node = await make_node()
    ids = [(await insert(sql, user, f"n{i}"))["id"] for i in range(1, 8)]
    await sql.execute("UPDATE herald.notifications SET read_at = now() WHERE id = ANY($1)",
                      ids[:3])
    token = token_for(user)
    status, body = await call(node.port, "GET", "/api/notifications?limit=3", token=token)
    assert status == 200 and body["unread"] == 4
    assert [n["seq"] for n in body["notifications"]] == [7, 6, 5]
    status, body = await call(node.port, "GET", "/api/notifications?limit=3&before_seq=5",
                              token=token)
    assert [n["seq"] for n in body["notifications"]] == [4, 3, 2]
    assert [n["read"] for n in body["notifications"]] == [False, True, True]
    status, body = await call(node.port, "GET", "/api/notifications?unread=true", token=token)
    assert [n["seq"] for n in body["notifications"]] == [7, 6, 5, 4]
    first = body["notifications"][0]
    assert set(first) >= {"id", "seq", "title", "body", "data", "link", "created_at", "read"}


@pytest.mark.parametrize("query", ["limit=abc", "limit=0", "before_seq=-3", "unread=maybe"])
async def test_history_bad_parameters(make_node, user, query) -> None:
    node = await make_node()
    status, body = await call(node.port, "GET", f"/api/notifications?{query}",
                              token=token_for(user))
    assert status == 400 and body["error"]["code"] == "invalid_request"


async def test_history_needs_a_user_token(make_node, user) -> None:
    node = await make_node()
    for token in (None, API_KEY, "x.y.z"):
        status, body = await call(node.port, "GET", "/api/notifications", token=token)
        assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_read_api_marks_only_own_rows(make_node, sql, user) -> None:
    node = await make_node()
    mine = [(await insert(sql, user, "mine"))["id"] for _ in range(3)]
    theirs = (await insert(sql, user + "-other", "theirs"))["id"]
    status, body = await call(node.port, "POST", "/api/notifications/read",
                              token=token_for(user), body={"ids": [mine[0], theirs]})
    assert status == 200 and body == {"updated": 1, "unread": 2}
    assert await sql.fetchval("SELECT read_at FROM herald.notifications WHERE id = $1",
                              theirs) is None
    status, body = await call(node.port, "POST", "/api/notifications/read",
                              token=token_for(user), body={"all": True})
    assert status == 200 and body == {"updated": 2, "unread": 0}
    for bad in ({}, {"ids": "x"}, {"all": "yes"}, [1, 2]):
        status, body = await call(node.port, "POST", "/api/notifications/read",
                                  token=token_for(user), body=bad)
        assert status == 400, bad


async def test_cookie_auth_from_a_foreign_origin_is_refused(make_node, user) -> None:
    node = await make_node()
    headers = {"Cookie": f"herald_token={token_for(user)}", "Origin": "https://evil.example"}
    status, body = await call(node.port, "POST", "/api/notifications/read",
                              body={"all": True}, headers=headers)
    assert status == 403 and body["error"]["code"] == "forbidden_origin"


async def test_health_ready_metrics(make_node, clients, sql, user) -> None:
    node = await make_node("node-m")
    assert await call(node.port, "GET", "/healthz") == (200, {"status": "ok",
                                                               "node": "node-m"})
    status, body = await call(node.port, "GET", "/readyz")
    assert status == 200 and body["database"] and body["listen"]
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.sync()
    await insert(sql, user, "counted")
    await client.notifications(1)
    status, text = await call(node.port, "GET", "/metrics")
    assert status == 200
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines()
                 if line and not line.startswith("#"))
    assert float(lines["herald_connections"]) == 1
    assert float(lines["herald_notifications_delivered_total"]) >= 1
    assert float(lines["herald_delivery_latency_seconds_count"]) >= 1
    assert "herald_bus_reconnects_total" in lines and "herald_notifications_replayed_total" in lines


async def test_unknown_path_is_a_json_404(make_node) -> None:
    node = await make_node()
    status, body = await call(node.port, "GET", "/api/nope")
    assert status == 404 and body["error"]["code"] == "not_found"
