-- The current definition of herald.notify_changed (head revision). Migrations keep frozen
-- copies; tests/test_sql_files.py holds this file equal to the migrated schema.

-- Runs as its caller. EXECUTE: nobody but herald_owner (a trigger function: EXECUTE is checked only when a trigger is created).
CREATE OR REPLACE FUNCTION herald.notify_changed()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    rec record;
    i integer;
    xid bigint;
BEGIN
    FOR rec IN
        SELECT a.user_id, c.kind, array_agg(a.id ORDER BY a.id) AS ids, max(a.seq) AS seq
        FROM after_rows a
        JOIN before_rows b ON a.id = b.id
        CROSS JOIN LATERAL (VALUES
            ('read', b.read_at IS NULL AND a.read_at IS NOT NULL),
            ('unread', b.read_at IS NOT NULL AND a.read_at IS NULL),
            ('archive', b.archived_at IS NULL AND a.archived_at IS NOT NULL),
            ('unarchive', b.archived_at IS NOT NULL AND a.archived_at IS NULL)
        ) AS c(kind, changed)
        WHERE c.changed
        GROUP BY a.user_id, c.kind
    LOOP
        -- The rows' read_xid or archive_xid, as stamp_change() set it.
        xid := pg_current_xact_id()::text::bigint;
        IF rec.kind = 'read' AND current_setting('herald.read_all', true) = rec.user_id THEN
            PERFORM pg_notify('herald_' || ((('x' || substr(md5(convert_to(rec.user_id, 'UTF8')), 1, 8))::bit(32)::bigint % 64)), json_build_object(
                'k', 'read', 'u', rec.user_id, 'all', true, 'seq', rec.seq, 'x', xid)::text);
        ELSE
            -- 300 ids of up to 19 digits stay far below the 8000-byte payload cap.
            FOR i IN 1 .. cardinality(rec.ids) BY 300 LOOP
                PERFORM pg_notify('herald_' || ((('x' || substr(md5(convert_to(rec.user_id, 'UTF8')), 1, 8))::bit(32)::bigint % 64)), json_build_object(
                    'k', rec.kind, 'u', rec.user_id, 'ids', rec.ids[i : i + 299],
                    'x', xid)::text);
            END LOOP;
        END IF;
    END LOOP;
    RETURN NULL;
END
$function$;
REVOKE ALL ON FUNCTION herald.notify_changed() FROM PUBLIC, herald_writer, herald_node;
