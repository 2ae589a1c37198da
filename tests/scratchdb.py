"""A throwaway, migrated TimescaleDB database (tests, fault suite and benchmarks)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from beiflow.ingest.db import migrate


def _drop(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


@contextmanager
def scratch_database(admin_dsn: str, name: str) -> Iterator[str]:
    """Create ``name`` (replacing a leftover of that name), migrate it, yield its DSN, and
    drop it afterwards."""
    _drop(admin_dsn, name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
        migrate(dsn)
        yield dsn
    finally:
        _drop(admin_dsn, name)
