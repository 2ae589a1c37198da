"""TimescaleSink against the real database: exact values, NULLs, merge, idempotence."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest

from beiflow.ingest.sink import DeadLetter, TimescaleSink, WriteBatch, binary_copy
from beiflow.processing.events import AnomalyBatch, GeofenceEventBatch
from beiflow.schemas.columns import POSITION_COLUMNS, DateSource, FixFlag, empty_columns

T0 = 1_700_000_000_123_456  # 2023-11-14T22:13:20.123456Z in microseconds


def _positions(n: int) -> dict[str, np.ndarray]:
    cols = empty_columns(POSITION_COLUMNS, n)
    cols["device"] = np.zeros(n, dtype=np.int32)
    cols["received_at"][:] = T0 + 5_000_000
    cols["date_source"][:] = DateSource.RMC
    return cols


def _batch(devices: list[str], pos: dict[str, np.ndarray], **kw: object) -> WriteBatch:
    n = len(devices)
    return WriteBatch(devices=[(d, "site-a") for d in devices],
                      msg_device=np.arange(n), msg_stream=["nmea"] * n,
                      msg_received_at=np.full(n, T0 + 5_000_000), positions=pos, **kw)


@pytest.fixture
def sink(db_dsn: str) -> TimescaleSink:
    s = TimescaleSink(db_dsn)
    yield s
    s.close()


def _rows(dsn: str, device: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT time, lat, lon, alt_m, speed_mps, course_deg, fix_quality, sats, hdop,"
            " pdop, status, mode, date_source, flags, sv_bds, cn0_bds_dbhz, received_at"
            " FROM positions WHERE device_id = %s ORDER BY time", (device,)).fetchall()


def test_binary_copy_layout_matches_postgres_spec() -> None:
    buf = binary_copy([(np.array([1, 2], dtype=np.int16), "int16", False)])
    # 11-byte signature, flags, header extension, then per tuple: count, length, value
    assert buf[:11] == b"PGCOPY\n\xff\r\n\x00"
    assert buf[19:] == b"\x00\x01\x00\x00\x00\x02\x00\x01" b"\x00\x01\x00\x00\x00\x02\x00\x02" \
        b"\xff\xff"


def test_values_and_nulls_round_trip_exactly(sink: TimescaleSink, db_dsn: str) -> None:
    pos = _positions(2)
    pos["time"][:] = [T0, T0 + 1000]
    pos["lat"][:] = [37.561234567, -0.000000123]
    pos["lon"][:] = [121.398765432, np.nan]
    pos["alt_m"][0] = 12.3
    pos["speed_mps"][0] = 5.144444444444445
    pos["fix_quality"][0] = 1
    pos["sats"][0] = 18
    pos["hdop"][0] = 0.8
    pos["mode"][0] = ord("A")
    pos["sv_bds"][0] = 11
    pos["cn0_bds_dbhz"][0] = 38.25
    pos["flags"][1] = FixFlag.NO_FIX
    sink.write(_batch(["dev-exact"], pos))
    (a, b) = _rows(db_dsn, "dev-exact")
    assert a[0] == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    assert a[1:10] == (37.561234567, 121.398765432, 12.3, 5.144444444444445, None, 1, 18,
                       pytest.approx(0.8), None)
    assert a[10:16] == (None, ord("A"), DateSource.RMC, 0, 11, 38.25)
    assert a[16] == datetime(2023, 11, 14, 22, 13, 25, 123456, tzinfo=UTC)
    assert b[1] == -0.000000123 and b[2] is None and b[7] is None
    assert b[13] == FixFlag.NO_FIX


def test_replaying_a_batch_adds_nothing(sink: TimescaleSink, db_dsn: str) -> None:
    pos = _positions(3)
    pos["time"][:] = T0 + np.arange(3) * 1_000_000
    pos["lat"][:] = 37.5
    batch = _batch(["dev-idem"], pos)
    assert sink.write(batch).rows["positions"] == 3
    assert sink.write(batch).rows["positions"] == 0
    assert len(_rows(db_dsn, "dev-idem")) == 3


def test_epoch_split_over_two_batches_is_merged(sink: TimescaleSink, db_dsn: str) -> None:
    gga = _positions(1)
    gga["time"][:] = T0
    gga["lat"][:], gga["lon"][:], gga["sats"][:] = 37.5, 121.4, 9
    gga["date_source"][:] = DateSource.RECEIVE
    gga["flags"][:] = FixFlag.DATE_FROM_RECEIVE
    rmc = _positions(1)
    rmc["time"][:] = T0
    rmc["lat"][:], rmc["speed_mps"][:], rmc["status"][:] = 37.6, 3.0, 1
    sink.write(_batch(["dev-split"], gga))
    sink.write(_batch(["dev-split"], rmc))
    (row,) = _rows(db_dsn, "dev-split")
    lat, speed, sats, status, date_source, flags = row[1], row[4], row[7], row[10], row[12], \
        row[13]
    assert (lat, speed, sats, status) == (37.5, 3.0, 9, 1)
    assert date_source == DateSource.RMC and flags == 0


def test_dead_letters_and_device_registry(sink: TimescaleSink, db_dsn: str) -> None:
    dl = DeadLetter(T0, "t/site-a/dev-dl/nmea", b"$GPGGA,1*00\xff", "bad_checksum", "nmea",
                    "dev-dl", "sentence 1")
    batch = WriteBatch(devices=[("dev-dl", "site-a")], msg_device=np.array([0, 0]),
                       msg_stream=["nmea", "status"], msg_received_at=np.array([T0, T0 + 10]),
                       dead_letters=[dl], statuses=[(0, "online", T0 + 10)])
    assert sink.write(batch).rows["dead_letters"] == 1
    assert sink.write(batch).rows["dead_letters"] == 0   # redelivered bytes: stored once
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute(
            "SELECT topic, payload, error, detail FROM dead_letters WHERE device_id = 'dev-dl'"
        ).fetchall() == [("t/site-a/dev-dl/nmea", b"$GPGGA,1*00\xff", "bad_checksum",
                          "sentence 1")]
        site, first, last, streams, status = conn.execute(
            "SELECT site, first_seen, last_seen, streams, status FROM devices"
            " WHERE device_id = 'dev-dl'").fetchone()
    assert site == "site-a" and streams == ["nmea", "status"] and status == "online"
    assert (last - first).total_seconds() == pytest.approx(10e-6)


def test_sensor_rfid_anomalies_and_events_land_once(sink: TimescaleSink, db_dsn: str) -> None:
    readings = {
        "time": np.array([T0, T0, T0 + 1_000_000], dtype=np.int64),
        "received_at": np.full(3, T0 + 2_000_000, dtype=np.int64),
        "value": np.array([229.8, 12.25, -18.5]),
        "device": np.array([0, 0, 1], dtype=np.int32),
        "metric": np.array([0, 1, 2], dtype=np.int32),
    }
    epc = "3074257BF7194E4000001A85"
    reads = {
        "time": np.array([T0, T0 + 500], dtype=np.int64),
        "received_at": np.full(2, T0 + 2_000_000, dtype=np.int64),
        "antenna": np.array([1, 2], dtype=np.int16),
        "rssi_dbm": np.array([-52.5, -60.0]),
        "phase_deg": np.array([87.25, np.nan]),
        "read_count": np.array([3, -1], dtype=np.int32),
        "device": np.array([2, 2], dtype=np.int32),
        "epc": np.array([epc, "E2801160600002084F1B7C8D"], dtype=object),
        "sgtin_filter": np.array([3, -1], dtype=np.int16),
        "sgtin_company_prefix": np.array(["0614141", None], dtype=object),
        "sgtin_item_ref": np.array(["812345", None], dtype=object),
        "sgtin_serial": np.array([6789, -1], dtype=np.int64),
        "gtin": np.array(["80614141123458", None], dtype=object),
    }
    anomalies = AnomalyBatch(np.array([T0], np.int64), np.array([1], np.int32),
                             np.array(["sensor"], object), np.array(["out_of_range"], object),
                             np.array([2.5]), np.array(['{"limit": -15}'], object))
    events = GeofenceEventBatch(np.array([T0], np.int64), np.array([0], np.int32),
                                np.array([1], np.int32), np.array(["enter"], object),
                                np.array(["{}"], object))
    batch = WriteBatch(
        devices=[("grid-1", "s"), ("reefer-1", "s"), ("gate-1", "s")],
        msg_device=np.array([0, 1, 2]), msg_stream=["sensor", "sensor", "rfid"],
        msg_received_at=np.full(3, T0), readings=readings,
        metric_names=["voltage_v", "current_a", "temp_c"], reads=reads,
        anomalies=anomalies, geofence_events=events, fence_ids=["gate-a", "berth-3"])
    first = sink.write(batch).rows
    assert first == {"sensor_readings": 3, "rfid_reads": 2, "anomalies": 1,
                     "geofence_events": 1}
    assert sink.write(batch).rows == {"sensor_readings": 0, "rfid_reads": 0, "anomalies": 0,
                                      "geofence_events": 0}
    with psycopg.connect(db_dsn) as conn:
        got = conn.execute("SELECT device_id, metric, value FROM sensor_readings"
                           " WHERE device_id IN ('grid-1', 'reefer-1') ORDER BY value")
        assert got.fetchall() == [("reefer-1", "temp_c", -18.5), ("grid-1", "current_a", 12.25),
                                  ("grid-1", "voltage_v", 229.8)]
        assert conn.execute(
            "SELECT device_id, epc, antenna, rssi_dbm, phase_deg, read_count, sgtin_filter,"
            " company_prefix, item_ref, serial, gtin FROM rfid_reads_sgtin"
            " WHERE device_id = 'gate-1'"
            " ORDER BY time").fetchall(
        ) == [("gate-1", epc, 1, -52.5, 87.25, 3, 3, "0614141", "812345", 6789,
               "80614141123458"),
              ("gate-1", "E2801160600002084F1B7C8D", 2, -60.0, None, None, None, None, None,
               None, None)]
        got = conn.execute("SELECT device_id, stream, kind, score, detail FROM anomalies"
                           " WHERE device_id = 'reefer-1'")
        assert got.fetchall() == [("reefer-1", "sensor", "out_of_range", 2.5, {"limit": -15})]
        got = conn.execute("SELECT device_id, geofence_id, event FROM geofence_events"
                           " WHERE device_id = 'grid-1'")
        assert got.fetchall() == [("grid-1", "berth-3", "enter")]
        other = "E2801160600002084F1B7C8D"
        assert conn.execute("SELECT epc, reader_id, antenna FROM rfid_last_seen"
                            " WHERE epc = %s", (other,)).fetchall() == [(other, "gate-1", 2)]
