"""Acks follow commits: a database outage holds acks, and nothing is lost or doubled."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from beiflow.ingest.config import Config, parse_mqtt_url
from beiflow.ingest.replay import publish_in_order
from beiflow.ingest.runner import Ingest
from tests.conftest import count, wait_for
from tests.nmea_log import terminal_epochs
from tests.tcpproxy import TcpProxy

START = datetime(2025, 6, 1, 8, 0, 0, tzinfo=UTC)


def _epochs(n: int, first: int) -> list[bytes]:
    return terminal_epochs(n, start=START + timedelta(seconds=first), seed=5)


def _acked(ing: Ingest) -> float:
    return ing.metrics.registry.get_sample_value("beiflow_messages_acked_total") or 0.0


def _ready(ing: Ingest) -> int:
    try:
        return urllib.request.urlopen(
            f"http://{ing.server.host}:{ing.server.port}/readyz", timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def db_proxy(db_dsn: str) -> TcpProxy:
    info = psycopg.conninfo.conninfo_to_dict(db_dsn)
    proxy = TcpProxy(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432)))
    yield proxy
    proxy.close()


def test_outage_holds_acks_and_every_message_lands_once(
        config: Config, run_ingest: Callable[..., Ingest], db_dsn: str,
        db_proxy: TcpProxy) -> None:
    via_proxy = psycopg.conninfo.make_conninfo(db_dsn, host="127.0.0.1", port=db_proxy.port)
    cfg = replace(config, db=replace(config.db, dsn=via_proxy))
    ing = run_ingest(cfg)
    url = parse_mqtt_url(cfg.mqtt.url)
    topic = f"{cfg.mqtt.topic_root}/yantai/bd-out/nmea"
    q = "SELECT count(*) FROM positions WHERE device_id = 'bd-out'"

    publish_in_order(url, topic, _epochs(100, 0), rate_hz=0)
    wait_for(lambda: count(db_dsn, q) == 100 and _acked(ing) == 100, what="first 100")

    db_proxy.cut()
    during = _epochs(3000, 100)
    publish_in_order(url, topic, during, rate_hz=0)
    # every one of them is delivered and held: the broker does not cap the window at 20
    wait_for(lambda: ing.metrics.registry.get_sample_value(
        "beiflow_db_errors_total") and _ready(ing) == 503, what="not ready during outage")
    wait_for(lambda: ing.collector.buffered() + ing.collector.in_flight() == 3000,
             what="3000 messages in flight, unacknowledged")
    assert _acked(ing) == 100
    assert count(db_dsn, q) == 100

    db_proxy.restore()
    wait_for(lambda: _acked(ing) == 3100, timeout=60, what="acks after recovery")
    assert count(db_dsn, q) == 3100
    assert count(db_dsn, "SELECT count(DISTINCT time) FROM positions WHERE device_id = 'bd-out'"
                 ) == 3100
    wait_for(lambda: _ready(ing) == 200, what="ready again")


def test_readiness_follows_the_database_while_idle(
        config: Config, run_ingest: Callable[..., Ingest], db_dsn: str,
        db_proxy: TcpProxy) -> None:
    via_proxy = psycopg.conninfo.make_conninfo(db_dsn, host="127.0.0.1", port=db_proxy.port)
    ing = run_ingest(replace(config, db=replace(config.db, dsn=via_proxy)))
    assert _ready(ing) == 200
    db_proxy.cut()      # no traffic at all: only the idle ping can notice
    wait_for(lambda: _ready(ing) == 503, what="not ready while the database is gone")
    db_proxy.restore()
    wait_for(lambda: _ready(ing) == 200, what="ready again")
