"""The processing core in the running pipeline: geofence events, anomalies, restarts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from beiflow.devices.simulators.nmea_encode import gga, rmc
from beiflow.ingest.cli import main
from beiflow.ingest.config import Config, parse_mqtt_url
from beiflow.ingest.replay import publish_in_order
from beiflow.ingest.runner import Ingest
from tests.conftest import count, wait_for

T0 = datetime(2025, 9, 1, 6, 0, 0, tzinfo=UTC)
# 110 m apart across the fence's southern edge (37.550); fixes 10 s apart (40 km/h)
OUT, IN = (37.5495, 121.3920), (37.5505, 121.3920)
STEP = timedelta(seconds=10)


def _fence_file(tmp_path: Path, *, name: str = "Container yard") -> Path:
    ring = [[121.388, 37.550], [121.396, 37.550], [121.396, 37.556], [121.388, 37.556],
            [121.388, 37.550]]
    fc = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "id": "yard-1",
        "properties": {"name": name, "speed_limit_kmh": 20},
        "geometry": {"type": "Polygon", "coordinates": [ring]}}]}
    path = tmp_path / "fences.geojson"
    path.write_text(json.dumps(fc))
    return path


def _epochs(points: list[tuple[float, float]], first: int) -> list[bytes]:
    out = []
    for i, (lat, lon) in enumerate(points):
        t = T0 + (first + i) * STEP
        out.append((rmc("GN", t, lat, lon, 1.0, 90.0) + "\r\n"
                    + gga("GN", t, lat, lon, 1, 12, 0.8, 10.0) + "\r\n").encode())
    return out


def _events(dsn: str, device: str) -> list[tuple[str, str, datetime]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT geofence_id, event, time FROM geofence_events"
                            " WHERE device_id = %s ORDER BY time, event", (device,)).fetchall()


def test_geofence_events_survive_a_restart_and_fences_reload_live(
        config: Config, run_ingest: Callable[..., Ingest], db_dsn: str, tmp_path: Path) -> None:
    assert main(["geofence", "import", str(_fence_file(tmp_path)), "--db-dsn", db_dsn]) == 0
    url = parse_mqtt_url(config.mqtt.url)
    topic = f"{config.mqtt.topic_root}/yantai/yt-9/nmea"

    first = run_ingest(config)
    # 3 fixes outside, then 4 inside: enter at the first inside fix (debounce 3)
    publish_in_order(url, topic, _epochs([OUT] * 3 + [IN] * 4, 0), rate_hz=0)
    wait_for(lambda: _events(db_dsn, "yt-9"), what="enter event")
    assert _events(db_dsn, "yt-9") == [("yard-1", "enter", T0 + 3 * STEP)]
    first.close()

    # another collector, already busy with other devices, gets yt-9 handed over: it
    # rebuilds yt-9's membership from the database on first sight (no second enter)
    second = run_ingest(replace(config, mqtt=replace(config.mqtt,
                                                     client_id=f"{config.mqtt.client_id}-b")))
    publish_in_order(url, f"{config.mqtt.topic_root}/yantai/busy-1/nmea",
                     _epochs([OUT] * 3, 0), rate_hz=0)
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM positions WHERE device_id = 'busy-1'")
             == 3, what="the second collector busy with another device")
    publish_in_order(url, topic, _epochs([IN] * 2 + [OUT] * 4, 7), rate_hz=0)
    wait_for(lambda: len(_events(db_dsn, "yt-9")) >= 2, what="exit event")
    assert _events(db_dsn, "yt-9") == [("yard-1", "enter", T0 + 3 * STEP),
                                       ("yard-1", "exit", T0 + 9 * STEP)]

    # moving the fence is picked up without a restart: renamed, same id, still evented
    assert main(["geofence", "import", str(_fence_file(tmp_path, name="Yard A")),
                 "--db-dsn", db_dsn]) == 0
    assert count(db_dsn, "SELECT count(*) FROM geofences WHERE name = 'Yard A'") == 1
    wait_for(lambda: second.metrics.registry.get_sample_value(
        "beiflow_geofence_events_total", {"event": "exit"}) == 1, what="exit counted")


def test_invalid_fence_file_names_the_feature(tmp_path: Path, db_dsn: str,
                                              capsys: object) -> None:
    bad = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "id": "bow-tie", "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1],
                                                         [0, 0]]]}}]}
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps(bad))
    assert main(["geofence", "import", str(path), "--db-dsn", db_dsn]) == 1
    assert "bow-tie" in capsys.readouterr().err  # type: ignore[attr-defined]
    assert count(db_dsn, "SELECT count(*) FROM geofences WHERE geofence_id = 'bow-tie'") == 0


def test_a_teleport_becomes_a_jump_anomaly_and_the_fix_is_kept_flagged(
        config: Config, run_ingest: Callable[..., Ingest], db_dsn: str) -> None:
    run_ingest(config)
    url = parse_mqtt_url(config.mqtt.url)
    track = [OUT, OUT, (OUT[0] + 0.5, OUT[1]), OUT, OUT]  # 55 km in ten seconds
    publish_in_order(url, f"{config.mqtt.topic_root}/yantai/tp-1/nmea", _epochs(track, 100),
                     rate_hz=0)
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM positions WHERE device_id = 'tp-1'")
             == 5, what="all five fixes stored")
    with psycopg.connect(db_dsn) as conn:
        kinds = conn.execute("SELECT kind, time FROM anomalies WHERE device_id = 'tp-1'"
                             ).fetchall()
        flags = conn.execute("SELECT flags & 16 <> 0 FROM positions WHERE device_id = 'tp-1'"
                             " ORDER BY time").fetchall()
    assert ("jump", T0 + 102 * STEP) in kinds
    assert [f for (f,) in flags] == [False, False, True, False, False]


def test_device_kind_from_config_sets_the_jump_bound_and_is_stored(
        config: Config, run_ingest: Callable[..., Ingest], db_dsn: str) -> None:
    cfg = replace(config, devices=replace(config.devices, kinds={"vsl-*": "vessel"}))
    run_ingest(cfg)
    url = parse_mqtt_url(cfg.mqtt.url)
    # 0.0025 deg of latitude (278 m) every 10 s: 100 km/h, a jump for a vessel only
    track = [(37.55 + 0.0025 * i, 121.39) for i in range(4)]
    for device in ("vsl-1", "trk-1"):
        publish_in_order(url, f"{cfg.mqtt.topic_root}/yantai/{device}/nmea",
                         _epochs(track, 200), rate_hz=0)
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM positions WHERE device_id IN"
                                   " ('vsl-1', 'trk-1')") == 8, what="both tracks")
    assert count(db_dsn, "SELECT count(*) FROM anomalies WHERE device_id = 'vsl-1'"
                         " AND kind = 'jump'") >= 1
    assert count(db_dsn, "SELECT count(*) FROM anomalies WHERE device_id = 'trk-1'"
                         " AND kind = 'jump'") == 0
    assert count(db_dsn, "SELECT count(*) FROM devices WHERE device_id = 'vsl-1'"
                         " AND kind = 'vessel'") == 1
    assert count(db_dsn, "SELECT count(*) FROM devices WHERE device_id = 'trk-1'"
                         " AND kind IS NULL") == 1
