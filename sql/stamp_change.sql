-- The current definition of herald.stamp_change (head revision). Migrations keep frozen
-- copies; tests/test_sql_files.py holds this file equal to the migrated schema.

-- Runs as its caller. EXECUTE: nobody but herald_owner (a trigger function: EXECUTE is checked only when a trigger is created).
CREATE OR REPLACE FUNCTION herald.stamp_change()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    IF (OLD.read_at IS NULL) <> (NEW.read_at IS NULL) THEN
        NEW.read_xid := pg_current_xact_id()::text::bigint;
    END IF;
    IF (OLD.archived_at IS NULL) <> (NEW.archived_at IS NULL) THEN
        NEW.archive_xid := pg_current_xact_id()::text::bigint;
    END IF;
    RETURN NEW;
END
$function$;
REVOKE ALL ON FUNCTION herald.stamp_change() FROM PUBLIC, herald_writer, herald_node;
