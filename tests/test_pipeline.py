"""Pipeline.process without services: classification, redeliveries, quarantine."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from beiflow.devices.simulators.nmea_encode import gga, rmc
from beiflow.ingest.config import load_config
from beiflow.ingest.metrics import Metrics
from beiflow.ingest.pipeline import Pipeline, RawBatch

T0 = datetime(2025, 2, 3, 4, 5, 6, tzinfo=UTC)


def _pipeline() -> Pipeline:
    cfg = load_config(env={})
    return Pipeline(replace(cfg, nmea=replace(cfg.nmea, past_tolerance_s=1e10)), Metrics())


def _raw(n: int, first: int, *, dup: bool = False) -> RawBatch:
    payloads = []
    for i in range(first, first + n):
        t = T0 + timedelta(seconds=10 * i)
        lat, lon = 37.55 + i * 1e-4, 121.39
        payloads.append((rmc("GB", t, lat, lon, 1.0, 0.0) + "\r\n"
                         + gga("GB", t, lat, lon, 1, 10, 0.9, 5.0) + "\r\n").encode())
    now = time.time_ns() // 1000
    return RawBatch([b"telemetry/yt/bd-1/nmea"] * n, payloads, [now] * n,
                    list(range(n)) if dup else [])


def _kinds(p: Pipeline, raw: RawBatch) -> list[str]:
    batch = p.process(raw)
    assert batch.anomalies is not None
    return batch.anomalies.kind.tolist()


def test_redelivered_fixes_are_not_time_backwards_but_late_new_ones_are() -> None:
    p = _pipeline()
    assert "time_backwards" not in _kinds(p, _raw(5, 0))
    # the broker redelivers the same five messages (DUP set): nothing is out of order
    assert "time_backwards" not in _kinds(p, _raw(5, 0, dup=True))
    # five older fixes that were never seen, without DUP: out of order
    assert _kinds(p, _raw(5, -10)).count("time_backwards") == 5
    assert p._metrics.registry.get_sample_value("beiflow_messages_redelivered_total") == 5


def test_topics_are_classified_and_devices_reindexed_per_batch() -> None:
    p = _pipeline()
    raw = _raw(2, 0)
    raw.topics[1] = b"telemetry/yt/bd-2/nmea"
    raw.topics.append(b"elsewhere/x")
    raw.payloads.append(b"x")
    raw.received_us.append(raw.received_us[0])
    batch = p.process(raw)
    assert [d for d, _ in batch.devices] == ["bd-1", "bd-2"]
    assert batch.msg_device.tolist() == [0, 1, -1]
    assert [dl.error for dl in batch.dead_letters] == ["bad_topic"]
    assert batch.positions is not None and sorted(batch.positions["device"].tolist()) == [0, 1]


def test_whitespace_only_payloads_are_dead_lettered_as_empty() -> None:
    p = _pipeline()
    raw = RawBatch([b"telemetry/yt/bd-1/nmea"] * 2, [b"\r\n", b" \n\t"],
                   [time.time_ns() // 1000] * 2)
    assert [dl.error for dl in p.process(raw).dead_letters] == ["empty_payload"] * 2
