-- The current definition of herald.muted_changed (head revision). Migrations keep frozen
-- copies; tests/test_sql_files.py holds this file equal to the migrated schema.
--
-- herald.muted_categories' two statement triggers (revision 0012), AFTER INSERT and AFTER
-- DELETE, with the changed rows as transition table changed_rows. For each user whose
-- rows changed: on an insert, the limit of 100 muted categories (under a per-user
-- transaction advisory lock, classid 1836414053, "mute", so concurrent inserts at READ COMMITTED
-- count each other's committed rows); then {"k":"prefs","u":user} on the user's shard
-- channel. The payload is a hint: nodes read the list from the table.
-- Not SECURITY DEFINER: it needs nothing its callers (herald_writer, herald_node) lack.

-- Runs as its caller. EXECUTE: nobody but herald_owner (a trigger function: EXECUTE is checked only when a trigger is created).
CREATE OR REPLACE FUNCTION herald.muted_changed()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    rec record;
BEGIN
    FOR rec IN SELECT DISTINCT user_id FROM changed_rows ORDER BY user_id LOOP
        IF TG_OP = 'INSERT' THEN
            -- Concurrent inserts for one user wait here, and each counts (a statement of
            -- its own, so a fresh snapshot at READ COMMITTED) what the others committed.
            PERFORM pg_advisory_xact_lock(1836414053, hashtext(rec.user_id));
            IF (SELECT count(*) FROM herald.muted_categories AS m
                WHERE m.user_id = rec.user_id) > 100 THEN
                RAISE EXCEPTION 'herald.muted_categories: a user mutes at most % categories',
                    100
                    USING ERRCODE = 'check_violation', SCHEMA = 'herald',
                          TABLE = 'muted_categories', CONSTRAINT = 'muted_categories_limit';
            END IF;
        END IF;
        PERFORM pg_notify('herald_' || ((('x' || substr(md5(convert_to(rec.user_id, 'UTF8')), 1, 8))::bit(32)::bigint % 64)),
                          json_build_object('k', 'prefs', 'u', rec.user_id)::text);
    END LOOP;
    RETURN NULL;
END
$function$;
REVOKE ALL ON FUNCTION herald.muted_changed() FROM PUBLIC, herald_writer, herald_node;
