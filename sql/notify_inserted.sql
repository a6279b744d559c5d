-- The current definition of herald.notify_inserted (head revision). Migrations keep frozen
-- copies; tests/test_sql_files.py holds this file equal to the migrated schema.

-- Runs as its owner, herald_owner (SECURITY DEFINER). EXECUTE: nobody but herald_owner (a trigger function: EXECUTE is checked only when a trigger is created).
CREATE OR REPLACE FUNCTION herald.notify_inserted()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
 SET debug_print_plan TO 'off'
 SET debug_print_parse TO 'off'
 SET debug_print_rewritten TO 'off'
 SET trace_notify TO 'off'
 SET client_min_messages TO 'warning'
AS $function$
DECLARE
    users text[];
    seqs bigint[];
BEGIN
    IF TG_RELID <> 'herald.notifications'::regclass OR TG_OP <> 'INSERT'
       OR TG_LEVEL <> 'STATEMENT' THEN
        RAISE EXCEPTION 'herald.notify_inserted() runs only as herald.notifications'' trigger';
    END IF;
    IF herald.relay_batched() THEN
        -- Visible to the relay when this transaction commits, gone if it rolls back.
        INSERT INTO herald.relay_pending (user_id, seq)
        SELECT user_id, max(seq) FROM inserted GROUP BY user_id;
        RETURN NULL;
    END IF;
    SELECT array_agg(user_id ORDER BY herald.shard_of(user_id), user_id), array_agg(seq ORDER BY herald.shard_of(user_id), user_id) INTO users, seqs
    FROM (SELECT user_id, max(seq) AS seq FROM inserted GROUP BY user_id) AS latest;
    PERFORM herald.announce(users, seqs);
    RETURN NULL;
END
$function$;
REVOKE ALL ON FUNCTION herald.notify_inserted() FROM PUBLIC, herald_writer, herald_node;
