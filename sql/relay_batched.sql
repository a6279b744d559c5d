-- The current definition of herald.relay_batched (head revision). Migrations keep frozen
-- copies; tests/test_sql_files.py holds this file equal to the migrated schema.

-- Runs as its caller. EXECUTE: nobody but herald_owner (a trigger function: EXECUTE is checked only when a trigger is created).
CREATE OR REPLACE FUNCTION herald.relay_batched()
 RETURNS boolean
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT coalesce((SELECT batched_until > clock_timestamp() FROM herald.relay WHERE id = 1),
                    false)
$function$;
REVOKE ALL ON FUNCTION herald.relay_batched() FROM PUBLIC, herald_writer, herald_node;
