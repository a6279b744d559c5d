-- The current definition of herald.inline_candidate (head revision). Migrations keep frozen
-- copies; tests/test_sql_files.py holds this file equal to the migrated schema.

-- Runs as its caller. EXECUTE: herald_writer.
CREATE OR REPLACE FUNCTION herald.inline_candidate(id bigint)
 RETURNS boolean
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    IF coalesce(current_setting('herald.inline_id', true), '') <> '' THEN
        RETURN false;
    END IF;
    PERFORM set_config('herald.inline_id', id::text, true);  -- until the transaction ends
    RETURN true;
END
$function$;
REVOKE ALL ON FUNCTION herald.inline_candidate(bigint) FROM PUBLIC, herald_writer, herald_node;
GRANT EXECUTE ON FUNCTION herald.inline_candidate(bigint) TO herald_writer;
