#!/bin/sh
# Runs once, when the TimescaleDB container initialises an empty data volume (mounted
# into /docker-entrypoint-initdb.d/ by the compose files, after the image's own
# TimescaleDB scripts). Creates the read-only login Grafana uses: SELECT on every table
# and view that POSTGRES_USER (the role `beiflow db migrate` runs as) creates later.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner="$POSTGRES_USER" -v db="$POSTGRES_DB" \
    -v reader="${GRAFANA_DB_USER:-grafana_reader}" \
    -v reader_password="${GRAFANA_DB_PASSWORD:?set GRAFANA_DB_PASSWORD}" <<'SQL'
CREATE ROLE :"reader" LOGIN PASSWORD :'reader_password';
GRANT CONNECT ON DATABASE :"db" TO :"reader";
GRANT USAGE ON SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" GRANT SELECT ON TABLES TO :"reader";
SQL
