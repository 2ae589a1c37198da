"""RFID and sensor streams end to end: every rejection reason, and a mixed load."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from beiflow.ingest.config import Config, parse_mqtt_url
from beiflow.ingest.replay import publish_in_order
from beiflow.ingest.runner import Ingest
from tests.conftest import DATA, count, wait_for
from tests.nmea_log import expected_fixes, make_log

EPC = "3074257BF7194E4000001A85"  # GS1 TDS example: urn:epc:id:sgtin:0614141.812345.6789


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sensor(t: datetime, **values: float) -> bytes:
    return json.dumps({"time": _iso(t), "values": values}).encode()


def _rfid(t: datetime, epc: str = EPC, antenna: int = 1, rssi: float = -55.5) -> bytes:
    return json.dumps({"epc": epc, "antenna": antenna, "rssi_dbm": rssi,
                       "time": _iso(t)}).encode()


def _corpus(stream: str) -> dict[str, bytes]:
    """One payload of the shared contract corpus per rejection reason."""
    out: dict[str, bytes] = {}
    for path in sorted((DATA / "payloads" / stream).glob("*.json")):
        reason = path.name.split("--", 1)[0]
        if reason != "valid" and reason not in out and path.stat().st_size:
            out[reason] = path.read_bytes()
    return out


def _cases(stream: str, now: datetime, config: Config) -> dict[str, bytes]:
    cases = _corpus(stream)
    good = _sensor if stream == "sensor" else _rfid
    args = {"temp_c": 4.0} if stream == "sensor" else {}
    cases["device_mismatch"] = json.dumps({"device_id": "another-device",
                                           **json.loads(good(now, **args))}).encode()
    cases["future_time"] = good(now + timedelta(hours=2), **args)
    cases["stale_time"] = good(now - timedelta(days=40), **args)
    if stream == "sensor":
        cases["too_many_readings"] = json.dumps({"samples": [
            {"time": _iso(now), "values": {"temp_c": 1.0}}] * 1001}).encode()
    else:
        cases["too_many_readings"] = json.dumps({"reads": [json.loads(_rfid(now))] * 1001}
                                                ).encode()
    cases["oversize"] = b" " * config.limits.max_payload_bytes + good(now, **args)
    cases["empty_payload"] = b""
    return cases


@pytest.mark.parametrize("stream", ["sensor", "rfid"])
def test_every_rejection_reason_is_dead_lettered_counted_and_the_next_message_lands(
        stream: str, config: Config, run_ingest: Callable[..., Ingest], db_dsn: str) -> None:
    # room for 1,001 RFID reads in one payload, so that too_many_readings is what trips
    config = replace(config, limits=replace(config.limits, max_payload_bytes=200_000))
    ing = run_ingest(config)
    url = parse_mqtt_url(config.mqtt.url)
    now = datetime.now(UTC).replace(microsecond=0)
    cases = _cases(stream, now, config)
    expected = {"sensor": {"bad_json", "non_finite", "schema", "device_mismatch",
                           "too_many_readings", "bad_metric_name", "bad_time", "future_time",
                           "stale_time"},
                "rfid": {"bad_json", "non_finite", "schema", "device_mismatch",
                         "too_many_readings", "bad_epc", "bad_time", "future_time",
                         "stale_time"}}[stream]
    assert expected | {"oversize", "empty_payload"} == set(cases)
    table = "sensor_readings" if stream == "sensor" else "rfid_reads"
    for i, (reason, payload) in enumerate(sorted(cases.items())):
        device = f"{stream}-{i}"
        good = (_sensor(now, temp_c=float(i)) if stream == "sensor"
                else _rfid(now, rssi=-40.0 - i))
        publish_in_order(url, f"{config.mqtt.topic_root}/port/{device}/{stream}",
                         [payload, good], rate_hz=0)
        wait_for(lambda d=device: count(db_dsn, f"SELECT count(*) FROM {table}"
                                        " WHERE device_id = %s", d) == 1,
                 what=f"{reason}: the good message after it")
        with psycopg.connect(db_dsn) as conn:
            rows = conn.execute("SELECT error, payload, stream FROM dead_letters"
                                " WHERE device_id = %s", (device,)).fetchall()
        kept = payload[: config.limits.max_payload_bytes]
        assert rows == [(reason, kept, stream)], reason
        assert ing.metrics.registry.get_sample_value(
            "beiflow_messages_rejected_total", {"stream": stream, "reason": reason}) == 1


def test_mixed_load_lands_with_exact_values(config: Config, run_ingest: Callable[..., Ingest],
                                            db_dsn: str, tmp_path: Path) -> None:
    run_ingest(config)
    url = parse_mqtt_url(config.mqtt.url)
    root = config.mqtt.topic_root
    now = datetime.now(UTC).replace(microsecond=0)
    jobs: list[tuple[str, list[bytes]]] = []
    logs = {}
    for d in range(30):
        logs[f"mx-bd-{d}"] = make_log(10, start=now - timedelta(minutes=5), seed=100 + d)
        jobs.append((f"{root}/port/mx-bd-{d}/nmea", [logs[f"mx-bd-{d}"]]))
        jobs.append((f"{root}/grid/mx-sn-{d}/sensor", [
            _sensor(now - timedelta(seconds=s), voltage_v=230.0 + d + s / 8, current_a=d / 4)
            for s in range(10)]))
        jobs.append((f"{root}/gate/mx-rf-{d}/rfid", [json.dumps({"reads": [
            json.loads(_rfid(now - timedelta(seconds=s), antenna=s % 4, rssi=-50.0 - d))
            for s in range(20)]}).encode()]))

    def publish(part: list[tuple[str, list[bytes]]]) -> None:
        for topic, payloads in part:
            publish_in_order(url, topic, payloads, rate_hz=0)

    threads = [threading.Thread(target=publish, args=(jobs[k::4],)) for k in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM sensor_readings"
                                   " WHERE device_id LIKE %s", "mx-sn-%") == 30 * 10 * 2
             and count(db_dsn, "SELECT count(*) FROM rfid_reads WHERE device_id LIKE %s",
                       "mx-rf-%") == 30 * 20
             and count(db_dsn, "SELECT count(*) FROM positions WHERE device_id LIKE %s",
                       "mx-bd-%") == 30 * 10, timeout=60, what="the mixed load")
    assert time.monotonic() - t0 < 120
    with psycopg.connect(db_dsn) as conn:
        v = conn.execute("SELECT value FROM sensor_readings WHERE device_id = 'mx-sn-7'"
                         " AND metric = 'voltage_v' AND time = %s",
                         (now - timedelta(seconds=3),)).fetchone()
        assert v == (230.0 + 7 + 3 / 8,)
        r = conn.execute("SELECT antenna, rssi_dbm, gtin, serial FROM rfid_reads_sgtin"
                         " WHERE device_id = 'mx-rf-11' AND time = %s",
                         (now - timedelta(seconds=6),)).fetchone()
        assert r == (2, -61.0, "80614141123458", 6789)
        got = conn.execute("SELECT time, lat, lon FROM positions WHERE device_id = 'mx-bd-4'"
                           " ORDER BY time").fetchall()
    for (t, lat, lon), (et, elat, elon, _) in zip(got, expected_fixes(logs["mx-bd-4"]),
                                                  strict=True):
        assert (t, round(lat, 7), round(lon, 7)) == (et, round(elat, 7), round(elon, 7))


def test_reader_sites_from_the_devices_table_drive_rfid_checks(
        config: Config, run_ingest: Callable[..., Ingest], db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        for dev, lat, lon, zone, kind in (
                ("st-gate-yt", 37.55, 121.39, "gate-main", "gate"),
                ("st-gate-far", 37.10, 121.39, "gate-far", "gate"),     # 50 km south
                ("st-cold", 37.551, 121.391, "cold-store-1", "cold"),
                ("st-dock", 37.552, 121.392, "dock-2", "ambient")):
            conn.execute("INSERT INTO devices (device_id, site, first_seen, last_seen, lat, lon,"
                         " zone, zone_kind) VALUES (%s, 'port', now(), now(), %s, %s, %s, %s)",
                         (dev, lat, lon, zone, kind))
    run_ingest(config)
    url = parse_mqtt_url(config.mqtt.url)
    now = datetime.now(UTC).replace(microsecond=0)
    fast, cold = "30742" + "A" * 19, "30742" + "B" * 19

    def read(reader: str, epc: str, t: datetime) -> None:
        publish_in_order(url, f"{config.mqtt.topic_root}/port/{reader}/rfid",
                         [_rfid(t, epc=epc)], rate_hz=0)

    read("st-gate-yt", fast, now - timedelta(seconds=120))
    read("st-gate-far", fast, now - timedelta(seconds=60))    # 50 km in a minute
    read("st-cold", cold, now - timedelta(seconds=30))
    read("st-dock", cold, now - timedelta(seconds=10))        # left the cold chain

    def kinds() -> set[tuple[str, str]]:
        with psycopg.connect(db_dsn) as conn:
            return set(conn.execute("SELECT device_id, kind FROM anomalies"
                                    " WHERE device_id LIKE 'st-%'").fetchall())

    wait_for(lambda: {("st-gate-far", "impossible_travel"), ("st-dock", "cold_chain_exit")}
             <= kinds(), what="impossible travel and cold-chain exit")
