"""Least privilege in the database (revision 0009), tried as an attacker holding exactly
the grants README gives a backend (membership in ``herald_writer``) on a database
migrated by a superuser: no path leads to the owner's rights, to the private channel's
key or MAC key, to a NOTIFY on the private channel, or to breaking other users'
publishing. And the nodes' own role (``herald_node``) is enough to run a node."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from app import db, schema
from tests.conftest import API_KEY, insert, token_for
from tests.helpers import call, listen_everywhere, metric, private_channel, wait_for


def _as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rsplit('@', 1)[-1]}"))


@pytest.fixture
async def roles(fresh: dict[str, Any]) -> AsyncIterator[Any]:
    """``make(group)``: a new LOGIN role, member of ``group`` only, and its connection
    URL; every role is dropped at the end (roles belong to the whole server)."""
    sql = fresh["sql"]
    made: list[str] = []

    async def make(group: str) -> tuple[str, str]:
        name = f"herald_t_{uuid.uuid4().hex[:8]}"
        await sql.execute(f"CREATE ROLE {name} LOGIN IN ROLE {group}")
        made.append(name)
        return name, _as_role(fresh["url"], name)

    yield make
    for name in made:
        await sql.execute(f"DROP OWNED BY {name}")
        await sql.execute(f"DROP ROLE {name}")


@pytest.fixture
async def writer(fresh: dict[str, Any], roles: Any) -> AsyncIterator[dict[str, Any]]:
    """A backend's connection with README's grants, and a schema of its own to plant
    things in (as a role with CREATE on a schema in its search_path would have)."""
    name, url = await roles("herald_writer")
    await fresh["sql"].execute(f"CREATE SCHEMA {name} AUTHORIZATION {name}")
    conn = await db.connect(url, "herald-test-writer")
    try:
        yield {"name": name, "conn": conn, "url": url}
    finally:
        await conn.close()


# What an attacker's code would do with the rights it runs with: record whose they are,
# then try to take a superuser's, read the key and NOTIFY on the private channel. Every
# step in its own block, so one refusal does not hide whether the next would work.
EVIL_BODY = """
BEGIN
    INSERT INTO pg_temp.loot VALUES ('ran as ' || current_user);
    BEGIN
        EXECUTE 'ALTER ROLE ' || quote_ident(session_user) || ' SUPERUSER';
        INSERT INTO pg_temp.loot VALUES ('superuser');
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    BEGIN
        INSERT INTO pg_temp.loot SELECT 'key ' || channel FROM herald_private.bus_key;
        PERFORM pg_notify(channel, 'forged') FROM herald_private.bus_key;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
