"""sql/ holds the current definition of every function and trigger of schema herald, and
who may execute each function: each file, run in a transaction on a database at head,
changes nothing (definitions and grants), and every function has its file. A migration
that changes a function without its file (or the other way round) fails here."""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from tests.helpers import ROOT

SQL = ROOT / "sql"

FUNCTIONS = """
SELECT p.oid::regprocedure::text AS name,
       pg_get_functiondef(p.oid) || coalesce(p.proacl::text, 'PUBLIC') AS definition
FROM pg_proc p WHERE p.pronamespace = 'herald'::regnamespace
"""
TRIGGERS = """
SELECT t.tgname AS name, pg_get_triggerdef(t.oid) AS definition,
       t.tgrelid::regclass::text AS "table"
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace = 'herald'::regnamespace AND NOT t.tgisinternal
"""


async def _snapshot(conn: asyncpg.Connection, query: str) -> dict[str, str]:
    """name -> definition (a trigger's name is unique among Herald's tables)."""
    return {r["name"]: r["definition"] for r in await conn.fetch(query)}


class Rollback(Exception):
    """Leave the file's transaction without a trace."""


async def _after_running(conn: asyncpg.Connection, text: str, query: str,
                         before: str = "") -> dict[str, str]:
    """The definitions ``query`` reads after ``before`` and the file ran; rolled back."""
    seen: dict[str, str] = {}
    try:
        async with conn.transaction():
            if before:
                await conn.execute(before)
            await conn.execute(text)
            seen = await _snapshot(conn, query)
            raise Rollback
    except Rollback:
        pass
    return seen


async def test_every_function_file_is_the_head_definition(fresh: dict[str, Any]) -> None:
    conn = fresh["sql"]
    head = await _snapshot(conn, FUNCTIONS)
    covered: set[str] = set()
    files = sorted(p for p in SQL.glob("*.sql") if p.name != "triggers.sql")
    assert len(files) >= 11
    for path in files:
        text = path.read_text()
        names = set(re.findall(r"CREATE OR REPLACE FUNCTION herald\.(\w+)\(", text))
        assert names == {path.stem}, (path.name, names)
        # Everyone may execute everything, first: the file must say who may.
        wide = ("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA herald "
                "TO PUBLIC, herald_writer, herald_node")
        after = await _after_running(conn, text, FUNCTIONS, before=wide)
        mine = {name for name in head if name.startswith(f"herald.{path.stem}(")}
        assert mine and {n: after[n] for n in mine} == {n: head[n] for n in mine}, \
            f"{path.name} differs from the head schema"
        assert set(after) == set(head)
        covered |= mine
    assert covered == set(head), f"functions without a file: {sorted(set(head) - covered)}"


async def test_the_triggers_file_is_the_head_definition(fresh: dict[str, Any]) -> None:
    conn = fresh["sql"]
    head = await _snapshot(conn, TRIGGERS)
    tables = {r["name"]: r["table"] for r in await conn.fetch(TRIGGERS)}
    assert len(tables) == len(head)
    drop = "; ".join(f"DROP TRIGGER {name} ON {tables[name]}" for name in head)
    after = await _after_running(conn, (SQL / "triggers.sql").read_text(), TRIGGERS,
                                 before=drop)
    assert after == head
