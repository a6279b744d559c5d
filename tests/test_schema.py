"""The schema, its triggers and its migrations, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import asyncpg
import pytest
from alembic import command

from app import db, schema, shards
from tests.conftest import insert, listen

ROOT = Path(__file__).resolve().parent.parent
HEAD_TABLES = {"notifications", "user_counters", "relay", "relay_pending", "nodes",
               "muted_categories",
               "<schema>"}


def _drain(queue: "asyncio.Queue[str]") -> list[dict[str, Any]]:
    items = []
    while not queue.empty():
        items.append(json.loads(queue.get_nowait()))
    return items


async def test_seq_is_gap_free_and_commit_ordered_under_concurrency(
    database_url: str, user: str
) -> None:
    """20 concurrent writers for one user, a third of them rolling back: the committed
    rows hold seq 1..n exactly."""
    committed: list[int] = []
    pool = await db.create_pool(database_url, "herald-test-writers", min_size=20, max_size=20)

    async def writer(i: int) -> None:
        async with pool.acquire() as conn:
            for j in range(10):
                tx = conn.transaction()
                await tx.start()
                seq = await conn.fetchval(
                    "INSERT INTO herald.notifications (user_id, title) VALUES ($1, $2) "
                    "RETURNING seq", user, f"w{i}-{j}")
                await asyncio.sleep(0.001 * (j % 3))
                if (i + j) % 3 == 0:
                    await tx.rollback()
                else:
                    await tx.commit()
                    committed.append(seq)

    try:
        await asyncio.gather(*(writer(i) for i in range(20)))
        seqs = [r["seq"] for r in await pool.fetch(
            "SELECT seq FROM herald.notifications WHERE user_id = $1 ORDER BY id", user)]
    finally:
        await pool.close()
    assert sorted(seqs) == list(range(1, len(seqs) + 1))
    assert sorted(committed) == sorted(seqs) and len(seqs) > 100


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_seq_order_is_commit_order(database_url: str, user: str, outcome: str) -> None:
    """A second writer for the same user cannot even get its seq until the first one's
    transaction ends: so a higher seq always commits later, and a rolled-back seq is
    reused (no gap)."""
    first = await db.connect(database_url, "herald-test-first")
    second = await db.connect(database_url, "herald-test-second")
    other = await db.connect(database_url, "herald-test-other")
    try:
        tx = first.transaction()
        await tx.start()
        seq1 = await first.fetchval("INSERT INTO herald.notifications (user_id, title) "
                                    "VALUES ($1, 'first') RETURNING seq", user)
        blocked = asyncio.create_task(second.fetchval(
            "INSERT INTO herald.notifications (user_id, title) VALUES ($1, 'second') "
            "RETURNING seq", user))
        # other users are not held up by it
        assert await other.fetchval("INSERT INTO herald.notifications (user_id, title) "
                                    "VALUES ($1, 'x') RETURNING seq", user + "-other") == 1
        await asyncio.sleep(0.3)
        assert not blocked.done()
        await (tx.commit() if outcome == "commit" else tx.rollback())
        seq2 = await asyncio.wait_for(blocked, 5)
        assert seq2 == (seq1 + 1 if outcome == "commit" else seq1)
    finally:
        for conn in (first, second, other):
            await conn.close()


async def test_push_happens_at_commit_and_never_on_rollback(
    database_url: str, sql: asyncpg.Connection, user: str
) -> None:
    listener, queue = await listen(database_url)
    try:
        tx = sql.transaction()
        await tx.start()
        await insert(sql, user, "inside a transaction")
        await asyncio.sleep(0.3)
        assert [e for e in _drain(queue) if user in e.get("u", {})] == []
        await tx.commit()
        event = json.loads(await asyncio.wait_for(queue.get(), 5))
        assert event == {"k": "new", "u": {user: 1}}

        tx = sql.transaction()
        await tx.start()
        await insert(sql, user, "rolled back")
        await tx.rollback()
        await asyncio.sleep(0.3)
        assert [e for e in _drain(queue) if user in e.get("u", {})] == []
        row = await insert(sql, user, "after the rollback")
        assert row["seq"] == 2  # the rollback left no gap
    finally:
        await listener.close()


async def test_bulk_insert_sends_few_small_notifies(
    database_url: str, sql: asyncpg.Connection, user: str
) -> None:
    """10,000 rows in one INSERT … SELECT: a handful of NOTIFYs per shard (one per shard
    here, 2,000 users spread over all 64), each under 8000 bytes, together naming every
    user with its highest seq, each user in its own shard's pointer."""
    listener, queue = await listen(database_url)
    try:
        await sql.execute(
            "INSERT INTO herald.notifications (user_id, title) "
            "SELECT $1 || '-' || (g % 2000), 'bulk ' || g FROM generate_series(1, 10000) g",
            user,
        )
        await asyncio.sleep(1.0)
        raw = []
        while not queue.empty():
            raw.append(queue.get_nowait())
    finally:
        await listener.close()
    events = [json.loads(r) for r in raw]
    mine = [e for e in events if any(u.startswith(user) for u in e["u"])]
    assert 1 <= len(mine) <= shards.SHARDS + 20
    for event in mine:
        assert len({shards.shard_of(u) for u in event["u"]}) == 1
    assert all(len(r.encode()) < 8000 for r in raw)
    merged: dict[str, int] = {}
    for event in mine:
        merged.update(event["u"])
    assert len(merged) == 2000 and set(merged.values()) == {5}


