"""The read model users query: latest values, rollups, last reader per EPC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from beiflow.ingest.sink import TimescaleSink, WriteBatch

T0 = datetime(2025, 4, 1, 10, 0, 0, tzinfo=UTC)
US = 1_000_000


def _us(t: datetime) -> int:
    return int(t.timestamp()) * US


def test_latest_values_rollups_and_last_reader(db_dsn: str) -> None:
    # rm-grid: voltage every 20 s for 3 minutes (values 0..8), plus one current reading
    times = [T0 + timedelta(seconds=20 * i) for i in range(9)]
    readings = {
        "time": np.array([_us(t) for t in times] + [_us(T0)], dtype=np.int64),
        "received_at": np.full(10, _us(T0 + timedelta(minutes=5)), dtype=np.int64),
        "value": np.array([float(i) for i in range(9)] + [7.5]),
        "device": np.zeros(10, dtype=np.int32),
        "metric": np.array([0] * 9 + [1], dtype=np.int32),
    }
    epc = "3074257BF7194E4000001A85"
    reads = {
        "time": np.array([_us(T0), _us(T0 + timedelta(minutes=2))], dtype=np.int64),
        "received_at": np.full(2, _us(T0 + timedelta(minutes=5)), dtype=np.int64),
        "antenna": np.array([1, 3], dtype=np.int16),
        "rssi_dbm": np.array([-50.0, -61.0]),
        "phase_deg": np.full(2, np.nan),
        "read_count": np.full(2, -1, dtype=np.int32),
        "device": np.array([1, 2], dtype=np.int32),
        "epc": np.array([epc, epc], dtype=object),
        "sgtin_filter": np.array([3, 3], dtype=np.int16),
        "sgtin_company_prefix": np.array(["0614141"] * 2, dtype=object),
        "sgtin_item_ref": np.array(["812345"] * 2, dtype=object),
        "sgtin_serial": np.array([6789, 6789], dtype=np.int64),
        "gtin": np.array(["80614141123458"] * 2, dtype=object),
    }
    sink = TimescaleSink(db_dsn)
    sink.write(WriteBatch(
        devices=[("rm-grid", "s"), ("rm-gate-in", "s"), ("rm-coldroom", "s")],
        msg_device=np.array([0, 1, 2]), msg_stream=["sensor", "rfid", "rfid"],
        msg_received_at=np.full(3, _us(T0)), readings=readings,
        metric_names=["voltage_v", "current_a"], reads=reads))
    sink.close()
    with psycopg.connect(db_dsn) as conn:
        latest = conn.execute("SELECT metric, value, time FROM sensor_latest"
                              " WHERE device_id = 'rm-grid' ORDER BY metric").fetchall()
        assert latest == [("current_a", 7.5, T0), ("voltage_v", 8.0, times[-1])]
        minutes = conn.execute(
            "SELECT bucket, samples, min, max, avg FROM sensor_1m"
            " WHERE device_id = 'rm-grid' AND metric = 'voltage_v' ORDER BY bucket").fetchall()
        assert minutes == [(T0, 3, 0.0, 2.0, pytest.approx(1.0)),
                           (T0 + timedelta(minutes=1), 3, 3.0, 5.0, pytest.approx(4.0)),
                           (T0 + timedelta(minutes=2), 3, 6.0, 8.0, pytest.approx(7.0))]
        hours = conn.execute(
            "SELECT bucket, samples, min, max, avg FROM sensor_1h"
            " WHERE device_id = 'rm-grid' AND metric = 'voltage_v'").fetchall()
        assert hours == [(T0, 9, 0.0, 8.0, pytest.approx(4.0))]
        last = conn.execute("SELECT reader_id, antenna, gtin, time FROM rfid_last_seen"
                            " WHERE epc = %s", (epc,)).fetchall()
        assert last == [("rm-coldroom", 3, "80614141123458", T0 + timedelta(minutes=2))]
        by_gtin = conn.execute("SELECT count(*) FROM rfid_reads_sgtin"
                               " WHERE gtin = '80614141123458' AND serial = 6789"
                               " AND device_id LIKE 'rm-%%'").fetchone()
        assert by_gtin == (2,)
