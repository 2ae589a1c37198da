"""The live map page and its read-only JSON API, served beside ``/metrics``.

``/`` (or ``/map``) is a self-contained page (``web/``: no external resources) that polls
``/api/fences``, ``/api/positions``, ``/api/events`` and ``/api/rates`` every 2 s. A tile
layer is drawn under the vectors only when ``BEIFLOW_MAP_TILES`` gives a URL template.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import psycopg

from beiflow.ingest.metrics import Metrics

log = logging.getLogger(__name__)

#: (status, body, content type), or None when the path is not ours.
Reply = tuple[int, bytes, str]
WebHandler = Callable[[str, str], Reply | None]

MAX_DEVICES = 500
MAX_TRACK_POINTS = 300
MAX_FENCES = 1000
MAX_EVENTS = 500
MAX_MINUTES = 24 * 60

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/map": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}

_LATEST = (
    "SELECT d.device_id, d.site, d.kind, p.time, p.lat, p.lon, p.speed_mps, p.course_deg,"
    " p.flags FROM devices d CROSS JOIN LATERAL (SELECT time, lat, lon, speed_mps,"
    " course_deg, flags FROM positions p WHERE p.device_id = d.device_id"
    " AND p.lat IS NOT NULL ORDER BY time DESC LIMIT 1) p"
    " ORDER BY p.time DESC, d.device_id LIMIT %s"
)
_TRACKS = (
    "SELECT d.id, t.lat, t.lon FROM unnest(%s::text[], %s::timestamptz[]) AS d(id, last)"
    " CROSS JOIN LATERAL (SELECT time, lat, lon FROM positions p WHERE p.device_id = d.id"
    " AND p.lat IS NOT NULL AND p.time >= d.last - make_interval(mins => %s::int)"
    " ORDER BY time DESC LIMIT %s) t ORDER BY d.id, t.time"
)
_EVENTS = (
    "SELECT * FROM ("
    "(SELECT e.time, 'geofence' AS type, e.device_id, e.event AS what, e.geofence_id AS ref,"
    " g.name AS ref_name, NULL::float8 AS score, e.detail FROM geofence_events e"
    " LEFT JOIN geofences g USING (geofence_id) ORDER BY e.time DESC LIMIT %(n)s)"
    " UNION ALL "
    "(SELECT time, 'anomaly', device_id, kind, stream, NULL, score, detail FROM anomalies"
    " ORDER BY time DESC LIMIT %(n)s)) m ORDER BY time DESC, device_id, what LIMIT %(n)s"
)


class BadParamError(ValueError):
    """A query parameter out of range or not an integer."""


def _int_param(query: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        v = int(values[-1])
    except ValueError as exc:
        raise BadParamError(f"{name} must be an integer") from exc
    if not lo <= v <= hi:
        raise BadParamError(f"{name} must be between {lo} and {hi}")
    return v


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _json(code: int, obj: object) -> Reply:
    return code, json.dumps(obj, separators=(",", ":")).encode(), "application/json"


class WebApp:
    """Routes the page and the ``/api/*`` endpoints; one short-lived connection per request."""

    def __init__(self, dsn: str, metrics: Metrics, *, tiles: str | None = None) -> None:
        self.dsn, self.metrics = dsn, metrics
        self.started = time.time()
        env = os.environ.get("BEIFLOW_MAP_TILES")
        self.tiles = (tiles if tiles is not None else env) or None  # "" means no tiles
        self._api: dict[str, Callable[[dict[str, list[str]]], object]] = {
            "/api/fences": self.fences, "/api/positions": self.positions,
            "/api/events": self.events, "/api/rates": lambda _q: self.rates(),
            "/api/config": lambda _q: {"tiles": self.tiles},
        }

    def __call__(self, path: str, query: str) -> Reply | None:
        """Answer ``path`` (without the query string), or None for a path not ours."""
        if path in _STATIC:
            name, ctype = _STATIC[path]
            body = resources.files("beiflow.ingest").joinpath("web", name).read_bytes()
            return 200, body, ctype
        api = self._api.get(path)
        if api is None:
            return None
        try:
            return _json(200, api(parse_qs(query)))
        except BadParamError as exc:
            return _json(400, {"error": str(exc)})
        except psycopg.Error as exc:
            log.warning("web %s: database error: %s", path, type(exc).__name__)
            return _json(503, {"error": "database unavailable"})
        except Exception:  # never a stack trace to the client
            log.exception("web %s failed", path)
            return _json(500, {"error": "internal error"})

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, connect_timeout=3, autocommit=True)

    def fences(self, _query: dict[str, list[str]]) -> dict[str, object]:
        """All geofences (at most ``MAX_FENCES``) as a GeoJSON FeatureCollection; ``shape``
        is the fence kind (polygon, circle, corridor), other properties as imported."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT geofence_id, name, kind, geometry, properties, speed_limit_kmh, dwell_s"
                " FROM geofences ORDER BY geofence_id LIMIT %s", (MAX_FENCES,)).fetchall()
        features = [{"type": "Feature", "id": fid, "geometry": geom,
                     "properties": {**(props or {}), "name": name, "shape": kind,
                                    "speed_limit_kmh": limit, "dwell_s": dwell}}
                    for fid, name, kind, geom, props, limit, dwell in rows]
        return {"type": "FeatureCollection", "features": features}

    def positions(self, query: dict[str, list[str]]) -> dict[str, object]:
        """Latest fix per device and its track over the ``minutes`` before that fix."""
        minutes = _int_param(query, "minutes", 10, 1, MAX_MINUTES)
        with self._connect() as conn:
            latest = conn.execute(_LATEST, (MAX_DEVICES,)).fetchall()
            ids = [r[0] for r in latest]
            tracks: dict[str, list[list[float]]] = {i: [] for i in ids}
            if ids:
                for dev, lat, lon in conn.execute(
                        _TRACKS, (ids, [r[3] for r in latest], minutes, MAX_TRACK_POINTS)):
                    tracks[dev].append([lon, lat])
        devices = [{"device_id": d, "site": site, "kind": kind, "time": _iso(t), "lat": lat,
                    "lon": lon, "speed_mps": spd, "course_deg": crs, "flags": flags,
                    "track": tracks[d]}
                   for d, site, kind, t, lat, lon, spd, crs, flags in latest]
        return {"minutes": minutes, "devices": devices}

    def events(self, query: dict[str, list[str]]) -> dict[str, object]:
        """Recent geofence events and anomalies merged, newest (device time) first."""
        n = _int_param(query, "limit", 50, 1, MAX_EVENTS)
        with self._connect() as conn:
            rows = conn.execute(_EVENTS, {"n": n}).fetchall()
        return {"events": [
            {"time": _iso(t), "type": typ, "device_id": dev, "what": what, "ref": ref,
             "ref_name": ref_name, "score": score, "detail": detail}
            for t, typ, dev, what, ref, ref_name, score, detail in rows]}

    def rates(self) -> dict[str, object]:
        """Counter totals from the registry; the page divides two scrapes' differences
        (or the totals by ``uptime_s`` when the scrapes are under half a second apart)."""
        received: dict[str, float] = {}
        rows: dict[str, float] = {}
        rejected = acked = events = anomalies = 0.0
        for family in self.metrics.registry.collect():
            for s in family.samples:
                if s.name == "beiflow_messages_received_total":
                    received[s.labels["stream"]] = s.value
                elif s.name == "beiflow_rows_written_total":
                    rows[s.labels["table"]] = s.value
                elif s.name == "beiflow_messages_rejected_total":
                    rejected += s.value
                elif s.name == "beiflow_messages_acked_total":
                    acked += s.value
                elif s.name == "beiflow_geofence_events_total":
                    events += s.value
                elif s.name == "beiflow_anomalies_total":
                    anomalies += s.value
        r = self.metrics.registry
        now = time.time()
        return {"t": now, "uptime_s": now - self.started, "received": received, "rows": rows,
                "rejected": rejected, "acked": acked, "geofence_events": events,
                "anomalies": anomalies,
                "mqtt_connected": r.get_sample_value("beiflow_mqtt_connected") or 0.0,
                "db_up": r.get_sample_value("beiflow_db_up") or 0.0}