async def test_sql_update_of_read_at_is_announced(
    database_url: str, sql: asyncpg.Connection, user: str
) -> None:
    ids = [(await insert(sql, user, f"n{i}"))["id"] for i in range(3)]
    listener, queue = await listen(database_url)
    try:
        await sql.execute("UPDATE herald.notifications SET read_at = now() "
                          "WHERE id = ANY($1::bigint[])", ids[:2])
        event = json.loads(await asyncio.wait_for(queue.get(), 5))
        xids = await sql.fetch("SELECT DISTINCT read_xid FROM herald.notifications "
                               "WHERE id = ANY($1::bigint[])", ids[:2])
        assert [r["read_xid"] for r in xids] == [event["x"]]
        assert event == {"k": "read", "u": user, "ids": ids[:2], "x": event["x"]}
        # delivered_at changes and re-reading already-read rows announce nothing
        await sql.execute("UPDATE herald.notifications SET delivered_at = now(), read_at = now() "
                          "WHERE id = ANY($1::bigint[])", ids[:2])
        await asyncio.sleep(0.3)
        assert _drain(queue) == []
    finally:
        await listener.close()


@pytest.mark.parametrize(
    "columns, values, constraint",
    [
        ("user_id, title", "(NULL, 'x')", "user_id"),
        ("user_id, title", "('', 'x')", "ck_notifications_user_id_length"),
        ("user_id, title", f"('{'u' * 256}', 'x')", "ck_notifications_user_id_length"),
        ("user_id", "('someone')", "title"),
        ("user_id, title", "('someone', '')", "ck_notifications_title_length"),
        ("user_id, title, body", f"('someone', 'x', '{'b' * 10001}')",
         "ck_notifications_body_length"),
        ("user_id, title, data", "('someone', 'x', '[1, 2]')", "ck_notifications_data_is_object"),
        ("user_id, title, data", "('someone', 'x', '\"text\"')",
         "ck_notifications_data_is_object"),
        ("user_id, title, link", "('someone', 'x', 'javascript:alert(1)')",
         "ck_notifications_link_url"),
        ("user_id, title, link", "('someone', 'x', '//evil.example/')",
         "ck_notifications_link_url"),
    ],
)
async def test_bad_rows_are_rejected_with_a_named_constraint(
    database_url: str, sql: asyncpg.Connection, columns: str, values: str, constraint: str
) -> None:
    listener, queue = await listen(database_url)
    try:
        before = await sql.fetchval("SELECT count(*) FROM herald.notifications")
        with pytest.raises(asyncpg.IntegrityConstraintViolationError) as err:
            await sql.execute(f"INSERT INTO herald.notifications ({columns}) VALUES {values}")
        assert constraint in str(err.value)
        assert await sql.fetchval("SELECT count(*) FROM herald.notifications") == before
        await asyncio.sleep(0.2)
        assert _drain(queue) == []
    finally:
        await listener.close()


