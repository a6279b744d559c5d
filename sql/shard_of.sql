-- The current definition of herald.shard_of (head revision). Migrations keep frozen
-- copies; tests/test_sql_files.py holds this file equal to the migrated schema.
--
-- A user's shard (revision 0011): the first four bytes of the MD5 of the id's UTF-8
-- bytes, big-endian, modulo 64. A shard's announcements go on channel herald_<shard>
-- (and its inline frames on <private channel>_<shard>), so a node listens to the shards
-- of its own users only. app/shards.py and static/herald.js compute the same number.

-- Runs as its caller. EXECUTE: herald_node (and the owner's triggers).
CREATE OR REPLACE FUNCTION herald.shard_of(user_id text)
 RETURNS integer
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE STRICT
BEGIN ATOMIC
 SELECT ((((('x'::text || substr(md5(convert_to(user_id, 'UTF8'::name)), 1, 8)))::bit(32))::bigint % (64)::bigint))::integer AS int4;
END;
REVOKE ALL ON FUNCTION herald.shard_of(text) FROM PUBLIC, herald_writer, herald_node;
GRANT EXECUTE ON FUNCTION herald.shard_of(text) TO herald_node;