"""

LOOT = "CREATE TEMP TABLE IF NOT EXISTS loot (what text)"

# The attack, then variants: other casts and types, every trigger function of
# Herald's, row and statement triggers, operators and functions planted in a schema on
# the search path, temporary tables shadowing Herald's.
ATTACKS: dict[str, list[str]] = {
    "assignment cast into notify_inserted (the reported attack)": [
        "CREATE TYPE pg_temp.e AS ENUM ('a')",
        "CREATE FUNCTION pg_temp.f(pg_temp.e) RETURNS bigint LANGUAGE plpgsql AS $$"
        + EVIL_BODY + " RETURN 1; END $$",
        "CREATE CAST (pg_temp.e AS bigint) WITH FUNCTION pg_temp.f(pg_temp.e) AS ASSIGNMENT",
        "CREATE TEMP TABLE t (user_id text, seq pg_temp.e)",
        "CREATE TRIGGER t AFTER INSERT ON pg_temp.t REFERENCING NEW TABLE AS inserted "
        "FOR EACH STATEMENT EXECUTE FUNCTION herald.notify_inserted()",
        "INSERT INTO pg_temp.t VALUES ('x', 'a')",
    ],
    **{
        f"{function} as a {level} trigger on a temporary table": [
            "CREATE TEMP TABLE t (id bigint, user_id text, seq bigint, title text, "
            "data jsonb, idempotency_key text, expires_at timestamptz, "
            "read_at timestamptz, archived_at timestamptz)",
            f"CREATE TRIGGER t {when} ON pg_temp.t "
            + ("REFERENCING NEW TABLE AS inserted " if level == "statement" else "")
            + f"FOR EACH {level.upper()} EXECUTE FUNCTION herald.{function}()",
            "INSERT INTO pg_temp.t (id, user_id, seq, title) VALUES (1, 'x', 1, 'x')",
        ]
        for function, when, level in (
            ("notify_inserted", "AFTER INSERT", "statement"),
            ("notify_frame", "AFTER INSERT", "row"),
            ("assign_seq", "BEFORE INSERT", "row"),
            ("guard_identity", "BEFORE UPDATE", "row"),
            ("stamp_change", "BEFORE UPDATE", "row"),
            ("notify_changed", "AFTER UPDATE", "statement"),
        )
    },
    "muted_changed as a statement trigger on a temporary table": [
        "CREATE TEMP TABLE t (user_id text, category text)",
        "CREATE TRIGGER t AFTER INSERT ON pg_temp.t REFERENCING NEW TABLE AS changed_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION herald.muted_changed()",
        "INSERT INTO pg_temp.t VALUES ('x', 'marketing')",
    ],
    "operators planted on the search path, then a real mute": [
        "SET search_path = {schema}, public",
        "CREATE FUNCTION {schema}.evil_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$"
        + EVIL_BODY + " RETURN $1 OPERATOR(pg_catalog.=) $2; END $$",
        "CREATE OPERATOR {schema}.= (LEFTARG = text, RIGHTARG = text, "
        "FUNCTION = {schema}.evil_eq)",
        "CREATE FUNCTION {schema}.hashtext(text) RETURNS integer LANGUAGE plpgsql AS $$"
        + EVIL_BODY + " RETURN 1; END $$",
        "CREATE FUNCTION {schema}.pg_notify(text, text) RETURNS void LANGUAGE plpgsql AS $$"
        + EVIL_BODY + " END $$",
        "INSERT INTO herald.muted_categories (user_id, category) VALUES ('victim', 'planted')",
        "DELETE FROM herald.muted_categories WHERE user_id = 'victim'",
    ],
    "the muted categories updated or truncated": [
        "UPDATE herald.muted_categories SET user_id = 'someone else'",
        "TRUNCATE herald.muted_categories",
    ],
    "implicit cast into a helper's arguments": [
        "CREATE TYPE pg_temp.e AS ENUM ('a')",
        "CREATE FUNCTION pg_temp.f(pg_temp.e) RETURNS bigint LANGUAGE plpgsql AS $$"
        + EVIL_BODY + " RETURN 1; END $$",
        "CREATE CAST (pg_temp.e AS bigint) WITH FUNCTION pg_temp.f(pg_temp.e) AS IMPLICIT",
        "SELECT herald.announce(ARRAY['x'], ARRAY['a'::pg_temp.e])",
    ],
    "operators and functions planted on the search path, then a real insert": [
        "SET search_path = {schema}, public",
        "CREATE FUNCTION {schema}.evil_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$"
        + EVIL_BODY + " RETURN $1 OPERATOR(pg_catalog.=) $2; END $$",
        "CREATE OPERATOR {schema}.= (LEFTARG = text, RIGHTARG = text, "
        "FUNCTION = {schema}.evil_eq)",
        "CREATE FUNCTION {schema}.char_length(text) RETURNS integer LANGUAGE plpgsql AS $$"
        + EVIL_BODY + " RETURN 1; END $$",
        "CREATE FUNCTION {schema}.nextval(text) RETURNS bigint LANGUAGE plpgsql AS $$"
        + EVIL_BODY + " RETURN 1; END $$",
        "CREATE FUNCTION {schema}.to_json(text) RETURNS json LANGUAGE plpgsql AS $$"
        + EVIL_BODY + " RETURN '1'; END $$",
        "CREATE FUNCTION {schema}.sha256(bytea) RETURNS bytea LANGUAGE plpgsql AS $$"
        + EVIL_BODY + " RETURN '\\x00'; END $$",
        "INSERT INTO herald.notifications (user_id, title) VALUES ('victim', 'planted')",
    ],
    "operators planted in pg_temp, then a real insert": [
        "CREATE FUNCTION pg_temp.evil_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$"
        + EVIL_BODY + " RETURN $1 OPERATOR(pg_catalog.=) $2; END $$",
        "CREATE OPERATOR pg_temp.= (LEFTARG = text, RIGHTARG = text, "
        "FUNCTION = pg_temp.evil_eq)",
        "INSERT INTO herald.notifications (user_id, title) VALUES ('victim', 'pg_temp')",
    ],
    "temporary tables shadowing Herald's, then a real insert": [
        "CREATE TEMP TABLE user_counters (user_id text, last_seq bigint)",
        "CREATE TEMP TABLE notifications (id bigint, user_id text, seq bigint)",
        "CREATE TEMP TABLE bus_key (id integer, channel text, mac_inner bytea, "
        "mac_outer bytea)",
        "INSERT INTO pg_temp.bus_key VALUES (1, 'herald', '\\x00', '\\x00')",
        "CREATE TEMP TABLE relay (id integer, batched_until timestamptz)",
        "INSERT INTO pg_temp.relay VALUES (1, 'infinity')",
        "SET search_path = pg_temp, public",
        "INSERT INTO herald.notifications (user_id, title) VALUES ('victim', 'shadowed')",
    ],
    "the owner's functions called directly": [
        "SELECT herald.relay_poll()",
    ],
    "the relay's lease and pointers": [
        "UPDATE herald.relay SET batched_until = 'infinity'",
    ],
    "the pointer table read": [
        "SELECT * FROM herald.relay_pending",
    ],
    "the pointer table written (a pointer too big to announce stalled the relay)": [
        "INSERT INTO herald.relay_pending VALUES (repeat('a', 9000), 1)",
    ],
    "other users' notifications read": [
        "INSERT INTO pg_temp.loot SELECT 'read ' || title FROM herald.notifications",
    ],
}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_a_writer_cannot_reach_the_owners_rights(
    fresh: dict[str, Any], writer: dict[str, Any], attack: str
) -> None:
    conn = writer["conn"]
    private, key = await private_channel(fresh["sql"])
    heard: list[str] = []
    listener = await db.connect(fresh["url"], "herald-test-private")
    await listen_everywhere(listener, private, lambda *args: heard.append(args[-1]))
    try:
        await conn.execute(LOOT)
        errors = []
        for statement in ATTACKS[attack]:
            try:
                await conn.execute(statement.format(schema=writer["name"]))
            except asyncpg.PostgresError as err:
                errors.append(f"{type(err).__name__}: {err}")
        await conn.execute("RESET search_path")
        loot = [r["what"] for r in await conn.fetch("SELECT what FROM pg_temp.loot")]
        print(f"\n{attack}: {errors or 'no error'}; loot {loot}")
        assert all(what == f"ran as {writer['name']}" for what in loot), loot
        if "written" in attack or "read" in attack or "truncated" in attack:
            assert errors and "permission denied" in errors[-1], errors
        assert not await conn.fetchval(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchval("SELECT channel FROM herald_private.bus_key")
        await asyncio.sleep(0.2)
        # Only the trigger's own frames of real inserts reach the private channel.
        assert all(p[64:].startswith('{"k" : "frame"') for p in heard), heard
        await insert(fresh["sql"], "after", "the owner still publishes")
        await wait_for(lambda: len(heard) >= 1)
    finally:
        await listener.close()


async def test_debug_output_never_shows_the_key_or_the_channel(
    fresh: dict[str, Any], writer: dict[str, Any]
) -> None:
    """A user may turn on the planner's debug output (which prints a query's constants)
    and NOTIFY tracing (which prints the channel): inside the owner-run triggers both
    are off, so neither the channel's name nor the MAC key, nor its pads, reach the
    writer's session."""
    conn = writer["conn"]
    messages: list[str] = []
    conn.add_log_listener(lambda _conn, message: messages.append(
        f"{message.message}\n{message.detail or ''}"))
    for setting in ("debug_pretty_print = off", "debug_print_plan = on",
                    "debug_print_parse = on", "debug_print_rewritten = on",
                    "trace_notify = on", "client_min_messages = debug5"):
        await conn.execute(f"SET {setting}")
    for _ in range(7):  # past the plan cache's custom plans, whose constants are values
        await insert(conn, "carol", "debugged")
        async with conn.transaction():
            await insert(conn, "dave", "in a transaction")
            await insert(conn, "dave", "and its second row")
    row = await fresh["sql"].fetchrow("SELECT channel, mac_key, mac_inner, mac_outer "
                                      "FROM herald_private.bus_key")
    text = "\n".join(messages)
    assert len(messages) > 10, messages  # the debug output did arrive
    # The planner prints a constant as its bytes in decimal (signed), lines wrapped.
    flat = " ".join(text.split())
    for name in ("channel", "mac_key", "mac_inner", "mac_outer"):
        value = row[name].encode() if name == "channel" else bytes(row[name])
        printed = [" ".join(str(b - 256 if signed and b > 127 else b) for b in value[:12])
                   for signed in (True, False)]
        for secret in (value.hex(), row[name] if name == "channel" else None, *printed):
            assert secret is None or secret not in flat, (name, secret)


