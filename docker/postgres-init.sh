#!/usr/bin/env bash
# PostgreSQL's first start (docker-entrypoint-initdb.d): the login role the nodes use,
# a member of herald_node and nothing else. The NOLOGIN roles are created here when
# missing so that it can join them before `alembic upgrade head` gives them their
# rights; the migration runs as the superuser, nodes and writers never do (README,
# "Roles"). A backend that publishes gets a login role of its own IN ROLE herald_writer.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v node_password="${HERALD_DB_PASSWORD:?set HERALD_DB_PASSWORD}" <<'SQL'
SELECT format('CREATE ROLE %I NOLOGIN', name)
FROM unnest(ARRAY['herald_owner', 'herald_writer', 'herald_node']) AS name
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) \gexec
SELECT 'CREATE ROLE herald_app LOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'herald_app') \gexec
ALTER ROLE herald_app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'node_password';
GRANT herald_node TO herald_app;
SQL
