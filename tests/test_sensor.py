"""Sensor decoder: exact rows, metric codes, rejects with their reasons, robustness."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beiflow.ingest.sensor import (
    REJECT_REASONS,
    STATE_SUFFIXES,
    UNIT_SUFFIXES,
    MetricTable,
    SensorBatch,
    SensorConfig,
    decode_sensor,
    is_metric_name,
)
from beiflow.schemas.columns import SENSOR_COLUMNS

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
T0 = dt.datetime(2025, 3, 1, 8, 15, 30, tzinfo=dt.UTC)


def us(t: dt.datetime) -> int:
    """Microseconds since the Unix epoch, exactly."""
    return (t - EPOCH) // dt.timedelta(microseconds=1)


RECV = us(T0)
MS = RECV // 1000


def decode(*payloads: bytes | dict[str, Any], table: MetricTable | None = None,
           device: list[int] | None = None, received: list[int] | None = None,
           config: SensorConfig | None = None) -> SensorBatch:
    data = [p if isinstance(p, bytes) else json.dumps(p).encode() for p in payloads]
    dev = np.zeros(len(data), np.int32) if device is None else np.asarray(device, np.int32)
    rec = np.full(len(data), RECV, np.int64) if received is None else np.asarray(received)
    return decode_sensor(data, dev, rec, MetricTable() if table is None else table,
                         SensorConfig() if config is None else config)


def rejects(b: SensorBatch) -> list[tuple[int, str, str]]:
    r = b.rejects
    return list(zip(r.msg.tolist(), r.reason.tolist(), r.detail.tolist(), strict=True))


def rows(b: SensorBatch, table: MetricTable) -> list[tuple[int, int, str, float, int]]:
    r = b.readings
    return [(m, d, table.names[c], v, t) for m, d, c, v, t in zip(
        r["msg"].tolist(), r["device"].tolist(), r["metric"].tolist(), r["value"].tolist(),
        r["time"].tolist(), strict=True)]


def test_rows_have_exact_values_from_several_nodes() -> None:
    table = MetricTable()
    b = decode(
        {"time": "2025-03-01T08:15:30Z", "values": {"voltage_v": 229.8, "current_a": 12.1,
                                                   "temp_c": 41.5}},
        {"samples": [
            {"time": MS - 60_000, "values": {"temp_c": -18.5, "door_open": 1}},
            {"time": "2025-03-01T03:15:29.000001-05:00", "values": {"temp_c": -18.25,
                                                                   "door_open": 0}}]},
        table=table, device=[4, 9], received=[RECV + 7, RECV + 8])
    assert not len(b.rejects)
    assert rows(b, table) == [
        (0, 4, "voltage_v", 229.8, RECV), (0, 4, "current_a", 12.1, RECV),
        (0, 4, "temp_c", 41.5, RECV),
        (1, 9, "temp_c", -18.5, RECV - 60_000_000), (1, 9, "door_open", 1.0, RECV - 60_000_000),
        (1, 9, "temp_c", -18.25, RECV - 999_999), (1, 9, "door_open", 0.0, RECV - 999_999),
    ]
    assert b.readings["received_at"].tolist() == [RECV + 7] * 3 + [RECV + 8] * 4
    assert table.names == ["voltage_v", "current_a", "temp_c", "door_open"]
    expected = {c.name: c.dtype for c in SENSOR_COLUMNS} | {
        "device": np.dtype(np.int32), "metric": np.dtype(np.int32), "msg": np.dtype(np.int32)}
    assert {k: v.dtype for k, v in b.readings.items()} == expected


def test_metric_codes_are_stable_across_batches() -> None:
    table = MetricTable(["temp_c"])
    first = decode({"time": MS, "values": {"humidity_pct": 50, "temp_c": 4}}, table=table)
    second = decode({"time": MS, "values": {"temp_c": 5, "pressure_kpa": 101.3,
                                            "humidity_pct": 51}}, table=table)
    assert first.readings["metric"].tolist() == [1, 0]
    assert second.readings["metric"].tolist() == [0, 2, 1]
    assert table.names == ["temp_c", "humidity_pct", "pressure_kpa"]
    assert len(table) == 3


def test_metric_table_rejects_invalid_names_and_marks_states() -> None:
    table = MetricTable()
    assert table.add("door_open") == 0 and table.add("door_open") == 0
    with pytest.raises(ValueError, match="not a metric name"):
        table.add("Door")
    codes = table.codes(["temp_c", "bad", "compressor_on", "temp_c"])
    assert codes.tolist() == [1, -1, 2, 1] and codes.dtype == np.int32
    assert table.state_mask().tolist() == [True, False, True]
    assert table.names == ["door_open", "temp_c", "compressor_on"]


def test_metric_name_rule() -> None:
    assert set(STATE_SUFFIXES) <= set(UNIT_SUFFIXES)
    for name in ["voltage_v", "current_a", "temp_c", "humidity_pct", "door_open", "x_kwh",
                 "a" * 62 + "_v"]:
        assert is_metric_name(name), name
    for name in ["temp", "_c", "Temp_c", "temp_C", "temp_f", "a" * 63 + "_v", "temp c",
                 "temp_c\n", "tempc", "9_v", ""]:
        assert not is_metric_name(name), name


def test_empty_input_gives_every_column_empty() -> None:
    b = decode()
    assert set(b.readings) == {c.name for c in SENSOR_COLUMNS} | {"device", "metric", "msg"}
    assert all(v.size == 0 for v in b.readings.values())
    assert len(b.rejects) == 0


def test_device_and_received_at_need_one_entry_per_payload() -> None:
    with pytest.raises(ValueError, match="one entry per payload"):
        decode_sensor([b"{}"], np.zeros(1, np.int32), np.zeros(3, np.int64), MetricTable())


def test_mixed_batch_keeps_good_messages_and_names_each_bad_one() -> None:
    ok = {"time": MS, "values": {"temp_c": 4.5}}
    table = MetricTable()
    b = decode(
        ok,
        b'{"samples": [{"time": 0, "values": {"temp_c": 1}}, {"time": 1, "values": '
        b'{"temp_c": 2}}, {"time": 2, "values": {"humidity_pct": 5, "temp_c": NaN}}]}',
        {"time": MS, "values": {"temp_c": "4.5"}},
        {"time": MS, "values": {"temp": 4.5}},
        {"samples": [ok, {"time": MS, "values": {"door_open": True}}]},
        {"samples": [ok, {"time": MS, "values": {"door_open": 0.5}}]},
        {"time": MS, "values": {}},
        {"samples": [ok] * 3},
        {"time": MS, "values": {f"m{i}_v": i for i in range(4)}},
        {"time": "2025-03-01T08:15:30", "values": {"temp_c": 4.5}},
        {"time": MS + 300_001, "values": {"temp_c": 4.5}},
        {"samples": [ok, {"time": MS - 2_592_000_001, "values": {"temp_c": 4.5}}]},
        b'{"time": 1740816930000, "values": {"temp_c": 4.5}, "node": "n1"}',
        b"{",
        {"time": MS, "values": {"door_open": 1}},
        table=table, device=list(range(15)), config=SensorConfig(max_samples=2, max_metrics=3))
    assert rejects(b) == [
        (1, "non_finite", "samples[2].values.temp_c: NaN is not allowed"),
        (2, "schema", "values.temp_c: expected number, got string"),
        (3, "bad_metric_name", "values.temp: not a metric name ([a-z][a-z0-9_]{0,63} ending "
                               "in a unit suffix)"),
        (4, "schema", "samples[1].values.door_open: expected number, got boolean"),
        (5, "schema", "samples[1].values.door_open: a state metric is 0 or 1, got 0.5"),
        (6, "schema", "values: no metrics"),
        (7, "too_many_readings", "samples: 3 samples > 2"),
        (8, "too_many_readings", "values: 4 metrics > 3"),
        (9, "bad_time", "time: '2025-03-01T08:15:30' is neither an RFC 3339 date-time with "
                        "offset nor epoch milliseconds"),
        (10, "future_time", "time: 1740817230001 is 300.001 s after arrival (tolerance 300 s)"),
        (11, "stale_time", "samples[1].time: 1738224929999 is 2592000.001 s before arrival "
                           "(tolerance 2592000 s)"),
        (12, "schema", "node: unknown field"),
        (13, "bad_json", "Input data was truncated"),
    ]
    assert rows(b, table) == [(0, 0, "temp_c", 4.5, RECV), (14, 14, "door_open", 1.0, RECV)]
    assert set(b.rejects.reason.tolist()) <= set(REJECT_REASONS)


def test_time_window_edges_are_inclusive() -> None:
    config = SensorConfig(future_tolerance_s=1, past_tolerance_s=2)
    b = decode(*({"time": t, "values": {"temp_c": 1}} for t in
                 (MS + 1000, MS - 2000, MS + 1001, MS - 2001)), config=config)
    assert [(m, r) for m, r, _ in rejects(b)] == [(2, "future_time"), (3, "stale_time")]


def test_any_offset_and_fraction_give_the_same_instant() -> None:
    times = ["2025-03-01T08:15:30.5Z", "2025-03-01t16:15:30.500+08:00",
             "2025-03-01T02:45:30.500000000-05:30", MS + 500, float(MS + 500)]
    b = decode({"samples": [{"time": t, "values": {"temp_c": 1}} for t in times]})
    assert b.readings["time"].tolist() == [RECV + 500_000] * len(times)


@pytest.mark.parametrize("kwargs", [
    {"future_tolerance_s": -1}, {"past_tolerance_s": float("nan")}, {"max_samples": 0},
    {"max_metrics": 0}])
def test_config_rejects_impossible_limits(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SensorConfig(**kwargs)  # type: ignore[arg-type]


# --- robustness -----------------------------------------------------------------------

VALID = [
    json.dumps({"time": "2025-03-01T08:15:30Z", "values": {"voltage_v": 229.8,
                                                           "door_open": 1}}).encode(),
    json.dumps({"samples": [{"time": MS, "values": {"temp_c": -18.5}},
                            {"time": MS - 1, "values": {"humidity_pct": 5e1}}]}).encode(),
]


def _accounted(b: SensorBatch, n: int) -> None:
    """Every message either produced rows or exactly one reject, never both."""
    rejected = b.rejects.msg.tolist()
    kept = set(b.readings["msg"].tolist())
    assert len(set(rejected)) == len(rejected)
    assert not set(rejected) & kept
    assert len(set(rejected) | kept) == n and set(rejected) | kept <= set(range(n))
    assert all(r in REJECT_REASONS for r in b.rejects.reason.tolist())
    assert np.isfinite(b.readings["value"]).all()


@pytest.mark.parametrize("payload", [
    b'{"time": 0, "values": {"a_v": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
    b'{"time": 0, "values": {"a_v": ' + b"[" * 100_000 + b"}}",
    b"[" * 100_000,
])
def test_deep_nesting_is_rejected_not_raised(payload: bytes) -> None:
    assert rejects(decode(payload))[0][1] in {"schema", "bad_json"}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_arbitrary_bytes_never_raise(payloads: list[bytes]) -> None:
    _accounted(decode(*payloads), len(payloads))


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.sampled_from(list(b'0123456789.-+eE"{}[],:NaI_ \\\x00\xff')))
        if op == "insert":
            data.insert(at, byte)
        elif at < len(data):
            if op == "delete":
                del data[at]
            else:
                data[at] = byte
    return bytes(data)


@settings(max_examples=500, deadline=None)
@given(st.lists(_mutated(), min_size=1, max_size=6))
def test_mutated_valid_payloads_never_raise(payloads: list[bytes]) -> None:
    _accounted(decode(*payloads), len(payloads))
