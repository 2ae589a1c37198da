"""Fixtures: a private Mosquitto broker and a throwaway TimescaleDB database per session.

Integration tests run by default. They need the services that `make test` sets up;
when those are missing the tests fail with the reason instead of skipping silently.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from hypothesis import settings

from beiflow.ingest.broker import PrivateBroker
from beiflow.ingest.config import Config, load_config
from beiflow.ingest.metrics import Metrics
from tests.scratchdb import scratch_database

if TYPE_CHECKING:
    from beiflow.ingest.runner import Ingest

DATA = Path(__file__).parent / "data"

# CI runs the same examples every time (a failure there must be reproducible); local
# runs keep exploring new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def _admin_dsn() -> str:
    return os.environ.get("BEIFLOW_ADMIN_DSN", "postgresql://root@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def admin_dsn() -> str:
    """Superuser DSN of the cluster with TimescaleDB (written by scripts/setup.sh)."""
    dsn = _admin_dsn()
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL not reachable at {dsn}: run `make setup` first ({exc})")
    return dsn


@pytest.fixture(scope="session")
def db_dsn(admin_dsn: str) -> Iterator[str]:
    """A fresh database with the schema migrated, dropped after the session."""
    with scratch_database(admin_dsn, f"beiflow_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
                          ) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def broker() -> Iterator[PrivateBroker]:
    """A private Mosquitto with beiflow's limits on a free port."""
    with PrivateBroker(binary=os.environ.get("BEIFLOW_MOSQUITTO")) as b:
        yield b


@pytest.fixture
def topic_root() -> str:
    """A topic root of this test's own, so tests never see each other's messages."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def config(broker: PrivateBroker, db_dsn: str, topic_root: str) -> Config:
    """Config pointing at the private broker and test database, small fast batches."""
    cfg = load_config(env={}, overrides={
        "mqtt.url": broker.url, "db.dsn": db_dsn, "metrics.addr": "127.0.0.1:0",
        "mqtt.topic_root": topic_root, "mqtt.client_id": f"ingest-{topic_root}",
        "batch.max_age_ms": 50, "db.retry_s": 0.2,
    })
    return replace(cfg, nmea=replace(cfg.nmea, past_tolerance_s=10 * 365 * 86400.0))


@pytest.fixture
def run_ingest() -> Iterator[Callable[..., Ingest]]:
    """Start ingests; every one started is stopped at teardown."""
    started: list[Ingest] = []

    from beiflow.ingest.runner import start_ingest  # imports the decoder

    def start(cfg: Config, metrics: Metrics | None = None) -> Ingest:
        ing = start_ingest(cfg, metrics=metrics or Metrics())
        started.append(ing)
        wait_for(lambda: ing.collector.ready(), what="collector connected")
        return ing

    yield start
    for ing in started:
        ing.close()


def wait_for(cond: Callable[[], object], *, timeout: float = 20.0, what: str = "condition",
             interval: float = 0.05) -> None:
    """Poll until ``cond()`` is truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def count(dsn: str, query: str, *params: object) -> int:
    """Run a count query."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return int(row[0]) if row else 0


__all__ = ["DATA", "count", "wait_for"]
