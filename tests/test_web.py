"""The live map: JSON API against a running ingest, and the page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from beiflow.devices.simulators.nmea_encode import gga, rmc
from beiflow.ingest.config import Config, parse_mqtt_url
from beiflow.ingest.geofences import import_fences, read_geojson
from beiflow.ingest.metrics import Metrics, MetricsServer
from beiflow.ingest.replay import publish_in_order
from beiflow.ingest.runner import Ingest
from beiflow.ingest.web import WebApp
from beiflow.processing.geofence_defs import parse_geojson
from tests.conftest import count, wait_for
from tests.scratchdb import scratch_database

CHROMIUM = "/usr/bin/chromium"
YANTAI = Path(__file__).parents[1] / "devices/simulators/data/yantai_port.geojson"
T0 = datetime(2025, 10, 1, 8, 0, 0, tzinfo=UTC)
STEP = timedelta(seconds=10)
OUT, IN = (37.5495, 121.3920), (37.5505, 121.3920)
RING = [[121.388, 37.550], [121.396, 37.550], [121.396, 37.556], [121.388, 37.556],
        [121.388, 37.550]]
FENCE = {"type": "Feature", "id": "web-yard",
         "properties": {"name": "Web yard", "speed_limit_kmh": 20},
         "geometry": {"type": "Polygon", "coordinates": [RING]}}


@pytest.fixture(scope="module")
def web_dsn(admin_dsn: str) -> Iterator[str]:
    """A database of this module's own: its fences must not fence other tests' devices."""
    with scratch_database(admin_dsn, f"beiflow_web_{uuid.uuid4().hex[:8]}") as dsn:
        yield dsn


@pytest.fixture
def web_config(config: Config, web_dsn: str) -> Config:
    """The test config on the module's own database."""
    return replace(config, db=replace(config.db, dsn=web_dsn))


def _epochs(points: list[tuple[float, float]], first: int) -> list[bytes]:
    out = []
    for i, (lat, lon) in enumerate(points):
        t = T0 + (first + i) * STEP
        out.append((rmc("GN", t, lat, lon, 1.0, 90.0) + "\r\n"
                    + gga("GN", t, lat, lon, 1, 12, 0.8, 10.0) + "\r\n").encode())
    return out


def _get(base: str, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(base + path, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _base(ing: Ingest) -> str:
    return f"http://{ing.server.host}:{ing.server.port}"


def test_api_serves_fences_positions_events_and_rates(
        web_config: Config, run_ingest: Callable[..., Ingest], web_dsn: str) -> None:
    config, db_dsn = web_config, web_dsn
    import_fences(db_dsn, parse_geojson({"type": "FeatureCollection", "features": [FENCE]}))
    ing = run_ingest(config)
    url = parse_mqtt_url(config.mqtt.url)
    root = config.mqtt.topic_root
    # web-1: 3 fixes outside the yard then 5 inside (enter at the 4th); web-2: a teleport
    publish_in_order(url, f"{root}/yantai/web-1/nmea", _epochs([OUT] * 3 + [IN] * 5, 0),
                     rate_hz=0)
    jump = [OUT, OUT, (OUT[0] + 0.5, OUT[1]), OUT, OUT]
    publish_in_order(url, f"{root}/yantai/web-2/nmea", _epochs(jump, 100), rate_hz=0)
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM positions WHERE device_id IN"
                                   " ('web-1', 'web-2')") == 13, what="13 fixes stored")
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM geofence_events"
                                   " WHERE device_id = 'web-1'") == 1, what="enter event")
    base = _base(ing)

    code, fences = _get(base, "/api/fences")
    assert code == 200 and fences["type"] == "FeatureCollection"
    [yard] = [f for f in fences["features"] if f["id"] == "web-yard"]
    assert yard == {"type": "Feature", "id": "web-yard",
                    "geometry": {"type": "Polygon", "coordinates": [RING]},
                    "properties": {"name": "Web yard", "shape": "polygon",
                                   "speed_limit_kmh": 20.0, "dwell_s": None}}

    code, pos = _get(base, "/api/positions?minutes=10")
    assert code == 200 and pos["minutes"] == 10
    devs = {d["device_id"]: d for d in pos["devices"]}
    w1 = devs["web-1"]
    assert (w1["site"], w1["time"], w1["lat"], w1["lon"]) == (
        "yantai", _iso(T0 + 7 * STEP), IN[0], IN[1])
    assert w1["track"] == [[OUT[1], OUT[0]]] * 3 + [[IN[1], IN[0]]] * 5
    assert devs["web-2"]["time"] == _iso(T0 + 104 * STEP)
    assert len(devs["web-2"]["track"]) == 5
    # the track window is relative to each device's latest fix: 60 s back covers 7 of 8
    _, pos1 = _get(base, "/api/positions?minutes=1")
    assert [d["track"] for d in pos1["devices"] if d["device_id"] == "web-1"] == [
        [[OUT[1], OUT[0]]] * 2 + [[IN[1], IN[0]]] * 5]

    code, ev = _get(base, "/api/events?limit=500")
    assert code == 200
    mine = [e for e in ev["events"] if e["device_id"] in ("web-1", "web-2")]
    times = [e["time"] for e in ev["events"]]
    assert times == sorted(times, reverse=True)
    geo = [e for e in mine if e["type"] == "geofence"]
    assert [(e["device_id"], e["what"], e["ref"], e["ref_name"], e["time"]) for e in geo] == [
        ("web-1", "enter", "web-yard", "Web yard", _iso(T0 + 3 * STEP))]
    with psycopg.connect(db_dsn) as conn:
        expected = conn.execute("SELECT time, kind, stream FROM anomalies WHERE device_id IN"
                                " ('web-1', 'web-2') ORDER BY time DESC, kind").fetchall()
    anomalies = [(e["time"], e["what"], e["ref"]) for e in mine if e["type"] == "anomaly"]
    assert sorted(anomalies, reverse=True) == [(_iso(t), k, s) for t, k, s in expected]
    assert (_iso(T0 + 102 * STEP), "jump", "nmea") in anomalies
    _, ev2 = _get(base, "/api/events?limit=2")
    assert len(ev2["events"]) == 2

    code, rates = _get(base, "/api/rates")
    assert code == 200
    assert rates["received"] == {"nmea": 13.0}
    assert rates["rows"]["positions"] == 13.0
    assert rates["rejected"] == 0.0 and rates["acked"] == 13.0
    assert rates["geofence_events"] == 1.0 and rates["anomalies"] >= 1.0

    for bad in ("/api/positions?minutes=0", "/api/positions?minutes=x",
                "/api/positions?minutes=1441", "/api/events?limit=501"):
        code, body = _get(base, bad)
        assert code == 400 and "error" in body, bad


