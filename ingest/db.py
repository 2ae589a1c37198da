"""Database schema management: versioned SQL migrations and optional TimescaleDB features."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: pg_advisory_lock key so concurrent `beiflow db migrate` runs serialise.
_LOCK_KEY = 0x6265_6966  # "beif"


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned SQL file under schemas/migrations/."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file, to notice an applied migration edited afterwards."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    """The database's schema history disagrees with the shipped migrations."""


def load_migrations() -> list[Migration]:
    """The shipped migrations in version order."""
    found = []
    for entry in resources.files("beiflow.schemas").joinpath("migrations").iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {versions}")
    return found


def migrate(dsn: str) -> list[int]:
    """Apply pending migrations, each in its own transaction; return the versions applied."""
    applied: list[int] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done: dict[int, str] = dict(
                conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
            for mig in load_migrations():
                if mig.version in done:
                    if done[mig.version] != mig.checksum:
                        raise MigrationError(
                            f"migration {mig.version:04d}_{mig.name} was changed after it was "
                            "applied; add a new migration instead"
                        )
                    continue
                with conn.transaction():
                    conn.execute(mig.sql.encode())  # type: ignore[call-overload]
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum)"
                        " VALUES (%s, %s, %s)",
                        (mig.version, mig.name, mig.checksum),
                    )
                log.info("applied migration %04d_%s", mig.version, mig.name)
                applied.append(mig.version)
            enable_optional_features(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def timescale_license(conn: psycopg.Connection) -> str:
    """``apache`` (Debian's build) or ``timescale`` (community edition)."""
    row = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
    return (row[0] if row else None) or "apache"


#: Community-edition features per hypertable: (table, segment-by columns, compress after).
_COMPRESSION = (
    ("positions", "device_id", "7 days"),
    ("sensor_readings", "device_id, metric", "7 days"),
    ("rfid_reads", "epc", "7 days"),
)
#: Rollups that are plain views on the Apache edition and continuous aggregates where
#: the server has them: (name, bucket width, refresh lag).
_ROLLUPS = (("sensor_1m", "1 minute", "2 minutes"), ("sensor_1h", "1 hour", "1 hour"))
_ROLLUP_SELECT = (
    "SELECT time_bucket(INTERVAL '{width}', time) AS bucket, device_id, metric,"
    " count(*) AS samples, min(value) AS min, max(value) AS max, avg(value) AS avg"
    " FROM sensor_readings GROUP BY bucket, device_id, metric"
)


def enable_optional_features(conn: psycopg.Connection) -> list[str]:
    """Compression policies and continuous aggregates where the server's edition has them
    (not testable on Debian's Apache build, which this code then leaves alone)."""
    if timescale_license(conn) != "timescale":
        log.info("TimescaleDB Apache edition: compression and policies not available, skipped")
        return []
    enabled = []
    for table, segment_by, after in _COMPRESSION:
        conn.execute(
            sql.SQL(
                "ALTER TABLE {} SET (timescaledb.compress, timescaledb.compress_segmentby = {})"
            ).format(sql.Identifier(table), sql.Literal(segment_by))
        )
        conn.execute(
            "SELECT add_compression_policy(%s, %s::interval, if_not_exists => true)",
            (table, after),
        )
        enabled.append(f"compression:{table}")
    for name, width, lag in _ROLLUPS:
        is_cagg = conn.execute(
            "SELECT 1 FROM timescaledb_information.continuous_aggregates WHERE view_name = %s",
            (name,)).fetchone()
        if is_cagg:
            continue
        with conn.transaction():
            conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(name)))
        # continuous aggregates cannot be created inside a transaction block
        conn.execute(sql.SQL(
            "CREATE MATERIALIZED VIEW {} WITH (timescaledb.continuous) AS {} WITH NO DATA"
        ).format(sql.Identifier(name), sql.SQL(_ROLLUP_SELECT.format(width=width))))
        conn.execute(
            "SELECT add_continuous_aggregate_policy(%s, start_offset => INTERVAL '3 days',"
            " end_offset => %s::interval, schedule_interval => %s::interval,"
            " if_not_exists => true)", (name, lag, width))
        enabled.append(f"continuous_aggregate:{name}")
    return enabled


def schema_version(dsn: str) -> int:
    """The highest applied migration version (0 for an empty database)."""
    with psycopg.connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return 0
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        return int(row[0]) if row else 0


#: What the ingest role may do, table by table: INSERT everything the sink writes, UPDATE
#: only where it upserts (devices, the positions merge of split epochs, rfid_tags), SELECT
#: what the collector and the live map read. No DELETE, no TRUNCATE, no DDL.
INGEST_GRANTS: dict[str, tuple[str, ...]] = {
    "devices": ("SELECT", "INSERT", "UPDATE"),
    "positions": ("SELECT", "INSERT", "UPDATE"),
    "rfid_tags": ("SELECT", "INSERT", "UPDATE"),
    "sensor_readings": ("SELECT", "INSERT"),
    "rfid_reads": ("SELECT", "INSERT"),
    "dead_letters": ("SELECT", "INSERT"),
    "geofence_events": ("SELECT", "INSERT"),
    "anomalies": ("SELECT", "INSERT"),
    "geofences": ("SELECT",),
    "schema_migrations": ("SELECT",),
    "latest_positions": ("SELECT",),
}
_INGEST_SEQUENCES = ("dead_letters_id_seq",)


def grant_ingest(dsn: str, role: str) -> list[str]:
    """Give an existing role exactly what ``beiflow ingest`` needs (run as the schema owner,
    after ``migrate``): CONNECT and TEMPORARY on the database (the sink stages rows in temp
    tables), USAGE on the schema, the table privileges of ``INGEST_GRANTS``. Returns the
    statements run. Nothing is granted that allows DDL; on PostgreSQL 14 and older PUBLIC
    itself may CREATE in schema ``public``, which this reports but leaves alone."""
    done: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        who = sql.Identifier(role)
        db = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        stmts = [
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(db), who),
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(who),
        ]
        for table, privs in INGEST_GRANTS.items():
            stmts.append(sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in privs), sql.Identifier(table), who))
        for seq in _INGEST_SEQUENCES:
            stmts.append(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
                sql.Identifier(seq), who))
        for stmt in stmts:
            conn.execute(stmt)
            done.append(stmt.as_string(conn))
        row = conn.execute("SELECT has_schema_privilege(%s, 'public', 'CREATE')",
                           (role,)).fetchone()
        if row and row[0]:
            log.warning("role %s can CREATE in schema public (PUBLIC has CREATE there on "
                        "PostgreSQL < 15): REVOKE CREATE ON SCHEMA public FROM PUBLIC", role)
    return done
