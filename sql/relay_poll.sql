-- The current definition of herald.relay_poll (head revision). Migrations keep frozen
-- copies; tests/test_sql_files.py holds this file equal to the migrated schema.

-- Runs as its caller. EXECUTE: herald_node.
CREATE OR REPLACE FUNCTION herald.relay_poll(OUT announced integer, OUT last_id bigint)
 RETURNS record
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    users text[];
    seqs bigint[];
BEGIN
    -- Pointers of transactions still running are invisible here and stay for a later
    -- poll; the DELETE and the NOTIFYs commit together, so each is announced once.
    WITH taken AS (DELETE FROM herald.relay_pending RETURNING user_id, seq)
    SELECT array_agg(user_id ORDER BY herald.shard_of(user_id), user_id), array_agg(seq ORDER BY herald.shard_of(user_id), user_id), count(*)
    INTO users, seqs, announced
    FROM (SELECT user_id, max(seq) AS seq FROM taken GROUP BY user_id) AS latest;
    PERFORM herald.announce(users, seqs);
    -- The id sequence's position: the relay's measure of the insert rate.
    SELECT s.last_value INTO last_id FROM herald.notifications_id_seq AS s;
END
$function$;

-- Runs as its caller. EXECUTE: herald_node.
CREATE OR REPLACE FUNCTION herald.relay_poll(since pg_snapshot, OUT next pg_snapshot, OUT announced integer, OUT last_id bigint)
 RETURNS record
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    next := pg_current_snapshot();
    SELECT p.announced, p.last_id INTO announced, last_id FROM herald.relay_poll() AS p;
END
$function$;
REVOKE ALL ON FUNCTION herald.relay_poll() FROM PUBLIC, herald_writer, herald_node;
GRANT EXECUTE ON FUNCTION herald.relay_poll() TO herald_node;
REVOKE ALL ON FUNCTION herald.relay_poll(pg_snapshot) FROM PUBLIC, herald_writer, herald_node;
GRANT EXECUTE ON FUNCTION herald.relay_poll(pg_snapshot) TO herald_node;
