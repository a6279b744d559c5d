"""Cheap requests stay cheap, and small holes stay shut (issue 18), on real nodes and
sockets: acks with a budget and a shape, sockets waiting for hello capped apart from
sessions, per-user HTTP limits, bounded unread counts, a history index by category, one
row that cannot break a history, links, tokens, origins and proxies."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import jwt
import pytest
from tornado.httpclient import HTTPClientError

from app import auth, models
from app.proxies import parse_networks
from app.store import UNREAD_MAX
from tests.conftest import API_KEY, SECRET, insert, token_for
from tests.helpers import WsClient, call, metric, wait_for

# --- acks ---------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [
    {"type": "ack", "seq": 1, "junk": "x" * 60_000},
    {"type": "ack", "seq": 1, "extra": True},
    '{"type": "ack", "seq": 1' + " " * 300 + "}",
])
async def test_acks_with_unknown_keys_or_padding_are_refused(
    make_node, clients, user, frame: Any
) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.send(frame)
    code, seen = await client.closed()
    assert code == 4400 and seen[-1]["code"] == "malformed", (code, seen)


async def test_acks_that_acknowledge_nothing_new_have_a_budget(
    make_node, clients, sql, user
) -> None:
    """Every ack of a newly sent row is taken, however fast; repeats of an old one spend
    a small bucket, and a flood of them closes the socket (4429) instead of costing the
    node a core."""
    node = await make_node(ack_rate=1, ack_burst=20)
    client = await clients(node.port)
    await client.hello(token_for(user))
    await sql.execute("INSERT INTO herald.notifications (user_id, title) "
                      "SELECT $1, 'n' || g FROM generate_series(1, 300) g", user)
    rows = await client.notifications(300)
    for row in rows:  # 300 acks at once, each of a new row: all fine
        await client.send({"type": "ack", "seq": row["seq"]})
    await client.sync()
    for _ in range(19):
        await client.send({"type": "ack", "seq": 300})
    await client.sync()  # within the burst: still open
    for _ in range(5):
        await client.send({"type": "ack", "seq": 300})
    code, seen = await client.closed()
    assert code == 4429 and seen[-1]["code"] == "rate_limited", (code, seen)
    await wait_for(lambda: sql.fetchval(
        "SELECT count(*) = 300 FROM herald.notifications WHERE user_id = $1 "
        "AND delivered_at IS NOT NULL", user))


# --- sockets waiting for hello ---------------------------------------------------------


async def test_idle_sockets_never_lock_out_a_real_user(make_node, clients, user) -> None:
    """Five sockets that never say hello, on a node with room for two sessions: both
    sessions still get in; the third is refused (4503)."""
    node = await make_node(max_connections=2)
    idle = [await clients(node.port) for _ in range(5)]
    first, second = await clients(node.port), await clients(node.port)
    await first.hello(token_for(user))
    await second.hello(token_for(user + "-2"))
    third = await clients(node.port)
    await third.send({"type": "hello", "token": token_for(user + "-3")})
    code, seen = await third.closed()
    assert code == 4503 and seen[-1]["code"] == "node_full"
    assert len(idle) == 5


async def test_beyond_the_waiting_cap_of_an_address_its_oldest_idle_socket_goes(
    make_node, clients, user
) -> None:
    node = await make_node(max_waiting_sockets_per_ip=3)
    idle = [await clients(node.port) for _ in range(3)]
    newest = await clients(node.port)
    code, seen = await idle[0].closed()
    assert code == 4408 and seen[-1]["code"] == "hello_timeout"
    await newest.hello(token_for(user))  # the newcomer is served
    for socket in idle[1:]:
        await socket.send({"type": "hello", "token": token_for(user)})
        assert (await socket.recv())["type"] == "welcome"


async def test_the_waiting_cap_counts_the_client_behind_a_trusted_proxy_only(
    make_node, clients, user
) -> None:
    """Behind a trusted proxy each client address has its own cap; from an untrusted
    peer the X-Real-IP header is ignored, so it cannot spread its sockets over made-up
    addresses."""
    def forged(n: int) -> dict[str, str]:
        return {"X-Real-IP": f"203.0.113.{n}", "X-Forwarded-For": f"203.0.113.{n}"}

    trusted = await make_node("trusting", max_waiting_sockets_per_ip=1)
    kept = [await clients(trusted.port, headers=forged(n)) for n in range(3)]
    for socket in kept:
        await socket.hello(token_for(user))  # none was evicted
    untrusted = await make_node("untrusting", max_waiting_sockets_per_ip=1,
                                trusted_proxies=parse_networks("10.0.0.0/8"))
    first = await clients(untrusted.port, headers=forged(1))
    await clients(untrusted.port, headers=forged(2))
    code, _ = await first.closed()
    assert code == 4408


# --- HTTP ---------------------------------------------------------------------------------


async def test_history_and_changes_are_rate_limited_per_user(make_node, user) -> None:
    node = await make_node(http_rate=0.5, http_burst=3)
    token, other = token_for(user), token_for(user + "-other")
    for _ in range(3):
        status, _ = await call(node.port, "GET", "/api/notifications", token=token)
        assert status == 200
    status, body = await call(node.port, "POST", "/api/notifications/read",
                              {"ids": [1]}, token=token)
    assert status == 429 and body["error"]["code"] == "rate_limited"
    assert (await call(node.port, "GET", "/api/notifications", token=other))[0] == 200
    assert await metric(node.port, 'herald_refused_total{reason="rate_limited"}') >= 1


async def test_rate_limited_answers_say_when_to_retry(make_node, user) -> None:
    from tornado.httpclient import AsyncHTTPClient

    node = await make_node(http_rate=0.5, http_burst=1)
    url = f"http://127.0.0.1:{node.port}/api/notifications"
    headers = {"Authorization": f"Bearer {token_for(user)}"}
    await AsyncHTTPClient().fetch(url, headers=headers)
    response = await AsyncHTTPClient().fetch(url, headers=headers, raise_error=False)
    assert response.code == 429 and response.headers["Retry-After"] == "2"


async def test_the_unread_count_stops_at_its_bound(make_node, clients, sql, user) -> None:
    node = await make_node()
    await sql.execute("INSERT INTO herald.notifications (user_id, title) "
                      "SELECT $1, 'n' FROM generate_series(1, $2) g", user, UNREAD_MAX + 5)
    client = await clients(node.port)
    welcome = await client.hello(token_for(user), last_seq=UNREAD_MAX + 5)
    assert welcome["unread"] == UNREAD_MAX
    _, page = await call(node.port, "GET", "/api/notifications?limit=1", token=token_for(user))
    assert page["unread"] == UNREAD_MAX and page["last_seq"] == UNREAD_MAX + 5


async def test_history_by_category_reads_through_its_index(sql, user) -> None:
    """The planner walks ix_notifications_user_id_category_seq for the store's history
    query with a category, instead of every row of the user."""
    from app.store import HISTORY_ITEM, LIVE

    await sql.execute("INSERT INTO herald.notifications (user_id, title, category) "
                      "SELECT $1, 'n', CASE WHEN g % 500 = 0 THEN 'rare' END "
                      "FROM generate_series(1, 5000) g", user)
    await sql.execute("ANALYZE herald.notifications")
    plan = await sql.fetchval(
        f"EXPLAIN (FORMAT JSON) SELECT {HISTORY_ITEM} FROM herald.notifications n "
        "WHERE user_id = $1 AND ($2::bigint IS NULL OR seq < $2) "
        "AND (NOT $3 OR read_at IS NULL) AND (archived_at IS NOT NULL) = $4 "
        f"AND ($5::text IS NULL OR category = $5) AND {LIVE} ORDER BY seq DESC LIMIT 50",
        user, None, False, False, "rare")
    assert "ix_notifications_user_id_category_seq" in plan, plan


async def test_a_row_nested_5000_deep_does_not_break_its_users_history(
    make_node, clients, sql, user
) -> None:
    node = await make_node()
    deep = '{"a": ' + "[" * 5000 + "]" * 5000 + "}"
    await sql.execute("INSERT INTO herald.notifications (user_id, title, data) "
                      "VALUES ($1, 'deep', $2::text::jsonb)", user, deep)
    await insert(sql, user, "after it")
    status, text = await call(node.port, "GET", "/api/notifications", token=token_for(user))
    assert status == 200, text
    assert isinstance(text, str) and '"deep"' in text and "[" * 5000 in text
    client = await clients(node.port)
    await client.hello(token_for(user), last_seq=1)
    (after,) = await client.notifications(1)
    assert after["title"] == "after it"


# --- links, tokens, origins ----------------------------------------------------------------

BAD_LINKS = ["/\u00a0/evil.example", "/\x1f/evil.example", "/..//evil.example",
             "/%2e%2e//evil.example", "/./evil", "/a\u2028b", "https://x.example/\u3000",
             "/\ufeff/evil.example"]


@pytest.mark.parametrize("link", BAD_LINKS)
async def test_links_with_hidden_characters_or_dot_segments_are_refused(
    make_node, sql, link: str
) -> None:
    assert not models.is_link(link)
    with pytest.raises(asyncpg.CheckViolationError, match="link_url"):
        await sql.execute("INSERT INTO herald.notifications (user_id, title, link) "
                          "VALUES ('someone', 'x', $1)", link)
    node = await make_node()
    status, body = await call(node.port, "POST", "/api/notifications",
                              {"user_id": "someone", "title": "x", "link": link},
                              headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 400 and "link" in body["error"]["message"]


def _token(**claims: Any) -> str:
    return jwt.encode({"sub": "mallory", **claims}, SECRET, "HS256")


@pytest.mark.parametrize("claims", [
    {"exp": str(int(time.time()) + 60)},
    {"exp": 1e300},
    {"exp": int(time.time()) + 30 * 86400},
    {"exp": int(time.time()) + 60, "iat": "yesterday"},
    {"exp": True},
])
async def test_tokens_with_odd_or_far_expiries_are_refused(
    make_node, clients, claims: dict[str, Any]
) -> None:
    node = await make_node()
    token = _token(**claims)
    status, body = await call(node.port, "GET", "/api/notifications", token=token)
    assert status == 401, body
    client = await clients(node.port)
    await client.send({"type": "hello", "token": token})
    code, seen = await client.closed()
    assert code == 4401 and seen[-1]["code"] == "unauthorized"


async def test_the_token_lifetime_is_a_setting(make_node) -> None:
    node = await make_node(max_token_lifetime=60)
    token = _token(exp=int(time.time()) + 120)
    assert (await call(node.port, "GET", "/api/notifications", token=token))[0] == 401
    assert (await call(node.port, "GET", "/api/notifications",
                       token=_token(exp=int(time.time()) + 30)))[0] == 200
    with pytest.raises(ValueError, match="HERALD_MAX_TOKEN_LIFETIME"):
        auth.Tokens(SECRET, max_lifetime=60).mint("alice", ttl=61)


async def test_an_origin_with_the_wrong_scheme_is_refused(make_node, user) -> None:
    """An http node refuses https://its-host; behind a trusted proxy that says the client
    came over https, the other way round; an untrusted peer cannot say so."""
    cookie = f"herald_token={token_for(user)}"
    node = await make_node()
    host = f"127.0.0.1:{node.port}"

    async def opens(origin: str, **headers: str) -> bool:
        try:
            socket = await WsClient.connect(node.port, headers={
                "Origin": origin, "Cookie": cookie, **headers})
        except HTTPClientError as err:
            assert err.code == 403
            return False
        socket.close()
        return True

    assert await opens(f"http://{host}")
    assert not await opens(f"https://{host}")
    assert await opens(f"https://{host}", **{"X-Forwarded-Proto": "https"})
    assert not await opens(f"http://{host}", **{"X-Forwarded-Proto": "https"})
    untrusting = await make_node("untrusting", trusted_proxies=parse_networks("10.0.0.0/8"))
    node = untrusting
    host = f"127.0.0.1:{node.port}"
    assert not await opens(f"https://{host}", **{"X-Forwarded-Proto": "https"})



GOOD_LINKS = ["/orders/1", "/", "https://shop.example/a?b=..", "/a.b/..c", "http://x.example",
              "/über/straße", "HTTPS://SHOP.EXAMPLE/x"]


@pytest.mark.parametrize("link", BAD_LINKS + GOOD_LINKS + ["//evil.example", "/\\evil",
                                                          "javascript:alert(1)", "/a b"])
def test_the_published_link_pattern_is_the_tables(link: str) -> None:
    """docs/openapi.yaml's pattern (JSON Schema, no flags) says what app.models says."""
    import re
    from pathlib import Path

    import yaml

    spec = yaml.safe_load((Path(__file__).parent.parent / "docs" / "openapi.yaml").read_text())
    pattern = spec["components"]["schemas"]["NewNotification"]["properties"]["link"]["pattern"]
    assert bool(re.search(pattern, link)) == models.is_link(link) == (link in GOOD_LINKS)