async def test_data_too_large_is_rejected(sql: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="ck_notifications_data_size"):
        await sql.execute("INSERT INTO herald.notifications (user_id, title, data) "
                          "VALUES ('someone', 'x', $1::jsonb)", {"blob": "x" * 20000})


async def test_rows_cannot_move_to_another_user_or_seq(
    sql: asyncpg.Connection, user: str
) -> None:
    row = await insert(sql, user, "mine")
    with pytest.raises(asyncpg.CheckViolationError, match="cannot be changed"):
        await sql.execute("UPDATE herald.notifications SET user_id = 'thief' WHERE id = $1",
                          row["id"])
    with pytest.raises(asyncpg.CheckViolationError):
        await sql.execute("UPDATE herald.notifications SET seq = 99 WHERE id = $1", row["id"])


async def test_returning_and_defaults(sql: asyncpg.Connection, user: str) -> None:
    row = await sql.fetchrow(
        "INSERT INTO herald.notifications (user_id, title, seq) VALUES ($1, 'x', 77) "
        "RETURNING id, seq, data, created_at, delivered_at, read_at", user)
    assert row["seq"] == 1  # a client-supplied seq is overwritten by the trigger
    assert row["data"] == {} and row["created_at"] is not None
    assert row["delivered_at"] is None and row["read_at"] is None


