-- The current definition of herald.render_frame (head revision). Migrations keep frozen
-- copies; tests/test_sql_files.py holds this file equal to the migrated schema.
--
-- The notification frame (docs/protocol.md), rendered by PostgreSQL: the nodes' fetch
-- (app/store.py) and the inline frame of notify_frame() both call it. A SQL-standard
-- body: parsed once, when created (no search_path applies when it runs), and inlined by
-- the planner into the queries that call it. Timestamps as Python's isoformat writes
-- them in UTC: a Z, and microseconds only when there are any.

-- Runs as its caller. EXECUTE: herald_node.
CREATE OR REPLACE FUNCTION herald.render_frame(n herald.notifications) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT json_build_object(
        'type', 'notification', 'id', n.id, 'seq', n.seq, 'title', n.title,
        'body', n.body, 'data', n.data, 'link', n.link, 'category', n.category,
        'group_key', n.group_key,
        'created_at', CASE WHEN extract(microseconds FROM n.created_at)::bigint % 1000000 = 0
                           THEN to_char((n.created_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                           ELSE to_char((n.created_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END,
        'expires_at', CASE WHEN extract(microseconds FROM n.expires_at)::bigint % 1000000 = 0
                           THEN to_char((n.expires_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                           ELSE to_char((n.expires_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END,
        'read', n.read_at IS NOT NULL, 'archived', n.archived_at IS NOT NULL)::text;
END;
REVOKE ALL ON FUNCTION herald.render_frame(herald.notifications) FROM PUBLIC, herald_writer, herald_node;
GRANT EXECUTE ON FUNCTION herald.render_frame(herald.notifications) TO herald_node;
