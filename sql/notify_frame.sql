-- The current definition of herald.notify_frame (head revision). Migrations keep frozen
-- copies; tests/test_sql_files.py holds this file equal to the migrated schema.

-- Runs as its owner, herald_owner (SECURITY DEFINER). EXECUTE: nobody but herald_owner (a trigger function: EXECUTE is checked only when a trigger is created).
CREATE OR REPLACE FUNCTION herald.notify_frame()
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
    key record;
    payload text;
    mac text;
BEGIN
    IF TG_RELID <> 'herald.notifications'::regclass OR TG_OP <> 'INSERT'
       OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'herald.notify_frame() runs only as herald.notifications'' trigger';
    END IF;
    IF herald.relay_batched() THEN
        RETURN NULL;  -- the relay's batches keep NOTIFY out of the writers' commits
    END IF;
    SELECT json_build_object('k', 'frame', 'u', n.user_id, 's', n.seq,
                             't', extract(epoch FROM n.created_at),
                             'f', herald.render_frame(n))::text
    INTO payload FROM herald.notifications AS n WHERE n.id = NEW.id AND n.expires_at IS NULL;
    SELECT channel, mac_inner, mac_outer INTO key FROM herald_private.bus_key WHERE id = 1;
    -- 8000 bytes is NOTIFY's cap, 64 of them the MAC; a larger frame is fetched.
    IF payload IS NOT NULL AND key.channel IS NOT NULL AND octet_length(payload) < 7800 THEN
        mac := encode(sha256(key.mac_outer || sha256(key.mac_inner
                                                     || convert_to(payload, 'UTF8'))), 'hex');
        PERFORM pg_notify(key.channel || '_' || herald.shard_of(NEW.user_id), mac || payload);
    END IF;
    RETURN NULL;
END
$function$;
REVOKE ALL ON FUNCTION herald.notify_frame() FROM PUBLIC, herald_writer, herald_node;
