-- The current definition of herald.announce (head revision). Migrations keep frozen
-- copies; tests/test_sql_files.py holds this file equal to the migrated schema.

-- Runs as its caller. EXECUTE: herald_node.
CREATE OR REPLACE FUNCTION herald.announce(users text[], seqs bigint[])
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    item text;
    chunk text := '';
    channel text := '';
    next_channel text;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(users), 0) LOOP
        item := to_json(users[i])::text || ':' || seqs[i];
        next_channel := 'herald_' || herald.shard_of(users[i]);
        IF chunk <> '' AND (next_channel <> channel
                            OR octet_length(chunk) + octet_length(item) > 7000) THEN
            PERFORM pg_notify(channel, '{"k":"new","u":{' || chunk || '}}');
            chunk := '';
        END IF;
        channel := next_channel;
        chunk := CASE WHEN chunk = '' THEN item ELSE chunk || ',' || item END;
    END LOOP;
    IF chunk <> '' THEN
        PERFORM pg_notify(channel, '{"k":"new","u":{' || chunk || '}}');
    END IF;
END
$function$;
REVOKE ALL ON FUNCTION herald.announce(text[], bigint[]) FROM PUBLIC, herald_writer, herald_node;
GRANT EXECUTE ON FUNCTION herald.announce(text[], bigint[]) TO herald_node;
