-- The current definition of herald.guard_identity (head revision). Migrations keep frozen
-- copies; tests/test_sql_files.py holds this file equal to the migrated schema.

-- Runs as its caller. EXECUTE: nobody but herald_owner (a trigger function: EXECUTE is checked only when a trigger is created).
CREATE OR REPLACE FUNCTION herald.guard_identity()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    IF NEW.id <> OLD.id OR NEW.user_id <> OLD.user_id OR NEW.seq <> OLD.seq THEN
        RAISE EXCEPTION 'herald.notifications: id, user_id and seq cannot be changed'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$function$;
REVOKE ALL ON FUNCTION herald.guard_identity() FROM PUBLIC, herald_writer, herald_node;
