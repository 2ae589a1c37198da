"""End to end on the real broker and TimescaleDB: replay -> ingest -> positions."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from beiflow.ingest.cli import main
from beiflow.ingest.config import Config, parse_mqtt_url
from beiflow.ingest.replay import publish_in_order
from beiflow.ingest.runner import Ingest
from tests.conftest import count, wait_for
from tests.nmea_log import expected_fixes, make_log

START = datetime(2024, 3, 1, 23, 59, 30, tzinfo=UTC)  # crosses midnight


def _sample(ing: Ingest, name: str, **labels: str) -> float:
    return ing.metrics.registry.get_sample_value(name, labels) or 0.0


def test_replayed_log_lands_exactly_once(config: Config, run_ingest: Callable[..., Ingest],
                                         tmp_path: Path, db_dsn: str) -> None:
    log = make_log(60, start=START)
    path = tmp_path / "drive.nmea"
    path.write_bytes(log)
    expected = expected_fixes(log)
    assert len(expected) == 60
    ing = run_ingest(config)
    args = ["replay", str(path), "--device", "truck-7", "--site", "yantai", "--rate", "0",
            "--mqtt-url", config.mqtt.url, "--topic-root", config.mqtt.topic_root]
    assert main(args) == 0
    wait_for(lambda: _sample(ing, "beiflow_messages_acked_total") >= 60, what="60 acks")
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(
            "SELECT time, lat, lon, speed_mps, fix_quality, sats, date_source, flags"
            " FROM positions WHERE device_id = 'truck-7' ORDER BY time").fetchall()
    assert len(rows) == 60
    for (t, lat, lon, speed, quality, sats, source, flags), (et, elat, elon, espeed) in zip(
            rows, expected, strict=True):
        assert abs((t - et).total_seconds()) < 0.0005       # to the millisecond
        assert lat == pytest.approx(elat, abs=1e-7)
        assert lon == pytest.approx(elon, abs=1e-7)
        assert speed == pytest.approx(espeed, abs=1e-9)
        assert quality == 1 and sats > 0 and source == 1 and flags == 0
    assert rows[-1][0].date() == datetime(2024, 3, 2).date()

    # the same log again: acknowledged, nothing added
    assert main(args) == 0
    wait_for(lambda: _sample(ing, "beiflow_messages_acked_total") >= 120, what="120 acks")
    assert count(db_dsn, "SELECT count(*) FROM positions WHERE device_id = 'truck-7'") == 60
    assert _sample(ing, "beiflow_messages_received_total", stream="nmea") == 120
    assert _sample(ing, "beiflow_rows_written_total", table="positions") == 60
    # lag is observed for every row of a committed batch, replayed ones included
    assert _sample(ing, "beiflow_end_to_end_lag_seconds_count") == 120
    assert count(db_dsn, "SELECT count(*) FROM devices WHERE device_id = 'truck-7'"
                 " AND site = 'yantai' AND streams = '{nmea}'") == 1


def test_garbage_is_dead_lettered_counted_and_the_next_message_lands(
        config: Config, run_ingest: Callable[..., Ingest], db_dsn: str) -> None:
    ing = run_ingest(config)
    root = config.mqtt.topic_root
    url = parse_mqtt_url(config.mqtt.url)
    good = make_log(1, start=START, seed=11)
    bad_checksum = good.replace(b"*", b"*0", 1)[:-2] + b"\r\n"
    cases = [
        (f"{root}/yantai/gb-1/nmea", b"\x00\xff\xfe binary junk \x81", "not_nmea"),
        (f"{root}/yantai/gb-1/nmea", b"x" * (config.limits.max_payload_bytes + 1), "oversize"),
        (f"{root}/yantai/bad!id/nmea", good, "bad_device_id"),
        (f"{root}/yantai/gb-1/video", good, "unknown_stream"),
        (f"{root}/yantai/gb-1/status", b"sleeping", "bad_status"),
    ]
    for topic, payload, _ in cases:
        publish_in_order(url, topic, [payload], rate_hz=0)
    publish_in_order(url, f"{root}/yantai/gb-2/nmea", [bad_checksum], rate_hz=0)
    publish_in_order(url, f"{root}/yantai/gb-1/nmea", [good], rate_hz=0)
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM positions WHERE device_id = 'gb-1'")
             == 1, what="the good message after the garbage")
    with psycopg.connect(db_dsn) as conn:
        got = dict(conn.execute(
            "SELECT error, topic FROM dead_letters WHERE topic LIKE %s", (f"{root}/%",)))
    for topic, _, reason in cases:
        assert got.get(reason) == topic, reason
        stream = topic.rsplit("/", 1)[1]
        stream = stream if stream in ("nmea", "status") else "unknown"
        assert _sample(ing, "beiflow_messages_rejected_total", stream=stream,
                       reason=reason) == 1, reason
    assert "bad_checksum" in got


def test_metrics_and_health_endpoints(config: Config, run_ingest: Callable[..., Ingest]) -> None:
    ing = run_ingest(config)
    base = f"http://{ing.server.host}:{ing.server.port}"
    assert ing.server.port != 0   # port 0 picked a free port
    body = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    for name in ("beiflow_messages_received_total", "beiflow_messages_rejected_total",
                 "beiflow_rows_written_total", "beiflow_batch_duration_seconds",
                 "beiflow_db_write_duration_seconds", "beiflow_end_to_end_lag_seconds",
                 "beiflow_queue_depth", "beiflow_geofence_events_total",
                 "beiflow_anomalies_total"):
        assert f"# TYPE {name.removesuffix('_total')}" in body, name
    assert urllib.request.urlopen(f"{base}/healthz", timeout=5).status == 200
    assert urllib.request.urlopen(f"{base}/readyz", timeout=5).status == 200


def test_messages_with_v5_properties_take_paho_path_and_land(
        config: Config, run_ingest: Callable[..., Ingest], db_dsn: str) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    run_ingest(config)
    url = parse_mqtt_url(config.mqtt.url)
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 3600
    props.UserProperty = ("vendor", "acme-bd")
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect(url.host, url.port)
    pub.loop_start()
    for payload in (make_log(1, start=START, seed=31), b""):
        pub.publish(f"{config.mqtt.topic_root}/yantai/prop-1/nmea", payload, qos=1,
                    properties=props).wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM positions WHERE device_id = 'prop-1'")
             == 1, what="the message with properties")
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM dead_letters WHERE device_id ="
                                   " 'prop-1' AND error = 'empty_payload'") == 1,
             what="the empty payload dead-lettered")


def test_a_pipeline_bug_quarantines_the_batch_and_ingest_keeps_going(
        config: Config, run_ingest: Callable[..., Ingest], db_dsn: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ing = run_ingest(config)
    pipeline = ing.collector._pipeline  # inject a fault into the real object
    real = pipeline.process
    calls = {"n": 0}

    def fail_once(raw: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected bug")
        return real(raw)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "process", fail_once)
    url = parse_mqtt_url(config.mqtt.url)
    topic = f"{config.mqtt.topic_root}/yantai/bug-1/nmea"
    first = make_log(1, start=START, seed=41)
    publish_in_order(url, topic, [first], rate_hz=0)
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM dead_letters WHERE topic = %s"
                                   " AND error = 'internal_error'", topic) == 1,
             what="the failed batch quarantined")
    publish_in_order(url, topic, [make_log(1, start=START, seed=42)], rate_hz=0)
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM positions WHERE device_id = 'bug-1'")
             == 1, what="the next batch processed normally")
    with psycopg.connect(db_dsn) as conn:
        (payload,) = conn.execute("SELECT payload FROM dead_letters WHERE topic = %s",
                                  (topic,)).fetchone()
    assert payload == first
    assert _sample(ing, "beiflow_messages_acked_total") == 2
