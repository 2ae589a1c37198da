"""Fuzzing, short form (tests/fuzzkit.py; the 1,000,000-input run is bench/fuzz.py), and
regressions for what the fuzzer found."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg

from beiflow.ingest.config import Config, parse_mqtt_url
from beiflow.ingest.metrics import Metrics
from beiflow.ingest.pipeline import Pipeline, RawBatch
from beiflow.ingest.replay import publish_in_order
from beiflow.ingest.runner import Ingest
from tests.conftest import count, wait_for
from tests.fuzzkit import Fuzzer, summary


def test_20k_generated_inputs_raise_nothing_and_every_message_is_accounted_for(
        tmp_path: Path) -> None:
    report = Fuzzer(seed=20240601, out_dir=tmp_path, batch=1000).run(20_000)
    assert report.clean, summary(report)
    assert report.inputs == 20_000
    assert set(report.kinds) == {"bytes", "utf8_garbage", "valid", "bit_flip",
                                 "insert_delete", "splice", "json", "nmea"}
    assert report.outcomes["rows"] > 5000 and report.outcomes["dead_letter"] > 5000
    reasons = {r.split("/")[1] for r in report.rejected}
    assert {"bad_json", "schema", "bad_checksum", "non_ascii", "too_many_sentences",
            "device_mismatch", "oversize", "bad_topic"} <= reasons


def _series(metric: str, values: list[float]) -> list[bytes]:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    return [json.dumps({"time": (t0 + timedelta(seconds=10 * i)).isoformat(),
                        "values": {metric: v}}).encode() for i, v in enumerate(values)]


def _process_one_by_one(payloads: list[bytes], metric_topic: bytes) -> tuple[Pipeline, list]:
    p = Pipeline(Config(), Metrics())
    found = []
    for payload in payloads:
        wb = p.process(RawBatch([metric_topic], [payload], [time.time_ns() // 1000]))
        assert wb.anomalies is not None
        found += zip(wb.anomalies.kind.tolist(), wb.anomalies.detail.tolist(), strict=True)
    return p, found


def test_extreme_readings_give_anomaly_details_the_database_accepts() -> None:
    """Found by the fuzzer: -1e308 then 1e308 (finite doubles) made rate_per_s Infinity,
    which is no JSON; jsonb refused it and the batch could not be written."""
    _, found = _process_one_by_one(_series("temp_c", [1.0, 1.0, 1e308, -1e308, 1.0]),
                                   b"telemetry/s/fz-1/sensor")
    rates = [json.loads(d, parse_constant=lambda c: 1 / 0) for k, d in found
             if k == "rate_of_change"]
    assert {"rate_per_s": None, "value": -1e308} in [
        {k: r[k] for k in ("rate_per_s", "value")} for r in rates]


def test_an_extreme_reading_does_not_blind_the_statistical_detector() -> None:
    """Found by the fuzzer: one reading near the double's limit made the noise estimate
    infinite for good, so the series never raised ``statistical`` again."""
    normal = [230.0 + (i % 3) * 0.1 for i in range(60)]
    p, found = _process_one_by_one(_series("voltage_v", [*normal, 1e308, -1e308, 1e200,
                                                         *normal, 400.0]),
                                   b"telemetry/s/fz-2/sensor")
    state = p.core.sensors
    assert np.isfinite(state.mean[:1]).all() and np.isfinite(state.noise[:1]).all()
    assert found[-1][0] == "statistical" and '"value": 400.0' in found[-1][1]


def test_extreme_readings_land_end_to_end(config: Config, run_ingest: Callable[..., Ingest],
                                          db_dsn: str) -> None:
    run_ingest(config)
    payloads = _series("temp_c", [1.0, 1.0, 1e308, -1e308, 2.0])
    publish_in_order(parse_mqtt_url(config.mqtt.url),
                     f"{config.mqtt.topic_root}/s/fz-3/sensor", payloads, rate_hz=0)
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM sensor_readings"
                                   " WHERE device_id = 'fz-3'") == 5, what="the 5 readings")
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute("SELECT detail->'rate_per_s' FROM anomalies WHERE device_id ="
                            " 'fz-3' AND kind = 'rate_of_change'").fetchall()
    assert ("null",) in [(json.dumps(r[0]),) for r in rows]
    assert count(db_dsn, "SELECT count(*) FROM dead_letters WHERE device_id = 'fz-3'") == 0