def test_page_is_self_contained_and_db_errors_are_503() -> None:
    metrics = Metrics()
    app = WebApp("postgresql://nobody@127.0.0.1:1/none", metrics, tiles="")
    server = MetricsServer(metrics, "127.0.0.1", 0, extra=app).start()
    base = f"http://{server.host}:{server.port}"
    try:
        for path in ("/", "/map", "/app.js", "/style.css"):
            with urllib.request.urlopen(base + path, timeout=5) as r:
                text = r.read().decode()
            assert r.status == 200
            for external in ('src="http', 'href="http', "url(", "@import", "//cdn", "fonts."):
                assert external not in text, (path, external)
        code, body = _get(base, "/api/fences")
        assert (code, body) == (503, {"error": "database unavailable"})
        assert _get(base, "/api/config") == (200, {"tiles": None})
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            assert b"beiflow_messages_received" in r.read()
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(base + "/nope", timeout=5)
        assert exc.value.code == 404
    finally:
        server.close()


def png_colours(path: Path) -> int:
    """Distinct RGB colours of an 8-bit RGB/RGBA PNG (tiny decoder: zlib and filters)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    w, h, depth, ctype = struct.unpack(">IIBB", ihdr[:10])
    assert depth == 8 and ctype in (2, 6), f"unsupported PNG (depth {depth}, type {ctype})"
    bpp = 3 if ctype == 2 else 4
    raw, stride = zlib.decompress(idat), w * bpp
    prev, colours = bytearray(stride), set()
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colours.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp * 4))
        prev = line
    return len(colours)


def _chromium(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp / 'profile'}", "--window-size=1280,800",
         "--virtual-time-budget=5000", *args, url],
        capture_output=True, text=True, timeout=120, check=False)


def test_page_in_headless_chromium_shows_devices_and_fences(
        web_config: Config, run_ingest: Callable[..., Ingest], web_dsn: str,
        tmp_path: Path) -> None:
    config, db_dsn = web_config, web_dsn
    if not Path(CHROMIUM).exists():  # fail, never skip: scripts/setup.sh installs it
        pytest.fail(f"{CHROMIUM} missing: run scripts/setup.sh (apt-get install chromium)")
    import_fences(db_dsn, read_geojson(YANTAI))
    ing = run_ingest(config)
    url = parse_mqtt_url(config.mqtt.url)
    tracks = {"map-truck-1": [(37.548 + 0.0004 * i, 121.380 + 0.0008 * i) for i in range(12)],
              "map-truck-2": [(37.562 - 0.0003 * i, 121.410 - 0.0006 * i) for i in range(12)],
              "map-crane-3": [(37.5655, 121.386 + 0.0005 * i) for i in range(12)]}
    for dev, pts in tracks.items():
        publish_in_order(url, f"{config.mqtt.topic_root}/yantai/{dev}/nmea",
                         _epochs(pts, 200), rate_hz=0)
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM positions"
                                   " WHERE starts_with(device_id, 'map-')") == 36,
             what="36 map fixes stored")
    page = f"{_base(ing)}/"

    dom = _chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for text in [*tracks, "Berth 1", "Yantai Port operating area", 'class="scale"']:
        assert text in dom.stdout, f"{text!r} not in the rendered page"
    assert "error:" not in dom.stdout

    png = tmp_path / "map.png"
    shot = _chromium(page, tmp_path, f"--screenshot={png}")
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    assert png_colours(png) >= 20, "screenshot looks blank"
    if dest := os.environ.get("BEIFLOW_MAP_SCREENSHOT"):  # docs/screenshots/map.png
        shutil.copy(png, dest)
