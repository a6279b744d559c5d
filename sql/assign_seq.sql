-- The current definition of herald.assign_seq (head revision). Migrations keep frozen
-- copies; tests/test_sql_files.py holds this file equal to the migrated schema.

-- Runs as its owner, herald_owner (SECURITY DEFINER). EXECUTE: nobody but herald_owner (a trigger function: EXECUTE is checked only when a trigger is created).
CREATE OR REPLACE FUNCTION herald.assign_seq()
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
    current_seq bigint;
BEGIN
    IF TG_RELID <> 'herald.notifications'::regclass OR TG_OP <> 'INSERT'
       OR TG_LEVEL <> 'ROW' OR TG_WHEN <> 'BEFORE' THEN
        RAISE EXCEPTION 'herald.assign_seq() runs only as herald.notifications'' trigger';
    END IF;
    -- Whatever id the INSERT named (OVERRIDING SYSTEM VALUE included): a future id would
    -- make somebody else's insert fail on the primary key.
    NEW.id := nextval('herald.notifications_id_seq');
    IF NEW.user_id IS NULL OR char_length(NEW.user_id) NOT BETWEEN 1 AND 255 THEN
        -- Leave the row to the table's own NOT NULL / CHECK constraints, which name the
        -- offending column; never create a counter for an invalid user id.
        NEW.seq := 0;
        RETURN NEW;
    END IF;
    IF NEW.data IS NULL THEN
        NEW.data := '{}'::jsonb;
    END IF;
    IF NEW.idempotency_key IS NULL THEN
        INSERT INTO herald.user_counters AS c (user_id, last_seq)
        VALUES (NEW.user_id, 1)
        ON CONFLICT (user_id) DO UPDATE SET last_seq = c.last_seq + 1
        RETURNING c.last_seq INTO NEW.seq;
        RETURN NEW;
    END IF;
    -- Keyed: lock the user's counter, then look for the key, then take a seq.
    INSERT INTO herald.user_counters (user_id, last_seq) VALUES (NEW.user_id, 0)
    ON CONFLICT (user_id) DO NOTHING;
    SELECT last_seq INTO current_seq FROM herald.user_counters
    WHERE user_id = NEW.user_id FOR UPDATE;
    IF EXISTS (SELECT 1 FROM herald.notifications
               WHERE user_id = NEW.user_id AND idempotency_key = NEW.idempotency_key) THEN
        RETURN NULL;  -- already published: skip silently, the caller reads the original
    END IF;
    UPDATE herald.user_counters SET last_seq = current_seq + 1 WHERE user_id = NEW.user_id;
    NEW.seq := current_seq + 1;
    RETURN NEW;
END
$function$;
REVOKE ALL ON FUNCTION herald.assign_seq() FROM PUBLIC, herald_writer, herald_node;