def test_migrations_upgrade_downgrade_and_alembic_cli_agree(
    make_database: Callable[[], str],
) -> None:
    """`alembic upgrade head` from the repo root, `downgrade base`, and `herald migrate`."""
    url = make_database()
    env = {**os.environ, "HERALD_DATABASE_URL": url}
    alembic = [sys.executable, "-m", "alembic"]
    subprocess.run([*alembic, "upgrade", "head"], cwd=ROOT, env=env, check=True,
                   capture_output=True)

    async def tables() -> set[str]:
        conn = await asyncpg.connect(db.asyncpg_dsn(url))
        try:
            rows = await conn.fetch("SELECT table_name FROM information_schema.tables "
                                    "WHERE table_schema = 'herald'")
            schemas = await conn.fetchval(
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'herald'")
            if rows:
                await schema.check_at_head(conn)
            return {r["table_name"] for r in rows} | ({"<schema>"} if schemas else set())
        finally:
            await conn.close()

    assert asyncio.run(tables()) == HEAD_TABLES
    check = subprocess.run([*alembic, "check"], cwd=ROOT, env=env, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr  # models match the migration
    subprocess.run([*alembic, "downgrade", "base"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    assert asyncio.run(tables()) == set()
    herald = subprocess.run([sys.executable, "-m", "app.cli", "migrate", "--database-url", url],
                            cwd="/", env=os.environ, capture_output=True, text=True)
    assert herald.returncode == 0, herald.stderr
    assert asyncio.run(tables()) == HEAD_TABLES


async def test_schema_check_refuses_a_database_not_at_head(
    make_database: Callable[[], str],
) -> None:
    url = make_database()
    conn = await asyncpg.connect(db.asyncpg_dsn(url))
    try:
        with pytest.raises(schema.SchemaError, match="herald migrate"):
            await schema.check_at_head(conn)
        await conn.execute("CREATE TABLE public.herald_alembic_version (version_num text)")
        await conn.execute("INSERT INTO public.herald_alembic_version VALUES ('0000')")
        with pytest.raises(schema.SchemaError, match="revision 0000"):
            await schema.check_at_head(conn)
    finally:
        await conn.close()


def test_lifecycle_revisions_on_a_populated_table(make_database: Callable[[], str]) -> None:
    """0003 -> head on a table with rows: the table is not rewritten (same file node),
    the new check is validated and the new indexes are valid; the triggers work at each
    step down and up again (insert takes the next seq and is announced; a read is
    announced in that revision's format)."""
    url = make_database()
    schema.upgrade(url, "0003")

    async def state(step: str) -> dict[str, Any]:
        conn = await asyncpg.connect(db.asyncpg_dsn(url))
        if step == "fill":
            await conn.execute("INSERT INTO herald.notifications (user_id, title) "
                               "SELECT 'pop', 'n' || g FROM generate_series(1, 2000) g")
        listener, queue = await listen(url)
        try:
            row = await conn.fetchrow("INSERT INTO herald.notifications (user_id, title) "
                                      "VALUES ('pop', $1) RETURNING id, seq", step)
            await conn.execute("UPDATE herald.notifications SET read_at = now() "
                               "WHERE id = $1", row["id"])
            events = [json.loads(await asyncio.wait_for(queue.get(), 5)) for _ in range(2)]
            return {
                "seq": row["seq"], "events": events,
                "filenode": await conn.fetchval(
                    "SELECT relfilenode FROM pg_class WHERE oid = 'herald.notifications'"
                    "::regclass"),
                "invalid": await conn.fetchval(
                    "SELECT count(*) FROM pg_index WHERE indrelid = "
                    "'herald.notifications'::regclass AND NOT indisvalid") + await conn.fetchval(
                    "SELECT count(*) FROM pg_constraint WHERE conrelid = "
                    "'herald.notifications'::regclass AND NOT convalidated"),
                "version": await conn.fetchval("SELECT version_num FROM herald_alembic_version"),
            }
        finally:
            await listener.close()
            await conn.close()

    before = asyncio.run(state("fill"))
    assert before["seq"] == 2001 and before["version"] == "0003"
    assert before["events"][1] == {"k": "read", "u": "pop", "ids": [before["events"][1]["ids"][0]]}
    assert before["events"][0] == {"k": "new", "u": {"pop": 2001}}
    schema.upgrade(url, "head")
    head = asyncio.run(state("head"))
    assert head["version"] == schema.head_revision() and head["seq"] == 2002
    assert head["filenode"] == before["filenode"]  # not rewritten
    assert head["invalid"] == 0
    assert head["events"][0] == {"k": "new", "u": {"pop": 2002}}
    assert set(head["events"][1]) == {"k", "u", "ids", "x"}  # 0004's format
    for revision, seq in (("0004", 2003), ("0003", 2004)):
        command.downgrade(schema.alembic_config(url), revision)
        step = asyncio.run(state(revision))
        assert (step["version"], step["seq"]) == (revision, seq)
        assert step["events"][0] == {"k": "new", "u": {"pop": seq}}
        assert ("x" in step["events"][1]) == (revision == "0004")
    schema.upgrade(url, "head")
    assert asyncio.run(state("again"))["seq"] == 2005


# Everything a revision defines, as comparable text: a step down must restore exactly
# what the revision below created (function bodies compared without comments or layout).
FINGERPRINT = r"""
SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') '
       || regexp_replace(regexp_replace(pg_get_functiondef(p.oid), '--[^\n]*', '', 'g'),
                         '\s+', ' ', 'g')
FROM pg_proc p WHERE p.pronamespace = 'herald'::regnamespace
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid) FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace = 'herald'::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
WHERE connamespace = 'herald'::regnamespace
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'herald'::regnamespace
UNION ALL
SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' '
       || is_nullable || ' ' || coalesce(column_default, '')
FROM information_schema.columns WHERE table_schema = 'herald'
UNION ALL
SELECT 'table ' || relname || ' ' || relpersistence::text || ' '
       || coalesce(array_to_string(reloptions, ','), '')
FROM pg_class WHERE relnamespace = 'herald'::regnamespace AND relkind = 'r'
"""


def _revisions() -> list[str]:
    """Every revision, base first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(schema.alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


async def _fingerprint(url: str) -> set[str]:
    conn = await asyncpg.connect(db.asyncpg_dsn(url))
    try:
        return {r[0] for r in await conn.fetch(FINGERPRINT)}
    finally:
        await conn.close()


async def _triggers_work(url: str, step: str) -> dict[str, Any]:
    """Insert a row for each of two users and mark one read: each insert is announced
    with its seq, the read is announced, and the rows and counters are still all there."""
    conn = await asyncpg.connect(db.asyncpg_dsn(url))
    listener, queue = await listen(url)
    try:
        seqs = {}
        for user in ("ann", "bob"):
            seqs[user] = await conn.fetchval(
                "INSERT INTO herald.notifications (user_id, title) VALUES ($1, $2) "
                "RETURNING seq", user, step)
        await conn.execute("UPDATE herald.notifications SET read_at = now() "
                           "WHERE user_id = 'ann' AND seq = $1", seqs["ann"])
        events = [json.loads(await asyncio.wait_for(queue.get(), 5)) for _ in range(3)]
        assert events[0] == {"k": "new", "u": {"ann": seqs["ann"]}}, (step, events)
        assert events[1] == {"k": "new", "u": {"bob": seqs["bob"]}}, (step, events)
        assert events[2]["k"] == "read" and events[2]["u"] == "ann", (step, events)
        return {"seqs": seqs,
                "rows": await conn.fetchval("SELECT count(*) FROM herald.notifications"),
                "version": await conn.fetchval(
                    "SELECT version_num FROM herald_alembic_version")}
    finally:
        await listener.close()
        await conn.close()


def test_every_revision_steps_down_and_up_on_a_populated_database(
    make_database: Callable[[], str],
) -> None:
    """head -> 0001 one revision at a time, then back up one at a time, on a database
    with rows: after every step the schema is exactly what upgrading an empty database
    to that revision gives, the triggers work (inserts take the next seq and are
    announced, reads are announced) and no row is lost."""
    revisions = _revisions()
    assert revisions[0] == "0001" and revisions[-1] == schema.head_revision()
    reference = make_database()
    expected: dict[str, set[str]] = {}
    for revision in revisions:
        schema.upgrade(reference, revision)
        expected[revision] = asyncio.run(_fingerprint(reference))

    url = make_database()
    schema.upgrade(url)

    async def fill() -> None:
        conn = await asyncpg.connect(db.asyncpg_dsn(url))
        try:
            await conn.execute("INSERT INTO herald.notifications (user_id, title) "
                               "SELECT u, 'n' || g FROM unnest(ARRAY['ann', 'bob']) u, "
                               "generate_series(1, 300) g")
            await conn.execute("UPDATE herald.notifications SET read_at = now() "
                               "WHERE seq % 3 = 0")
        finally:
            await conn.close()

    asyncio.run(fill())
    last = asyncio.run(_triggers_work(url, "head"))
    assert last["seqs"] == {"ann": 301, "bob": 301}
    path = [*reversed(revisions[:-1]), *revisions[1:]]  # down to 0001, then up to head
    for revision in path:
        config = schema.alembic_config(url)
        if revisions.index(revision) < revisions.index(last["version"]):
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)
        assert asyncio.run(_fingerprint(url)) == expected[revision], revision
        step = asyncio.run(_triggers_work(url, revision))
        assert step["version"] == revision
        assert step["seqs"] == {u: s + 1 for u, s in last["seqs"].items()}, revision
        assert step["rows"] == last["rows"] + 2, revision
        last = step