async def test_definer_functions_are_few_owned_by_a_nologin_role_and_not_public(
    fresh: dict[str, Any],
) -> None:
    """Every function of Herald's: owned by herald_owner (neither superuser nor login),
    path pinned, not executable by PUBLIC; the owner-run ones are exactly the three
    triggers that must be, only their owner may execute them, and they silence what
    would print their queries' values. Every table and schema too."""
    sql = fresh["sql"]
    functions = await sql.fetch(
        """
        SELECT p.proname, p.prosecdef, p.proconfig, p.proowner::regrole::text AS owner,
               p.prosqlbody IS NOT NULL AS atomic,
               coalesce(array_agg(a.grantee::regrole::text)
                        FILTER (WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> 0), '{}')
                   AS executors,
               bool_or(a.grantee = 0) AS public
        FROM pg_proc p LEFT JOIN LATERAL aclexplode(coalesce(p.proacl,
                acldefault('f', p.proowner))) a ON true
        WHERE p.pronamespace IN ('herald'::regnamespace, 'herald_private'::regnamespace)
        GROUP BY p.oid
        """)
    print("\n" + "\n".join(f"{f['proname']}: definer={f['prosecdef']} executors="
                           f"{sorted(f['executors'])}" for f in functions))
    assert len(functions) >= 12
    definers = sorted(f["proname"] for f in functions if f["prosecdef"])
    assert definers == ["assign_seq", "notify_frame", "notify_inserted"]
    for f in functions:
        assert f["owner"] == "herald_owner", f
        assert not f["public"], f
        if f["atomic"]:  # a SQL-standard body: names resolved at creation, inlined
            assert f["proconfig"] is None and not f["prosecdef"], f
            continue
        assert f["proconfig"][0] == "search_path=pg_catalog, pg_temp", f
        if f["prosecdef"]:
            assert f["executors"] == ["herald_owner"], f
            assert set(f["proconfig"][1:]) == {
                "debug_print_plan=off", "debug_print_parse=off", "debug_print_rewritten=off",
                "trace_notify=off", "client_min_messages=warning"}, f
        else:
            assert len(f["proconfig"]) == 1, f
    owners = await sql.fetch(
        """
        SELECT c.relname, c.relowner::regrole::text AS owner FROM pg_class c
        WHERE c.relnamespace IN ('herald'::regnamespace, 'herald_private'::regnamespace)
          AND c.relkind IN ('r', 'S')
        UNION ALL
        SELECT nspname, nspowner::regrole::text FROM pg_namespace
        WHERE nspname IN ('herald', 'herald_private')
        """)
    assert {r["owner"] for r in owners} == {"herald_owner"}, owners
    owner = await sql.fetchrow(
        "SELECT rolsuper, rolcanlogin FROM pg_roles WHERE rolname = 'herald_owner'")
    assert (owner["rolsuper"], owner["rolcanlogin"]) == (False, False)


async def test_a_writer_cannot_break_publishing_for_others(
    fresh: dict[str, Any], writer: dict[str, Any]
) -> None:
    """The counter moves only through Herald's trigger; ids a writer names (future ones,
    with OVERRIDING SYSTEM VALUE or without) are overwritten, seqs too."""
    conn, sql = writer["conn"], fresh["sql"]
    await insert(sql, "alice", "first")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("UPDATE herald.user_counters SET last_seq = 0 "
                           "WHERE user_id = 'alice'")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("INSERT INTO herald.user_counters VALUES ('bob', 1000)")
    future = await sql.fetchval("SELECT last_value + 5 FROM herald.notifications_id_seq")
    planted = []
    for override in ("OVERRIDING SYSTEM VALUE", ""):
        for i in range(3):
            planted.append(await conn.fetchrow(
                f"INSERT INTO herald.notifications (id, seq, user_id, title) {override} "
                "VALUES ($1, 1, 'mallory', 'x') RETURNING id, seq", future + i))
    ids = [r["id"] for r in planted]  # the sequence's, one after the other: none named
    assert ids == list(range(ids[0], ids[0] + 6)) and ids[0] < future, planted
    assert [r["seq"] for r in planted] == [1, 2, 3, 4, 5, 6]
    for user in ("alice", "bob", "carol"):
        for _ in range(10):  # walks past every id the writer named
            await insert(conn, user, "after the attempt")
    assert await sql.fetchval("SELECT last_seq FROM herald.user_counters "
                              "WHERE user_id = 'alice'") == 11


