"""The notification frame is rendered by PostgreSQL alone (``herald.render_frame``, for
the fetch and the inline frame) and the history item next to it (``store.HISTORY_ITEM``).
Both are held here to what the protocol says, computed in Python from the row, down to
the timestamps' text, for any row."""

from __future__ import annotations

import json
from typing import Any, Mapping

from app import db, protocol
from app.store import Store


def expected_frame(row: Mapping[str, Any]) -> dict[str, Any]:
    """docs/protocol.md's notification frame of ``row``, written in Python."""
    return {"type": "notification", "id": row["id"], "seq": row["seq"],
            "title": row["title"], "body": row["body"], "data": row["data"],
            "link": row["link"], "category": row["category"], "group_key": row["group_key"],
            "created_at": protocol.iso(row["created_at"]),
            "expires_at": protocol.iso(row["expires_at"]),
            "read": row["read_at"] is not None, "archived": row["archived_at"] is not None}

ROWS = [
    # title, body, data, link, category, created_at, expires_at, group_key
    ("plain", None, {}, None, None, "now()", "NULL", None),
    ('quotes " and \\ backslash', "line\nbreak\ttab\u0001ctl", {"a": [1, 2.5, None, True]},
     "/orders/1?x=1&y=2", "orders", "'2020-01-02T03:04:05Z'", "'2099-01-01T00:00:00.5Z'",
     "pr-12"),
    ("您的订单已发货 🚚 émoji", "\u2028 separators \u2029", {"nested": {"k": "ü"}, "n": -1e3},
     "https://shop.example/ü", "c" * 64, "'2026-11-27T12:00:00.000001Z'",
     "'2099-06-01T10:00:00+02:00'", 'g "ü" \\ ' + "g" * 192),
]


async def test_sql_and_python_frames_agree(database_url, sql, user) -> None:
    for title, body, data, link, category, created, expires, group_key in ROWS:
        await sql.execute(
            "INSERT INTO herald.notifications (user_id, title, body, data, link, category, "
            f"created_at, expires_at, group_key) VALUES ($1, $2, $3, $4::jsonb, $5, $6, "
            f"{created}, {expires}, $7)", user, title, body, data, link, category, group_key)
    await sql.execute("UPDATE herald.notifications SET read_at = now(), archived_at = now() "
                      "WHERE user_id = $1 AND seq = 2", user)
    pool = await db.create_pool(database_url, "herald-test-frames")
    try:
        store = Store(pool)
        pushed = await store.fetch_after({user: 0})
        pages = [await store.history(user, 10, None, False, archived=archived)
                 for archived in (False, True)]
    finally:
        await pool.close()
    listed = await sql.fetch("SELECT * FROM herald.notifications WHERE user_id = $1 "
                             "ORDER BY seq", user)
    assert len(pushed) == len(listed) == len(ROWS)
    for frame_row, row in zip(pushed, listed, strict=True):
        from_sql = json.loads(frame_row["frame"])
        assert from_sql == expected_frame(row)
        assert list(from_sql) == list(expected_frame(row))  # group_key after category
    assert json.loads(pushed[1]["frame"])["created_at"] == "2020-01-02T03:04:05Z"
    assert json.loads(pushed[1]["frame"])["read"] is True
    history = sorted((json.loads(item) for page in pages for item in page.items),
                     key=lambda item: item["seq"])
    for item, row in zip(history, listed, strict=True):
        frame = expected_frame(row)
        del frame["type"]
        expected = {**frame, "delivered_at": protocol.iso(row["delivered_at"]),
                    "read_at": protocol.iso(row["read_at"]),
                    "archived_at": protocol.iso(row["archived_at"])}
        assert item == expected and list(item) == list(expected)