async def test_a_writer_sets_preferences_and_nodes_push_them(
    fresh: dict[str, Any], writer: dict[str, Any], clients: Any
) -> None:
    """herald_writer may SELECT, INSERT and DELETE muted categories (a backend sets a
    user's preferences), nothing more; the trigger runs as the writer (no definer) and
    its announcement reaches the user's sockets."""
    conn, sql = writer["conn"], fresh["sql"]
    node = await fresh["node"]("node-a")
    user = f"u-{uuid.uuid4().hex[:8]}"
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.sync()
    await conn.execute("INSERT INTO herald.muted_categories (user_id, category) "
                       "VALUES ($1, 'marketing') ON CONFLICT DO NOTHING", user)
    pushed = await client.recv()
    assert pushed == {"type": "preferences", "muted": ["marketing"], "unread": 0}
    assert await conn.fetchval("SELECT count(*) FROM herald.muted_categories "
                               "WHERE user_id = $1", user) == 1
    for statement in ("UPDATE herald.muted_categories SET muted_at = now()",
                      "TRUNCATE herald.muted_categories"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    await conn.execute("DELETE FROM herald.muted_categories WHERE user_id = $1", user)
    assert await client.recv() == {"type": "preferences", "muted": [], "unread": 0}
    rights = await sql.fetch(
        "SELECT grantee::regrole::text AS role, array_agg(privilege_type ORDER BY "
        "privilege_type) AS rights FROM aclexplode((SELECT relacl FROM pg_class WHERE oid = "
        "'herald.muted_categories'::regclass)) WHERE grantee <> 0 GROUP BY grantee")
    assert {r["role"]: r["rights"] for r in rights} == {
        "herald_owner": ["DELETE", "INSERT", "REFERENCES", "SELECT", "TRIGGER", "TRUNCATE",
                         "UPDATE"],
        "herald_writer": ["DELETE", "INSERT", "SELECT"],
        "herald_node": ["DELETE", "INSERT", "SELECT"]}


async def test_a_node_runs_with_the_node_role_alone(
    fresh: dict[str, Any], roles: Any, clients: Any
) -> None:
    """A node whose login role is only a member of herald_node does everything a node
    does: heartbeats, the relay's lease and polls, inline frames (it reads the key),
    publishing over HTTP, acks, read changes, retention."""
    _, url = await roles("herald_node")
    sql = fresh["sql"]
    node = await fresh["node"]("node-role", database_url=url, relay_threshold=0,
                               retention_days=1, prune_interval=0.2)
    await wait_for(lambda: node.relay is not None and node.relay.leader, timeout=10)
    await sql.execute("INSERT INTO herald.notifications (user_id, title, created_at) "
                      "VALUES ('old', 'two days ago', now() - interval '2 days')")
    user = f"u-{uuid.uuid4().hex[:8]}"
    client = await clients(node.port)
    await client.hello(token_for(user))
    status, _ = await call(node.port, "POST", "/api/notifications",
                           {"user_id": user, "title": "over http"},
                           headers={"Authorization": f"Bearer {API_KEY}"})
    assert status == 201
    (got,) = await client.notifications(1)  # under the relay's lease: relay_poll
    await client.send({"type": "ack", "seq": got["seq"]})
    await client.send({"type": "read", "ids": [got["id"]]})
    changed = await client.recv()
    assert changed is not None and changed["type"] == "read"
    await client.send({"type": "mute", "category": "marketing", "ref": 1})
    await client.send({"type": "read", "group_key": "none of these", "ref": 2})
    answers = [await client.recv() for _ in range(3)]
    assert {"type": "done", "ref": 1, "changed": 1} in answers
    assert {"type": "done", "ref": 2, "changed": 0} in answers
    assert {"type": "preferences", "muted": ["marketing"], "unread": 0} in answers
    status, prefs = await call(node.port, "POST", "/api/preferences/unmute",
                               {"category": "marketing"}, token=token_for(user))
    assert (status, prefs) == (200, {"updated": 1, "muted": [], "unread": 0})
    await wait_for(lambda: sql.fetchval(
        "SELECT delivered_at IS NOT NULL FROM herald.notifications WHERE id = $1",
        got["id"]), timeout=10)
    await wait_for(lambda: sql.fetchval(
        "SELECT count(*) = 0 FROM herald.notifications WHERE user_id = 'old'"), timeout=10)
    assert await sql.fetchval("SELECT count(*) FROM herald.nodes "
                              "WHERE name = 'node-role'") == 1
    assert await metric(node.port, 'herald_refused_total{reason="bus_payload"}') == 0


async def test_frames_from_the_node_role_carry_a_mac_the_node_checks(
    fresh: dict[str, Any], roles: Any, clients: Any
) -> None:
    """With the relay idle, a row goes out inline; the node counts it as a frame."""
    _, url = await roles("herald_node")
    node = await fresh["node"]("node-role", database_url=url)
    user = f"u-{uuid.uuid4().hex[:8]}"
    client = await clients(node.port)
    await client.hello(token_for(user))
    frames = await metric(node.port, 'herald_bus_events_total{kind="frame"}')
    row = await insert(fresh["sql"], user, "inline")
    (got,) = await client.notifications(1)
    assert got["seq"] == row["seq"]
    assert await metric(node.port, 'herald_bus_events_total{kind="frame"}') == frames + 1
    assert json.loads(json.dumps(got))["title"] == "inline"


async def _silent_row(sql: asyncpg.Connection, user: str, title: str) -> int:
    """A row committed without any trigger (so without any NOTIFY): only a forged frame
    or a fetch can bring it to a client. Returns its seq."""
    async with sql.transaction():
        await sql.execute("SET LOCAL session_replication_role = replica")
        seq = await sql.fetchval(
            "INSERT INTO herald.user_counters AS c VALUES ($1, 1) ON CONFLICT (user_id) "
            "DO UPDATE SET last_seq = c.last_seq + 1 RETURNING last_seq", user)
        await sql.execute(
            "INSERT INTO herald.notifications (id, user_id, seq, title) "
            "VALUES (nextval('herald.notifications_id_seq'), $1, $2, $3)", user, seq, title)
    return int(seq)


def _forgeries(user: str, seq: int, key: bytes) -> dict[str, str]:
    from tests.helpers import frame_payload, notification_frame

    frame = notification_frame(seq, "forged")
    return {
        "no MAC": frame_payload(user, frame, None),
        "MAC under another key": frame_payload(user, frame, b"k" * 64),
        "MAC of another payload": frame_payload(user, frame, key)[:64]
        + frame_payload(user, notification_frame(seq, "other"), key)[64:],
        "frame for another seq": frame_payload(user, notification_frame(seq + 1, "x"), key,
                                               seq=seq),
        "not a notification frame": frame_payload(
            user, {**frame, "type": "welcome"}, key),
        "a field the trigger never writes": frame_payload(user, {**frame, "html": "<b>"}, key),
        "a link the table refuses": frame_payload(
            user, {**frame, "link": "javascript:alert(1)"}, key),
        "an off-site link dressed as a path": frame_payload(
            user, {**frame, "link": "/..//evil.example"}, key),
    }


async def test_forged_frames_are_refused_and_the_row_is_fetched_instead(
    make_node, clients, sql, user
) -> None:
    """Whoever knows the private channel's name (monitoring roles see it in the nodes'
    LISTEN): a frame without the right MAC, or with the right MAC around anything but
    this row's notification frame, is counted, not sent, and the real row is fetched
    from the table in its place."""
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    channel, key = await private_channel(sql)
    for reason in _forgeries(user, 1, key):
        seq = await _silent_row(sql, user, f"real ({reason})")
        forged = _forgeries(user, seq, key)[reason]
        refused = await metric(node.port, 'herald_refused_total{reason="bus_payload"}')
        await sql.execute("SELECT pg_notify($1, $2)", channel, forged)
        (got,) = await client.notifications(1)
        assert (got["seq"], got["title"]) == (seq, f"real ({reason})"), reason
        assert await metric(node.port,
                            'herald_refused_total{reason="bus_payload"}') == refused + 1


# --- upgrading a database that revision 0008 left exposed ---------------------------------


@pytest.fixture
async def at_0008(make_database: Any) -> AsyncIterator[dict[str, Any]]:
    """A database at revision 0008, a superuser connection to it, and a factory of
    login roles (dropped at the end, with whatever they own)."""
    url = make_database()
    await asyncio.to_thread(schema.upgrade, url, "0008")
    conn = await db.connect(url, "herald-test-0008")
    made: list[str] = []

    async def role(*grants: str) -> tuple[str, str]:
        name = f"herald_t_{uuid.uuid4().hex[:8]}"
        await conn.execute(f"CREATE ROLE {name} LOGIN")
        for grant in grants:
            await conn.execute(grant.format(role=name))
        made.append(name)
        return name, _as_role(url, name)

    try:
        yield {"url": url, "sql": conn, "role": role}
    finally:
        for name in made:
            await conn.execute(f"REASSIGN OWNED BY {name} TO CURRENT_USER")
            await conn.execute(f"DROP OWNED BY {name}")
            await conn.execute(f"DROP ROLE {name}")
        await conn.close()


OLD_README_GRANTS = (
    "GRANT USAGE ON SCHEMA herald TO {role}",
    "GRANT INSERT, SELECT ON herald.notifications TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON herald.user_counters TO {role}",
    "GRANT SELECT ON herald.relay TO {role}",
)


async def test_the_upgrade_takes_back_more_than_readme_gave(at_0008: dict[str, Any]) -> None:
    """A role given every right on every table of schema herald keeps, after the
    upgrade, DELETE and UPDATE of the read state on herald.notifications and nothing
    else: no TRIGGER (a trigger on the counters ran as the owner), no SELECT of every
    user's rows, nothing on the counters, the relay's tables, the nodes or the sequence.
    It writes as a member of herald_writer."""
    sql = at_0008["sql"]
    name, url = await at_0008["role"](
        "GRANT USAGE, CREATE ON SCHEMA herald TO {role}",
        "GRANT ALL ON ALL TABLES IN SCHEMA herald TO {role} WITH GRANT OPTION",
        "GRANT ALL ON ALL SEQUENCES IN SCHEMA herald TO {role}")
    await asyncio.to_thread(schema.upgrade, at_0008["url"])
    rights = await sql.fetch(
        "SELECT c.relname, array_agg(a.privilege_type ORDER BY a.privilege_type) AS rights "
        "FROM pg_class c, aclexplode(c.relacl) a WHERE a.grantee = $1::regrole "
        "AND c.relnamespace = 'herald'::regnamespace GROUP BY c.relname", name)
    assert {r["relname"]: r["rights"] for r in rights} == {"notifications": ["DELETE"]}
    columns = await sql.fetch(
        "SELECT t.attname, a.privilege_type FROM pg_attribute t, aclexplode(t.attacl) a "
        "WHERE t.attrelid = 'herald.notifications'::regclass AND a.grantee = $1::regrole",
        name)
    assert sorted((r["attname"], r["privilege_type"]) for r in columns) == [
        ("archived_at", "UPDATE"), ("read_at", "UPDATE")]
    assert not await sql.fetchval("SELECT has_schema_privilege($1, 'herald', 'CREATE')", name)
    assert await sql.fetchval("SELECT pg_has_role($1, 'herald_writer', 'MEMBER')", name)
    conn = await db.connect(url, "herald-test-broad")
    try:
        await insert(conn, "alice", "still publishes")
        await conn.execute("UPDATE herald.notifications SET read_at = now() "
                           "WHERE id = (SELECT max(id) FROM herald.notifications)")
        for statement in (
                "CREATE TRIGGER t BEFORE INSERT ON herald.user_counters "
                "FOR EACH ROW EXECUTE FUNCTION herald.stamp_change()",
                "SELECT title FROM herald.notifications",
                "UPDATE herald.notifications SET read_xid = 1",
                "SELECT setval('herald.notifications_id_seq', 1)"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(statement)
    finally:
        await conn.close()


PLANTED = {
    "trigger planted on herald.user_counters": (
        ["CREATE FUNCTION public.planted() RETURNS trigger LANGUAGE plpgsql "
         "AS $$ BEGIN RETURN NEW; END $$",
         "CREATE TRIGGER planted BEFORE INSERT ON herald.user_counters "
         "FOR EACH ROW EXECUTE FUNCTION public.planted()"],
        ["DROP TRIGGER planted ON herald.user_counters", "DROP FUNCTION public.planted()"]),
    "trigger assign_seq on herald.user_counters": (  # a name of Herald's, elsewhere
        ["CREATE TRIGGER assign_seq AFTER UPDATE ON herald.user_counters "
         "FOR EACH ROW EXECUTE FUNCTION herald.stamp_change()"],
        ["DROP TRIGGER assign_seq ON herald.user_counters"]),
    "function herald.helper()": (  # would become the owner's
        ["CREATE FUNCTION herald.helper() RETURNS int LANGUAGE sql SECURITY DEFINER "
         "AS 'SELECT 1'"],
        ["DROP FUNCTION herald.helper()"]),
    "foreign key keep_id_fkey on public.keep": (  # would stop every delete of that row
        ["CREATE TABLE public.keep (id bigint REFERENCES herald.notifications (id))"],
        ["DROP TABLE public.keep"]),
    "inheritance public.child of herald.notifications": (  # rows no trigger ever saw
        ["CREATE TABLE public.child () INHERITS (herald.notifications)"],
        ["DROP TABLE public.child"]),
}


@pytest.mark.parametrize("planted", list(PLANTED))
async def test_the_upgrade_refuses_what_is_not_heralds(
    at_0008: dict[str, Any], planted: str
) -> None:
    """Anything in or on Herald's schemas that revision 0008 did not make stops the
    upgrade, named: taking it over would give whoever made it the owner's rights."""
    sql = at_0008["sql"]
    make, remove = PLANTED[planted]
    for statement in make:
        await sql.execute(statement)
    try:
        with pytest.raises(Exception, match=planted.replace("(", r"\(").replace(")", r"\)")):
            await asyncio.to_thread(schema.upgrade, at_0008["url"])
        assert await sql.fetchval("SELECT version_num FROM herald_alembic_version") == "0008"
    finally:
        for statement in remove:
            await sql.execute(statement)
    await asyncio.to_thread(schema.upgrade, at_0008["url"])


async def test_default_privileges_in_heralds_schemas_are_removed(
    at_0008: dict[str, Any],
) -> None:
    """Default privileges would hand the sequence the upgrade creates to the role they
    name (which could then setval it and stop every insert)."""
    sql = at_0008["sql"]
    name, url = await at_0008["role"]()
    await sql.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA herald GRANT ALL ON SEQUENCES "
                      f"TO {name}")
    await asyncio.to_thread(schema.upgrade, at_0008["url"])
    assert not await sql.fetchval(
        "SELECT has_sequence_privilege($1, 'herald.notifications_id_seq', 'UPDATE')", name)
    assert await sql.fetchval("SELECT count(*) FROM pg_default_acl "
                              "WHERE defaclnamespace = 'herald'::regnamespace") == 0


async def test_the_upgrade_repairs_what_a_writer_broke_under_0008(
    at_0008: dict[str, Any],
) -> None:
    """Ids planted ahead of the sequence and a counter moved back below its user's rows
    (both possible for README's writer under 0008) no longer break anyone's inserts."""
    sql = at_0008["sql"]
    _, url = await at_0008["role"](*OLD_README_GRANTS)
    conn = await db.connect(url, "herald-test-0008-writer")
    try:
        await insert(conn, "alice", "one")
        await insert(conn, "alice", "two")
        await conn.execute("INSERT INTO herald.notifications (id, user_id, title) "
                           "OVERRIDING SYSTEM VALUE SELECT g, 'mallory', 'planted' "
                           "FROM generate_series(4, 53) g")
        await conn.execute("UPDATE herald.user_counters SET last_seq = 0 "
                           "WHERE user_id = 'alice'")
        with pytest.raises(asyncpg.UniqueViolationError):  # broken under 0008
            await insert(conn, "alice", "three")
    finally:
        await conn.close()
    await asyncio.to_thread(schema.upgrade, at_0008["url"])
    conn = await db.connect(url, "herald-test-0008-writer")
    try:
        for user in ("alice", "bob", "mallory"):
            await insert(conn, user, "after the upgrade")
        assert await sql.fetchval("SELECT max(seq) FROM herald.notifications "
                                  "WHERE user_id = 'alice'") == 3
    finally:
        await conn.close()


async def test_a_non_superuser_that_owns_herald_migrates_and_upgrades(
    at_0008: dict[str, Any], make_database: Any
) -> None:
    """A database created, and migrated to 0008, by a role that is no superuser:
    upgraded by a superuser, or by that role itself once a superuser made it a member
    of herald_owner (docs/operations.md, *Roles*); without that, the upgrade says what to do."""
    sql = at_0008["sql"]
    name, _ = await at_0008["role"]()
    # (Membership is the server's: once granted, it stays for the next database.)
    for upgrader in ("owner without membership", "superuser", "owner"):
        url = make_database()
        database = urlsplit(url).path.lstrip("/")
        await sql.execute(f'ALTER DATABASE "{database}" OWNER TO {name}')
        owner_url = _as_role(url, name)
        await asyncio.to_thread(schema.upgrade, owner_url, "0008")
        if upgrader == "owner":
            await sql.execute(f"GRANT herald_owner TO {name}")
        try:
            if upgrader == "owner without membership":
                with pytest.raises(Exception, match=f"GRANT herald_owner TO {name}"):
                    await asyncio.to_thread(schema.upgrade, owner_url)
                continue
            await asyncio.to_thread(schema.upgrade,
                                    url if upgrader == "superuser" else owner_url)
            conn = await db.connect(url, "herald-test-owner")
            try:
                assert await conn.fetchval(
                    "SELECT relowner::regrole::text FROM pg_class "
                    "WHERE oid = 'herald.notifications'::regclass") == "herald_owner"
                await insert(conn, "alice", f"after an upgrade by the {upgrader}")
            finally:
                await conn.close()
        finally:
            admin = await db.connect(url, "herald-test-owner")
            try:
                await admin.execute(f'ALTER DATABASE "{database}" OWNER TO CURRENT_USER')
                await admin.execute(f"REASSIGN OWNED BY {name} TO CURRENT_USER")
                await admin.execute(f"DROP OWNED BY {name}")
            finally:
                await admin.close()


async def test_times_a_node_cannot_read_are_refused(
    fresh: dict[str, Any], writer: dict[str, Any]
) -> None:
    """A row dated in the year 20000 (or 4000 BC) once made every fetch that included its
    user, and every retention pass, fail."""
    for column, value in (("created_at", "20000-01-01"), ("created_at", "4000-01-01 BC"),
                          ("expires_at", "20000-01-01")):
        with pytest.raises(asyncpg.CheckViolationError, match=f"{column}_range"):
            await writer["conn"].execute(
                f"INSERT INTO herald.notifications (user_id, title, {column}) "
                f"VALUES ('victim', 'poison', '{value}')")


async def test_nothing_planted_on_the_path_runs_as_the_migrating_superuser(
    at_0008: dict[str, Any],
) -> None:
    """A role that may create in public plants an operator alembic's own catalog query
    would pick (name = varchar) and one render_frame's body would bind (bigint %
    integer): the migration's connection searches pg_catalog only, so neither runs, and
    render_frame depends on nothing outside pg_catalog and schema herald."""
    sql = at_0008["sql"]
    name, url = await at_0008["role"]("GRANT CREATE ON SCHEMA public TO {role}")
    conn = await db.connect(url, "herald-test-planter")
    try:
        await conn.execute("CREATE TABLE public.loot (who text)")
        await conn.execute("GRANT INSERT ON public.loot TO PUBLIC")
        for left, right, op in (("name", "varchar", "="), ("bigint", "integer", "%")):
            result = "a::text = b::text" if op == "=" else "a %% b::bigint"
            await conn.execute(f"""
                CREATE FUNCTION public.evil_{'eq' if op == '=' else 'mod'}(a {left}, b {right})
                RETURNS {'boolean' if op == '=' else 'bigint'} LANGUAGE plpgsql AS $$
                BEGIN
                    INSERT INTO public.loot VALUES (current_user);
                    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                        EXECUTE 'ALTER ROLE {name} SUPERUSER';
                    END IF;
                    RETURN {result};
                END $$""".replace("%%", "%"))
            await conn.execute(f"CREATE OPERATOR public.{op} (LEFTARG = {left}, RIGHTARG = "
                               f"{right}, FUNCTION = public.evil_{'eq' if op == '=' else 'mod'})")
    finally:
        await conn.close()
    await asyncio.to_thread(schema.upgrade, at_0008["url"])
    await insert(sql, "alice", "after the upgrade")  # runs notify_frame, render_frame
    assert not await sql.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = $1", name)
    assert await sql.fetch("SELECT who FROM public.loot") == []
    outside = await sql.fetchval(
        "SELECT count(*) FROM pg_depend d "
        "LEFT JOIN pg_operator o ON d.refclassid = 'pg_operator'::regclass "
        "AND o.oid = d.refobjid "
        "LEFT JOIN pg_proc p ON d.refclassid = 'pg_proc'::regclass AND p.oid = d.refobjid "
        "WHERE d.objid = 'herald.render_frame(herald.notifications)'::regprocedure "
        "AND coalesce(o.oprnamespace, p.pronamespace) "
        "NOT IN ('pg_catalog'::regnamespace, 'herald'::regnamespace)")
    assert outside == 0


async def test_publics_rights_on_the_notifications_are_revoked(at_0008: dict[str, Any]) -> None:
    sql = at_0008["sql"]
    name, _ = await at_0008["role"]()
    await sql.execute("GRANT USAGE ON SCHEMA herald TO PUBLIC")
    await sql.execute("GRANT SELECT, INSERT, UPDATE ON herald.notifications TO PUBLIC")
    await asyncio.to_thread(schema.upgrade, at_0008["url"])
    for privilege in ("SELECT", "INSERT", "UPDATE"):
        assert not await sql.fetchval(
            "SELECT has_table_privilege($1, 'herald.notifications', $2)", name, privilege)


async def test_an_interrupted_upgrade_runs_again(at_0008: dict[str, Any]) -> None:
    """Revision 0009 commits its DDL before its steps that cannot run in a transaction
    (validating checks, building an index concurrently, which waits for old snapshots:
    an operator may well interrupt it): the version still says 0008, and the next run
    must go through."""
    sql = at_0008["sql"]
    await insert(sql, "alice", "before")
    await asyncio.to_thread(schema.upgrade, at_0008["url"], "0009")
    await sql.execute("UPDATE herald_alembic_version SET version_num = '0008'")
    await asyncio.to_thread(schema.upgrade, at_0008["url"])
    assert await sql.fetchval("SELECT version_num FROM herald_alembic_version") == \
        schema.head_revision()
    assert (await insert(sql, "alice", "after"))["seq"] == 2


PLANTED_VERSION_TABLES = {
    "a trigger": [
        "CREATE TABLE public.herald_alembic_version (version_num varchar(32) PRIMARY KEY)",
        "CREATE TRIGGER grab BEFORE INSERT OR UPDATE ON public.herald_alembic_version "
        "FOR EACH ROW EXECUTE FUNCTION public.grab_row()"],
    "a check": [
        "CREATE TABLE public.herald_alembic_version (version_num varchar(32) PRIMARY KEY "
        "CHECK (public.grab_value(version_num)))",
        "GRANT UPDATE (version_num) ON public.herald_alembic_version TO PUBLIC"],
}


@pytest.mark.parametrize("planted", list(PLANTED_VERSION_TABLES))
async def test_nothing_attached_to_the_version_table_runs_as_the_migrator(
    make_database: Any, roles: Any, planted: str
) -> None:
    """Every migration writes public.herald_alembic_version: a table another role made
    before the first migration, with a trigger or a check calling its code, would run
    that code as the administrator. A superuser rebuilds such a table (keeping nothing
    but its rows) before any revision runs; nobody but its owner keeps a right on it."""
    name, url_as_planter = await roles("herald_writer")
    url = make_database()
    admin = await db.connect(url, "herald-test-version")
    try:
        await admin.execute(f"GRANT CREATE ON SCHEMA public TO {name}")
        planter = await db.connect(_as_role(url, name), "herald-test-version-planter")
        try:
            body = f"""
                BEGIN
                    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                        EXECUTE 'ALTER ROLE {name} SUPERUSER';
                    END IF;
                    RETURN %s;
                END"""
            await planter.execute("CREATE FUNCTION public.grab_row() RETURNS trigger "
                                  "LANGUAGE plpgsql AS $$" + body % "NEW" + "$$")
            await planter.execute("CREATE FUNCTION public.grab_value(text) RETURNS boolean "
                                  "LANGUAGE plpgsql AS $$" + body % "true" + "$$")
            for statement in PLANTED_VERSION_TABLES[planted]:
                await planter.execute(statement)
        finally:
            await planter.close()
        await asyncio.to_thread(schema.upgrade, url)
        assert not await admin.fetchval(
            "SELECT rolsuper FROM pg_roles WHERE rolname = $1", name)
        table = await admin.fetchrow(
            "SELECT relowner::regrole::text AS owner, relacl::text AS acl, "
            "(SELECT count(*) FROM pg_trigger WHERE tgrelid = c.oid) AS triggers, "
            "(SELECT count(*) FROM pg_constraint WHERE conrelid = c.oid) AS constraints, "
            "(SELECT count(*) FROM pg_attribute WHERE attrelid = c.oid "
            " AND attacl IS NOT NULL) AS column_grants "
            "FROM pg_class c WHERE oid = 'public.herald_alembic_version'::regclass")
        assert (table["owner"], table["triggers"], table["constraints"],
                table["column_grants"]) == (urlsplit(url).username or "postgres", 0, 1, 0)
        assert name not in table["acl"]
    finally:
        await admin.execute(f"REVOKE CREATE ON SCHEMA public FROM {name}")
        await admin.execute("DROP FUNCTION IF EXISTS public.grab_row(), "
                            "public.grab_value(text)")
        await admin.close()


async def test_column_grants_on_the_notifications_are_narrowed(
    at_0008: dict[str, Any],
) -> None:
    """Grants on single columns: PUBLIC keeps none, another role keeps SELECT and UPDATE
    of the read state, not UPDATE of the xids change events are checked by."""
    sql = at_0008["sql"]
    reader, _ = await at_0008["role"]()
    other, _ = await at_0008["role"]()
    await sql.execute("GRANT USAGE ON SCHEMA herald TO PUBLIC")
    await sql.execute("GRANT SELECT (user_id, title), UPDATE (read_xid) "
                      "ON herald.notifications TO PUBLIC")
    await sql.execute(f"GRANT SELECT (title), UPDATE (read_at, read_xid, created_at) "
                      f"ON herald.notifications TO {reader}")
    await asyncio.to_thread(schema.upgrade, at_0008["url"])

    async def can(role: str, column: str, privilege: str) -> bool:
        return bool(await sql.fetchval(
            "SELECT has_column_privilege($1, 'herald.notifications', $2, $3)",
            role, column, privilege))

    assert not await can(other, "title", "SELECT")
    assert not await can(other, "read_xid", "UPDATE")
    assert await can(reader, "title", "SELECT")
    assert await can(reader, "read_at", "UPDATE")
    assert not await can(reader, "read_xid", "UPDATE")
    assert not await can(reader, "created_at", "UPDATE")


async def test_down_to_0008_and_up_again_leaves_writers_no_wider(
    fresh: dict[str, Any],
) -> None:
    """The downgrade gives herald_writer 0008's rights (its writers need them there);
    the upgrade takes them back."""
    sql = fresh["sql"]
    config = schema.alembic_config(fresh["url"])
    from alembic import command

    await asyncio.to_thread(command.downgrade, config, "0008")
    assert await sql.fetchval(
        "SELECT has_table_privilege('herald_writer', 'herald.user_counters', 'UPDATE')")
    await asyncio.to_thread(schema.upgrade, fresh["url"])
    assert not await sql.fetchval(
        "SELECT has_table_privilege('herald_writer', 'herald.user_counters', 'UPDATE')")
    assert not await sql.fetchval(
        "SELECT has_column_privilege('herald_writer', 'herald.notifications', 'title', "
        "'SELECT')")


async def test_migrations_go_through_pgbouncer_in_session_mode(
    make_database: Any,
) -> None:
    """The migration pins its search_path with a SET (PgBouncer refuses it as a startup
    parameter), which a session-mode pool keeps."""
    from tests.pgbouncer import PgBouncer

    url = make_database()
    bouncer = PgBouncer(url, pool_mode="session")
    await bouncer.start()
    try:
        await asyncio.to_thread(schema.upgrade, bouncer.url)
    finally:
        await bouncer.stop()
    conn = await db.connect(url, "herald-test-bounced")
    try:
        assert await conn.fetchval("SELECT version_num FROM herald_alembic_version") == \
            schema.head_revision()
    finally:
        await conn.close()
