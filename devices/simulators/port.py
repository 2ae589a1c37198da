"""Port traffic around Yantai: fences, roads, a fleet's true tracks and their geofence truth.

The model, and what it leaves out:

* **Fences** come from ``data/yantai_port.geojson`` (:func:`load_port_fences`).
  :class:`FenceChecker` tests many points against every fence at once, with the semantics
  of ``processing.geofence_defs`` implemented independently (the simulator must not share
  code with the system it tests): even-odd ray casting over all rings for polygons (holes,
  multipolygons), haversine distance <= ``radius_m`` for circles, distance in local metres
  to the centre line <= ``width_m / 2`` for corridors. Results agree away from boundaries.
* **Roads** come from ``data/yantai_roads.geojson`` (:func:`load_road_network`):
  LineStrings of mode ``road`` (coastal highway outside, both gates, the port road corridor,
  south and east roads, yard lanes, quay road, apron spurs), ``sea`` (fairways from two
  anchorages north of the port to the berths) and ``rail`` (a crane rail per berth), joined
  where they share a vertex; Points name the stops (gates, customs, fuel depot, yard slots,
  apron and mooring spots, rail stops). Routes are Dijkstra shortest paths, computed while
  the fleet is built. Edges of access ``restricted`` (into the dangerous goods yard) and
  ``service`` (along the quay apron) only carry injected detours. Features with a ``sky``
  value (0 under a highway underpass, 0.5 in the crane shadow along the quay apron) give
  :func:`sky_at`, the open-sky fraction for the GNSS model.
* **Motion.** A leg is a route driven from rest to rest. Its speed profile is the fastest
  one under a cap with the kind's acceleration and deceleration (forward/backward pass on
  2 m samples). The cap is the kind's top speed; its port speed where a fence is near;
  ``LIMIT_MARGIN`` (0.8) x the lowest ``speed_limit_kmh`` of every fence within
  ``LIMIT_BUFFER_M`` (15 m) of the position, so GNSS noise around a boundary never turns a
  normal drive into an overspeed; a slow speed through corners. Between knots the track is
  linear in lon/lat; the reported speed is that track's exact speed (constant between
  knots), the course its bearing (kept while stopped).
* **Missions**, repeated forever (a device's plan is periodic), each device starting at a
  seeded random point of its plan: trucks come in from the coastal highway through a gate
  (gate check), some via customs inspection, some refuel at the fuel depot, load at a
  container yard slot, unload at a berth's quay apron, leave through a gate and pause
  outside; yard tractors loop between their berth's apron and yard slots; vessels sail in
  from an anchorage, slow down, moor at a berth for 35 min to 2 h (longer than the berth's
  ``dwell_s``) and sail out; cranes travel slowly (0.3-0.8 m/s) along their berth's rail
  between stops.
* **Injections** (trucks and tractors): ``overspeed`` devices drive along the quay apron
  lane at ``OVERSPEED_FACTOR`` (1.45) x the apron's limit once per mission; ``restricted``
  devices divert into the dangerous goods yard once per mission and leave.
  :meth:`Fleet.injections` lists them with their time windows.
* **Truth.** :class:`TransitionTracker` turns sampled true positions into the geofence
  events the pipeline stores (enter, exit, dwell, overspeed) as ``processing.geofence_state``
  defines them with debounce 1: an event at the first fix on the new side.

Limits: devices do not interact (no queues, no berth or rail reservation: two vessels may
moor at one berth, cranes pass through each other); a device repeats the same plan every
period; altitude is constant per kind; corners are taken at a fixed slow speed, not on an
arc; lon/lat are interpolated linearly (an equirectangular track, exact enough for a port).
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from beiflow.devices.simulators.labels import Label

#: Mean Earth radius (m), as the pipeline uses for circles and corridors.
EARTH_RADIUS_M = 6371008.8
#: Metres per degree of latitude on that sphere.
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
DATA_DIR = Path(__file__).parent / "data"
PORT_FENCES = DATA_DIR / "yantai_port.geojson"
PORT_ROADS = DATA_DIR / "yantai_roads.geojson"

InjectionKind = Literal["overspeed", "restricted"]
#: The pipeline's device kind (``devices.kind``) of each simulated kind.
PIPELINE_KIND: dict[str, str] = {"truck": "road", "tractor": "road", "vessel": "vessel",
                                 "crane": "crane"}
#: Antenna altitude above the ellipsoid (m) per kind.
ALTITUDE_M: dict[str, float] = {"truck": 6.0, "tractor": 5.0, "vessel": 18.0, "crane": 45.0}
#: Normal speeds stay at or below this fraction of the limits of the fences around them.
LIMIT_MARGIN = 0.8
#: Fences this close (m) to a position count for its speed cap.
LIMIT_BUFFER_M = 15.0
#: Injected overspeed: this multiple of the fence's limit.
OVERSPEED_FACTOR = 1.45
_SAMPLE_M = 2.0
_NORMAL = frozenset({"normal"})
_KIND_RANK = {"enter": 0, "dwell": 1, "overspeed": 2, "exit": 3}


# ------------------------------------------------------------------------------ fences


@dataclass(frozen=True, slots=True)
class PortFence:
    """One fence of the port, as the simulator sees it (``geometry``: GeoJSON)."""

    name: str
    kind: str
    category: str
    speed_limit_kmh: float | None
    dwell_s: float | None
    geometry: dict[str, Any]
    radius_m: float | None = None
    width_m: float | None = None


def load_port_fences(path: Path | None = None) -> list[PortFence]:
    """The fences of a GeoJSON FeatureCollection (default: the shipped Yantai port)."""
    obj = json.loads((path or PORT_FENCES).read_text(encoding="utf-8"))
    return [_port_fence(f) for f in obj["features"]]


def _port_fence(feature: dict[str, Any]) -> PortFence:
    props = feature.get("properties") or {}

    def num(key: str) -> float | None:
        value = props.get(key)
        return None if value is None else float(value)

    return PortFence(name=str(props.get("name", feature.get("id"))),
                     kind=str(props.get("kind", "")), category=str(props.get("category", "")),
                     speed_limit_kmh=num("speed_limit_kmh"), dwell_s=num("dwell_s"),
                     geometry=feature["geometry"], radius_m=num("radius_m"),
                     width_m=num("width_m"))


class FenceChecker:
    """Containment of points in fences, all fences at once (NumPy, no loop over points)."""

    _CHUNK = 1 << 14

    def __init__(self, fences: Sequence[PortFence]) -> None:
        self.fences = tuple(fences)
        edges: list[tuple[int, np.ndarray]] = []      # polygon rings
        circles: list[tuple[int, float, float, float]] = []
        lines: list[tuple[int, np.ndarray, float]] = []
        for j, f in enumerate(self.fences):
            typ, coords = f.geometry["type"], f.geometry["coordinates"]
            if typ in ("Polygon", "MultiPolygon"):
                for ring in (r for poly in ([coords] if typ == "Polygon" else coords)
                             for r in poly):
                    xy = np.asarray(ring, dtype=np.float64)[:, :2]
                    edges.append((j, np.vstack([xy, xy[:1]]) if (xy[0] != xy[-1]).any() else xy))
            elif typ == "Point" and f.radius_m:
                circles.append((j, float(coords[0]), float(coords[1]), f.radius_m))
            elif typ == "LineString" and f.width_m:
                lines.append((j, np.asarray(coords, dtype=np.float64)[:, :2], f.width_m / 2))
            else:
                raise ValueError(f"fence {f.name!r}: unsupported geometry {typ} (Polygon, "
                                 "MultiPolygon, Point with radius_m, LineString with width_m)")
        # polygon edges, horizontal ones dropped (a horizontal ray never counts them)
        owner = np.concatenate([np.full(len(xy) - 1, j) for j, xy in edges] or [np.empty(0)])
        a = np.concatenate([xy[:-1] for _, xy in edges] or [np.empty((0, 2))])
        b = np.concatenate([xy[1:] for _, xy in edges] or [np.empty((0, 2))])
        keep = a[:, 1] != b[:, 1]
        self._p_fences, self._p_start = np.unique(owner[keep].astype(np.int64),
                                                  return_index=True)
        self._x0, self._y0, self._y1 = a[keep, 0], a[keep, 1], b[keep, 1]
        self._slope = (b[keep, 0] - a[keep, 0]) / (b[keep, 1] - a[keep, 1])
        c = np.array([c[1:] for c in circles], dtype=np.float64).reshape(-1, 3)
        self._c_fences = np.array([c[0] for c in circles], dtype=np.int64)
        self._c_lon, self._c_lat, self._c_r = c.T
        segs = [(j, p0, p1, hw) for j, xy, hw in lines for p0, p1 in pairwise(xy)]
        s_owner = np.array([s[0] for s in segs], dtype=np.int64)
        self._s_fences, self._s_start = np.unique(s_owner, return_index=True)
        p0 = np.array([s[1] for s in segs]).reshape(-1, 2)
        p1 = np.array([s[2] for s in segs]).reshape(-1, 2)
        self._s_lon0, self._s_lat0 = p0.T
        self._s_kx = np.cos(np.radians((p0[:, 1] + p1[:, 1]) / 2)) * M_PER_DEG
        self._s_ux = (p1[:, 0] - p0[:, 0]) * self._s_kx
        self._s_uy = (p1[:, 1] - p0[:, 1]) * M_PER_DEG
        len2 = self._s_ux ** 2 + self._s_uy ** 2
        self._s_inv = np.divide(1.0, len2, out=np.zeros_like(len2), where=len2 > 0)
        self._s_hw2 = np.array([s[3] ** 2 for s in segs], dtype=np.float64)
        # a box around every fence: points outside it are in none
        pts = np.concatenate([a, b, c[:, :2], p0, p1]).reshape(-1, 2)
        reach = max([r for *_, r in circles] + [hw for *_, hw in lines] + [0.0]) * 1.01
        pad = reach / M_PER_DEG / max(math.cos(math.radians(np.abs(pts[:, 1]).max(initial=0))),
                                      1e-6)
        self._box = (*(pts.min(axis=0, initial=np.inf) - pad),
                     *(pts.max(axis=0, initial=-np.inf) + pad))

    def inside(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Bool array (n_points, n_fences): point i lies in fence j. NaN: in no fence."""
        lat = np.asarray(lat, dtype=np.float64).ravel()
        lon = np.asarray(lon, dtype=np.float64).ravel()
        out = np.zeros((lat.size, len(self.fences)), dtype=bool)
        x0, y0, x1, y1 = self._box
        sel = np.flatnonzero((lon >= x0) & (lon <= x1) & (lat >= y0) & (lat <= y1))
        for lo in range(0, sel.size, self._CHUNK):
            rows = np.zeros((min(self._CHUNK, sel.size - lo), len(self.fences)), dtype=bool)
            y, x = lat[sel[lo:lo + self._CHUNK], None], lon[sel[lo:lo + self._CHUNK], None]
            if self._p_fences.size:
                hit = (self._y0 > y) != (self._y1 > y)
                hit &= x < self._x0 + (y - self._y0) * self._slope
                rows[:, self._p_fences] = np.logical_xor.reduceat(hit, self._p_start, axis=1)
            if self._c_fences.size:
                rows[:, self._c_fences] = _haversine_m(x, y, self._c_lon, self._c_lat) \
                    <= self._c_r
            if self._s_fences.size:
                dx = (x - self._s_lon0) * self._s_kx
                dy = (y - self._s_lat0) * M_PER_DEG
                t = np.clip((dx * self._s_ux + dy * self._s_uy) * self._s_inv, 0.0, 1.0)
                near = (dx - t * self._s_ux) ** 2 + (dy - t * self._s_uy) ** 2 <= self._s_hw2
                rows[:, self._s_fences] = np.logical_or.reduceat(near, self._s_start, axis=1)
            out[sel[lo:lo + self._CHUNK]] = rows
        return out


def _haversine_m(lon: np.ndarray, lat: np.ndarray, lon0: np.ndarray | float,
                 lat0: np.ndarray | float) -> np.ndarray:
    la, la0 = np.radians(lat), np.radians(lat0)
    s1 = np.sin((la - la0) / 2)
    s2 = np.sin(np.radians(lon - lon0) / 2)
    a = np.clip(s1 * s1 + np.cos(la) * np.cos(la0) * s2 * s2, 0.0, 1.0)
    return 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(a))


def _metres(lon0: np.ndarray, lat0: np.ndarray, lon1: np.ndarray, lat1: np.ndarray,
            ) -> tuple[np.ndarray, np.ndarray]:
    """East and north offsets (m) from point 0 to point 1 (local, mid-latitude scale)."""
    kx = np.cos(np.radians((lat0 + lat1) / 2)) * M_PER_DEG
    return (lon1 - lon0) * kx, (lat1 - lat0) * M_PER_DEG


# ------------------------------------------------------------------------------- roads


@dataclass(frozen=True, slots=True)
class Stop:
    """A named place where devices stop; ``node`` is its vertex in the road network."""

    name: str
    kind: str    # outside gate customs fuel yard apron restricted anchorage mooring crane
    node: int
    berth: str | None


class RoadNetwork:
    """The port's roads, fairways and crane rails as a graph, with stops and sky zones."""

    def __init__(self, features: Iterable[dict[str, Any]]) -> None:
        where: dict[tuple[str, float, float], int] = {}
        self.lon: list[float] = []
        self.lat: list[float] = []
        #: node -> neighbour -> (length m, access, fence the edge lies in or None)
        self.edges: list[dict[int, tuple[float, str, str | None]]] = []
        self.stops: list[Stop] = []
        points, sky = [], []

        def node(mode: str, p: Sequence[float]) -> int:
            key = (mode, round(float(p[0]), 7), round(float(p[1]), 7))
            if key not in where:
                where[key] = len(self.lon)
                self.lon.append(key[1])
                self.lat.append(key[2])
                self.edges.append({})
            return where[key]

        for f in features:
            props, geom = f.get("properties") or {}, f["geometry"]
            if "sky" in props:
                sky.append((_port_fence(f), float(props["sky"])))
            elif geom["type"] == "LineString":
                ids = [node(props["mode"], p) for p in geom["coordinates"]]
                for a, b in pairwise(ids):
                    e, n = _metres(np.array(self.lon[a]), np.array(self.lat[a]),
                                   np.array(self.lon[b]), np.array(self.lat[b]))
                    edge = (float(math.hypot(e, n)), str(props.get("access", "normal")),
                            props.get("fence"))
                    self.edges[a][b] = self.edges[b][a] = edge
            elif geom["type"] == "Point":
                points.append((props, geom["coordinates"]))
        for props, p in points:
            mode = "sea" if props["stop"] in ("anchorage", "mooring") else \
                "rail" if props["stop"] == "crane" else "road"
            key = (mode, round(float(p[0]), 7), round(float(p[1]), 7))
            if key not in where:
                raise ValueError(f"stop {props['name']!r} is not on a {mode} vertex")
            self.stops.append(Stop(str(props["name"]), str(props["stop"]), where[key],
                                   props.get("berth")))
        self._sky = FenceChecker([z for z, _ in sky])
        self._sky_value = np.array([v for _, v in sky], dtype=np.float64)
        self._routes: dict[tuple[int, int, frozenset[str]], tuple[int, ...]] = {}

    def stops_of(self, kind: str, berth: str | None = None) -> list[Stop]:
        """Stops of ``kind`` (and ``berth``), in file order."""
        return [s for s in self.stops if s.kind == kind and (berth is None or s.berth == berth)]

    def route(self, a: int, b: int, access: frozenset[str] = _NORMAL) -> tuple[int, ...]:
        """Nodes of the shortest path from ``a`` to ``b`` over edges of ``access``."""
        key = (a, b, access)
        if key not in self._routes:
            dist, prev, heap = {a: 0.0}, {a: a}, [(0.0, a)]
            while heap:
                d, n = heapq.heappop(heap)
                if n == b:
                    break
                if d > dist[n]:
                    continue
                for m, (length, acc, _) in self.edges[n].items():
                    if acc in access and d + length < dist.get(m, math.inf):
                        dist[m], prev[m] = d + length, n
                        heapq.heappush(heap, (d + length, m))
            if b not in prev:
                raise ValueError(f"no route from node {a} to node {b} over {sorted(access)}")
            path = [b]
            while path[-1] != a:
                path.append(prev[path[-1]])
            self._routes[key] = tuple(path[::-1])
        return self._routes[key]

    def sky_at(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Open-sky fraction 0..1 at each point (1 outside every sky zone)."""
        inside = self._sky.inside(lat, lon)
        return np.where(inside, self._sky_value, 1.0).min(axis=1, initial=1.0)


def load_road_network(path: Path | None = None) -> RoadNetwork:
    """The road network of a GeoJSON file (default: the shipped Yantai roads)."""
    obj = json.loads((path or PORT_ROADS).read_text(encoding="utf-8"))
    return RoadNetwork(obj["features"])


@cache
def _default_roads() -> RoadNetwork:
    return load_road_network()


def sky_at(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Open-sky fraction 0..1 at each point of the shipped road network (0: underpass,
    about 0.5: crane shadow along the quay apron, 1: open sky)."""
    return _default_roads().sky_at(lat, lon)


# ------------------------------------------------------------------------------ motion


@dataclass(frozen=True, slots=True)
class Motion:
    """Speed profile of a kind of device (m/s, m/s^2)."""

    top_mps: float
    port_mps: float     # top speed where any fence is near
    accel: float
    decel: float
    turn_mps: float     # through corners sharper than 45 degrees


MOTION: dict[str, Motion] = {
    "truck": Motion(13.9, 8.3, 1.0, 1.5, 3.0),
    "tractor": Motion(8.3, 8.3, 0.8, 1.2, 3.0),
    "vessel": Motion(5.5, 3.0, 0.02, 0.02, 5.5),
}
#: Crane travel speeds (m/s); each crane gets one.
CRANE_SPEEDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def _crane_motion(speed: float) -> Motion:
    return Motion(speed, speed, 0.1, 0.1, speed)


@dataclass(frozen=True, slots=True)
class _Leg:
    """Knots of one drive from rest to rest; ``speed``/``course``: of the interval from
    each knot to the next (0 / last course at the final knot)."""

    t: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    speed: np.ndarray
    course: np.ndarray
    #: when the injection deviates from normal driving (relative to the leg's start):
    #: over ``LIMIT_MARGIN`` x the limit, or inside the restricted fence
    span: tuple[float, float] | None


class _Planner:
    """Builds legs (cached by route, motion and injection target) for one fence set."""

    _DISK = np.array([(0.0, 0.0)] + [
        (r * math.cos(a), r * math.sin(a)) for r, k in ((0.5, 8), (1.0, 16))
        for a in np.linspace(0, 2 * math.pi, k, endpoint=False)]) * LIMIT_BUFFER_M

    def __init__(self, fences: Sequence[PortFence], roads: RoadNetwork) -> None:
        self.fences, self.roads = tuple(fences), roads
        self.checker = FenceChecker(fences)
        self.names = {f.name: j for j, f in enumerate(self.fences)}
        self.limit_mps = np.array([math.inf if f.speed_limit_kmh is None
                                   else f.speed_limit_kmh / 3.6 for f in self.fences])
        self.restricted = np.array([f.category == "restricted" for f in self.fences])
        self.legs: list[_Leg] = []
        self._leg_ids: dict[tuple[Any, ...], int] = {}
        self._edge_cache: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}

    def fence(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"fence {name!r} (named by the road network) is not defined")
        return self.names[name]

    def _edge(self, a: int, b: int) -> tuple[np.ndarray, ...]:
        """Samples of edge a-b, oriented a -> b: lon, lat, inside and near (n, fences)."""
        lo, hi = min(a, b), max(a, b)
        if (lo, hi) not in self._edge_cache:
            r = self.roads
            n = max(1, math.ceil(r.edges[lo][hi][0] / _SAMPLE_M))
            f = np.linspace(0.0, 1.0, n + 1)
            lon = r.lon[lo] + f * (r.lon[hi] - r.lon[lo])
            lat = r.lat[lo] + f * (r.lat[hi] - r.lat[lo])
            kx = np.cos(np.radians(lat)) * M_PER_DEG
            plon = lon[:, None] + self._DISK[:, 0] / kx[:, None]
            plat = lat[:, None] + self._DISK[:, 1] / M_PER_DEG
            ins = self.checker.inside(plat, plon).reshape(n + 1, len(self._DISK), -1)
            self._edge_cache[lo, hi] = (lon, lat, ins[:, 0], np.asarray(ins.any(axis=1)))
        arrays = self._edge_cache[lo, hi]
        return arrays if a == lo else tuple(x[::-1] for x in arrays)

    def leg(self, path: Sequence[int], motion: Motion, fast: str | None = None,
            target: str | None = None) -> int:
        """Leg id of driving ``path``; ``fast``: drive its ``service`` edges at
        ``OVERSPEED_FACTOR`` x that fence's limit; ``target``: record the time inside it."""
        key = (tuple(path), motion, fast, target)
        if key not in self._leg_ids:
            self._leg_ids[key] = len(self.legs)
            self.legs.append(self._build(tuple(path), motion, fast, target))
        return self._leg_ids[key]

    def _build(self, path: tuple[int, ...], motion: Motion, fast: str | None,
               target: str | None) -> _Leg:
        if len(path) < 2:
            raise ValueError("a leg needs two distinct nodes")
        edges = self.roads.edges
        parts = [self._edge(a, b) for a, b in pairwise(path)]
        lon, lat, inside, near = (np.concatenate([p[k][(i > 0):] for i, p in enumerate(parts)])
                                  for k in range(4))
        count = np.array([p[0].size - 1 for p in parts])
        vertex = np.r_[0, np.cumsum(count)]              # sample index of each path node
        service = np.zeros(lon.size, dtype=bool)
        for k, (a, b) in enumerate(pairwise(path)):
            if edges[a][b][1] == "service":
                service[vertex[k]:vertex[k + 1] + 1] = True
        if fast is None and service.any():
            raise ValueError("service edges are for injected overspeed only")
        detour = any(edges[a][b][1] == "restricted" for a, b in pairwise(path))
        if not detour and (inside & self.restricted).any():
            raise ValueError("a normal route enters a restricted fence")
        east, north = _metres(lon[:-1], lat[:-1], lon[1:], lat[1:])
        ds = np.hypot(east, north)
        s = np.r_[0.0, np.cumsum(ds)]
        cap = np.minimum(motion.top_mps,
                         LIMIT_MARGIN * np.where(near, self.limit_mps, np.inf).min(axis=1))
        cap = np.where(near.any(axis=1), np.minimum(cap, motion.port_mps), cap)
        if fast is not None:
            j = self.fence(fast)
            others = near.copy()
            others[:, j] = False
            fast_cap = np.minimum(OVERSPEED_FACTOR * self.limit_mps[j], LIMIT_MARGIN * np.where(
                others, self.limit_mps, np.inf).min(axis=1))
            cap = np.where(service, np.minimum(motion.top_mps, fast_cap), cap)
        course = np.degrees(np.arctan2(east, north)) % 360.0
        turn = np.abs((course[vertex[1:-1]] - course[vertex[1:-1] - 1] + 180.0) % 360.0 - 180.0)
        sharp = vertex[1:-1][turn > 45.0]
        cap[sharp] = np.minimum(cap[sharp], motion.turn_mps)
        cap[[0, -1]] = 0.0
        w = cap * cap
        fwd = 2 * motion.accel * s + np.minimum.accumulate(w - 2 * motion.accel * s)
        bwd = np.minimum.accumulate((w + 2 * motion.decel * s)[::-1])[::-1] \
            - 2 * motion.decel * s
        v = np.sqrt(np.maximum(np.minimum(fwd, bwd), 0.0))
        vbar = (v[:-1] + v[1:]) / 2
        t = np.r_[0.0, np.cumsum(ds / vbar)]
        # knots: path vertices and where the interval speed changes
        change = np.zeros(lon.size, dtype=bool)
        change[1:-1] = ~np.isclose(vbar[1:], vbar[:-1], rtol=1e-9, atol=0.0)
        change[vertex] = True
        knot = np.flatnonzero(change)
        speed = np.r_[np.diff(s[knot]) / np.diff(t[knot]), 0.0]
        crs = course[knot[:-1]]
        span = None
        if fast is not None:
            over = np.flatnonzero(service[:-1] & service[1:]
                                  & (vbar > LIMIT_MARGIN * self.limit_mps[self.fence(fast)]))
            if not over.size:
                raise ValueError(f"no room to speed in {fast!r} on this route")
            span = (float(t[over[0]]), float(t[over[-1] + 1]))
        elif target is not None:
            j = self.fence(target)
            hit = np.flatnonzero(inside[:, j])
            first, last = int(hit[0]), int(hit[-1])
            span = (0.0 if first == 0 else self._crossing(lon, lat, t, first - 1, j)[1],
                    float(t[-1]) if last == t.size - 1 else
                    self._crossing(lon, lat, t, last, j)[0])
        return _Leg(t[knot], lon[knot], lat[knot], speed, np.r_[crs, crs[-1]], span)

    def _crossing(self, lon: np.ndarray, lat: np.ndarray, t: np.ndarray, i: int,
                  j: int) -> tuple[float, float]:
        """Times just before and after the track crosses fence ``j``'s boundary between
        samples ``i`` and ``i + 1`` (bisection to a microsecond)."""
        lo, hi = 0.0, 1.0
        side = self.checker.inside(lat[i:i + 1], lon[i:i + 1])[0, j]
        while (hi - lo) * (t[i + 1] - t[i]) > 1e-6:
            mid = (lo + hi) / 2
            at = self.checker.inside(lat[i:i + 1] + mid * (lat[i + 1] - lat[i]),
                                     lon[i:i + 1] + mid * (lon[i + 1] - lon[i]))[0, j]
            lo, hi = (mid, hi) if at == side else (lo, mid)
        return float(t[i] + lo * (t[i + 1] - t[i])), float(t[i] + hi * (t[i + 1] - t[i]))


# ------------------------------------------------------------------------------- fleet


class FleetState(NamedTuple):
    """True state of devices at one time (arrays in device or ``idx`` order)."""

    lat: np.ndarray
    lon: np.ndarray
    alt_m: np.ndarray
    speed_mps: np.ndarray
    course_deg: np.ndarray


@dataclass(frozen=True, slots=True)
class Injection:
    """A planned deviation of a device's true track: ``overspeed`` inside ``fence`` or
    entering the ``restricted`` fence, from ``start`` to ``end`` (Unix s)."""

    device: str
    kind: InjectionKind
    fence: str
    start: float
    end: float


class _Plan:
    """One device's periodic schedule, built stop by stop."""

    def __init__(self, planner: _Planner, motion: Motion, home: int) -> None:
        self.planner, self.motion, self.node = planner, motion, home
        self.u = 0.0
        self.entries: list[tuple[float, int]] = []       # (start within the period, leg)
        self.windows: list[tuple[float, float, str, InjectionKind]] = []

    def go(self, to: int, dwell: float, *, via: int | None = None, fast: str | None = None,
           target: str | None = None) -> tuple[float, _Leg]:
        """Drive to ``to`` (through ``via`` over service edges), then stop ``dwell`` s."""
        roads = self.planner.roads
        access = _NORMAL | {"restricted"} if target else _NORMAL
        path = roads.route(self.node, to, access)
        if via is not None:
            path = roads.route(self.node, via, _NORMAL | {"service"}) + \
                roads.route(via, to, access)[1:]
        leg_id = self.planner.leg(path, self.motion, fast, target)
        leg, start = self.planner.legs[leg_id], self.u
        self.entries.append((start, leg_id))
        if fast is not None and leg.span is not None:
            self.windows.append((start + leg.span[0], start + leg.span[1], fast, "overspeed"))
        self.u += float(leg.t[-1]) + dwell
        self.node = to
        return start, leg

    def detour(self, rng: np.random.Generator, to: int, then: float) -> None:
        """Into a restricted fence, stop there, on to ``to`` and stop ``then`` s."""
        roads = self.planner.roads
        stops = roads.stops_of("restricted")
        if not stops:
            raise ValueError("the road network has no restricted stop")
        stop = stops[int(rng.integers(len(stops)))]
        fence = next((e[2] for e in roads.edges[stop.node].values()
                      if e[1] == "restricted" and e[2]), None)
        if fence is None:
            raise ValueError(f"the access to {stop.name!r} names no restricted fence")
        s0, leg0 = self.go(stop.node, rng.uniform(20, 120), target=fence)
        s1, leg1 = self.go(to, then, target=fence)
        assert leg0.span is not None and leg1.span is not None     # legs with a target
        self.windows.append((s0 + leg0.span[0], s1 + leg1.span[1], fence, "restricted"))


class Fleet:
    """True tracks of a fleet (made by :func:`build_fleet`), evaluated for many devices at
    once: each plan is a list of legs and stops, the legs' knots concatenated and found by
    ``searchsorted``."""

    def __init__(self, ids: list[str], kinds: list[str], plans: list[_Plan],
                 planner: _Planner, phase: np.ndarray, start: float) -> None:
        self.device_ids, self.kinds, self.start = ids, kinds, start
        self.fences = planner.fences
        self.period_s = np.array([p.u for p in plans])
        self._phase = phase
        self._alt = np.array([ALTITUDE_M[k] for k in kinds])
        self._windows = [p.windows for p in plans]
        legs = planner.legs
        self._dev_span = float(2.0 ** math.ceil(math.log2(self.period_s.max() + 1.0)))
        count = np.array([len(p.entries) for p in plans])
        u = np.array([e[0] for p in plans for e in p.entries])
        self._e_u = u
        self._e_key = np.repeat(np.arange(len(plans)), count) * self._dev_span + u
        self._e_leg = np.array([e[1] for p in plans for e in p.entries], dtype=np.int64)
        dur = np.array([leg.t[-1] for leg in legs])
        self._leg_span = float(2.0 ** math.ceil(math.log2(dur.max() + 1.0)))
        n = np.array([leg.t.size for leg in legs])
        self._leg_dur = dur
        self._leg_first = np.r_[0, np.cumsum(n)[:-1]]
        self._leg_last = self._leg_first + n - 1
        self._k_t = np.concatenate([leg.t for leg in legs])
        self._k_key = np.repeat(np.arange(len(legs)), n) * self._leg_span + self._k_t
        self._k_lon = np.concatenate([leg.lon for leg in legs])
        self._k_lat = np.concatenate([leg.lat for leg in legs])
        self._k_speed = np.concatenate([leg.speed for leg in legs])
        self._k_course = np.concatenate([leg.course for leg in legs])

    def __len__(self) -> int:
        return len(self.device_ids)

    @property
    def pipeline_kinds(self) -> list[str]:
        """The pipeline's device kind of each device (:data:`PIPELINE_KIND`)."""
        return [PIPELINE_KIND[k] for k in self.kinds]

    def state(self, t: float | np.ndarray, idx: np.ndarray | None = None) -> FleetState:
        """True position, speed and course of all devices (or ``idx``) at Unix time ``t``
        (one time, or one per device)."""
        dev = np.arange(len(self)) if idx is None else np.asarray(idx, dtype=np.int64)
        u = np.mod(t - self.start + self._phase[dev], self.period_s[dev])
        e = np.searchsorted(self._e_key, dev * self._dev_span + u, side="right") - 1
        leg = self._e_leg[e]
        dur = self._leg_dur[leg]
        tau = np.minimum(u - self._e_u[e], dur)
        k = np.searchsorted(self._k_key, leg * self._leg_span + tau, side="right") - 1
        k = np.clip(k, self._leg_first[leg], self._leg_last[leg] - 1)
        t0 = self._k_t[k]
        frac = np.clip((tau - t0) / (self._k_t[k + 1] - t0), 0.0, 1.0)
        lon = self._k_lon[k] + frac * (self._k_lon[k + 1] - self._k_lon[k])
        lat = self._k_lat[k] + frac * (self._k_lat[k + 1] - self._k_lat[k])
        speed = np.where(tau < dur, self._k_speed[k], 0.0)
        return FleetState(lat, lon, self._alt[dev], speed, self._k_course[k])

    def injections(self, t0: float, t1: float) -> list[Injection]:
        """Planned injections overlapping the Unix time range [t0, t1), by start time."""
        out = []
        for i, windows in enumerate(self._windows):
            period, base = self.period_s[i], self.start - self._phase[i]
            for u0, u1, fence, kind in windows:
                n = math.floor((t0 - base - u1) / period)
                while (s := base + u0 + n * period) < t1:
                    if s + (u1 - u0) >= t0:
                        out.append(Injection(self.device_ids[i], kind, fence, float(s),
                                             float(s + u1 - u0)))
                    n += 1
        return sorted(out, key=lambda j: (j.start, j.device))


def build_fleet(*, trucks: int, tractors: int, vessels: int, cranes: int, seed: int,
                fences: Sequence[PortFence], overspeed: int = 0, restricted: int = 0,
                start: float, roads: RoadNetwork | None = None, missions: int = 3) -> Fleet:
    """A fleet with ids ``truck-0001``, ``tractor-0001``, ``vessel-0001``, ``crane-0001``
    (in that order), each plan ``missions`` missions long, a function of ``seed`` only.

    ``overspeed`` and ``restricted`` devices (disjoint, drawn among trucks and tractors)
    get the injections; ``start`` is the Unix time of t = 0.
    """
    if min(trucks, tractors, vessels, cranes, overspeed, restricted) < 0 or missions < 1:
        raise ValueError("counts must be >= 0 and missions >= 1")
    if trucks + tractors + vessels + cranes == 0:
        raise ValueError("a fleet needs at least one device")
    if overspeed + restricted > trucks + tractors:
        raise ValueError("overspeed + restricted exceeds the trucks and tractors")
    rng = np.random.default_rng(seed)
    roads = roads or _default_roads()
    planner = _Planner(fences, roads)
    pick = rng.permutation(trucks + tractors)
    inject: dict[int, InjectionKind] = {int(i): "overspeed" for i in pick[:overspeed]}
    inject.update({int(i): "restricted" for i in pick[overspeed:overspeed + restricted]})
    kinds = ["truck"] * trucks + ["tractor"] * tractors + ["vessel"] * vessels \
        + ["crane"] * cranes
    ids: list[str] = []
    seen: dict[str, int] = {}
    plans = []
    for i, kind in enumerate(kinds):
        seen[kind] = seen.get(kind, 0) + 1
        ids.append(f"{kind}-{seen[kind]:04d}")
        plans.append(_MISSIONS[kind](planner, rng, missions, inject.get(i)))
    phase = rng.uniform(0.0, 1.0, len(plans)) * np.array([p.u for p in plans])
    return Fleet(ids, kinds, plans, planner, phase, start)


def _service_lane(roads: RoadNetwork) -> tuple[str, dict[int, int]]:
    """The fence of the apron lane and, per apron stop, its (eastern if any) lane neighbour."""
    nxt: dict[int, int] = {}
    fences: set[str | None] = set()
    for s in roads.stops_of("apron"):
        lane = [(roads.lon[m], m, e[2]) for m, e in roads.edges[s.node].items()
                if e[1] == "service"]
        if lane:
            _, nxt[s.node], fence = max(lane)
            fences.add(fence)
    fence = fences.pop() if len(fences) == 1 else None
    if fence is None:
        raise ValueError("the apron lane must name exactly one fence")
    return fence, nxt


def _choice(rng: np.random.Generator, stops: Sequence[Stop]) -> int:
    if not stops:
        raise ValueError("the road network lacks a stop this mission needs")
    return stops[int(rng.integers(len(stops)))].node


def _truck(planner: _Planner, rng: np.random.Generator, missions: int,
           inject: InjectionKind | None) -> _Plan:
    """Coastal highway -> gate -> [customs] -> [fuel] -> yard -> apron -> gate -> outside."""
    roads = planner.roads
    gates, yards, aprons = (roads.stops_of(k) for k in ("gate", "yard", "apron"))
    home = _choice(rng, roads.stops_of("outside"))
    plan = _Plan(planner, MOTION["truck"], home)
    for _ in range(missions):
        plan.go(_choice(rng, gates), rng.uniform(30, 300))
        if rng.random() < 0.3:
            plan.go(_choice(rng, roads.stops_of("customs")), rng.uniform(300, 1800))
        if rng.random() < 0.25:
            plan.go(_choice(rng, roads.stops_of("fuel")), rng.uniform(300, 1200))
        plan.go(_choice(rng, yards), rng.uniform(60, 600))
        apron = _choice(rng, aprons)
        plan.go(apron, rng.uniform(60, 600))
        _leave(plan, rng, apron, _choice(rng, gates), rng.uniform(30, 120), inject)
        plan.go(home, rng.uniform(300, 1800))
    return plan


def _leave(plan: _Plan, rng: np.random.Generator, apron: int, to: int, dwell: float,
           inject: InjectionKind | None) -> None:
    """From a stop at ``apron`` to ``to``, with the device's injection."""
    if inject == "overspeed":
        fence, lane = _service_lane(plan.planner.roads)
        plan.go(to, dwell, via=lane[apron], fast=fence)
    elif inject == "restricted":
        plan.detour(rng, to, dwell)
    else:
        plan.go(to, dwell)


def _tractor(planner: _Planner, rng: np.random.Generator, missions: int,
             inject: InjectionKind | None) -> _Plan:
    """Loops: its berth's apron -> a yard slot -> back, short stops."""
    roads = planner.roads
    apron = _choice(rng, roads.stops_of("apron"))
    plan = _Plan(planner, MOTION["tractor"], apron)
    for _ in range(missions):
        _leave(plan, rng, apron, _choice(rng, roads.stops_of("yard")), rng.uniform(30, 180),
               inject)
        plan.go(apron, rng.uniform(60, 300))
    return plan


def _vessel(planner: _Planner, rng: np.random.Generator, missions: int,
            inject: InjectionKind | None) -> _Plan:
    """Anchorage -> a berth (moored 35 min to 2 h) -> anchorage (waits 10 min to 1 h)."""
    del inject
    roads = planner.roads
    home = _choice(rng, roads.stops_of("anchorage"))
    plan = _Plan(planner, MOTION["vessel"], home)
    for _ in range(missions):
        plan.go(_choice(rng, roads.stops_of("mooring")), rng.uniform(2100, 7200))
        plan.go(home, rng.uniform(600, 3600))
    return plan


def _crane(planner: _Planner, rng: np.random.Generator, missions: int,
           inject: InjectionKind | None) -> _Plan:
    """Along its berth's rail between rail stops (4 moves per mission), back home at the end."""
    del inject
    roads = planner.roads
    berths = sorted({s.berth for s in roads.stops_of("crane")}, key=str)
    if not berths:
        raise ValueError("the road network has no crane rail")
    stops = roads.stops_of("crane", berths[rng.integers(len(berths))])
    if len(stops) < 2:
        raise ValueError("a crane rail needs two stops")
    speed = CRANE_SPEEDS[rng.integers(len(CRANE_SPEEDS))]
    home = _choice(rng, stops)
    plan = _Plan(planner, _crane_motion(speed), home)
    for _ in range(4 * missions):
        plan.go(_choice(rng, [s for s in stops if s.node != plan.node]), rng.uniform(60, 900))
    if plan.node != home:
        plan.go(home, rng.uniform(60, 900))
    return plan


_MISSIONS = {"truck": _truck, "tractor": _tractor, "vessel": _vessel, "crane": _crane}


# ------------------------------------------------------------------------------- truth


class TransitionTracker:
    """Geofence events of true positions, as ``processing.geofence_state`` defines them with
    debounce 1, fed epoch by epoch (fixes at or before a device's last time are ignored).

    * ``enter`` / ``exit`` at the first fix inside / outside; a device's first fix inside a
      fence is an ``enter`` (the pipeline starts every device outside every fence);
    * ``dwell`` once per stay, at the first fix at least ``dwell_s`` after the ``enter``;
    * ``overspeed`` once per episode, at the first fix inside with speed above the limit;
      a fix inside at or under the limit ends the episode (a NaN speed changes nothing).
    """

    def __init__(self, fences: Sequence[PortFence], devices: Sequence[str]) -> None:
        self.fences = tuple(fences)
        self.devices = list(devices)
        self._index = {d: i for i, d in enumerate(self.devices)}
        self._checker = FenceChecker(self.fences)
        n, m = len(self.devices), len(self.fences)
        self._dwell_s = np.array([np.nan if f.dwell_s is None else f.dwell_s
                                  for f in self.fences])
        self._limit = np.array([np.nan if f.speed_limit_kmh is None else f.speed_limit_kmh
                                for f in self.fences])
        self._inside = np.zeros((n, m), dtype=bool)
        self._since = np.zeros((n, m))
        self._dwelt = np.zeros((n, m), dtype=bool)
        self._over = np.zeros((n, m), dtype=bool)
        self._last = np.full(n, -np.inf)

    def step(self, t: float | np.ndarray, idx: np.ndarray | Sequence[str] | None,
             lat: np.ndarray, lon: np.ndarray, speed_mps: np.ndarray) -> list[Label]:
        """Labels of one fix per device at time(s) ``t``, sorted by device, then
        enter/dwell/overspeed/exit, then fence. ``idx``: indices into ``devices``, device
        ids, or None for all devices in order."""
        if idx is None:
            dev = np.arange(len(self.devices))
        elif len(idx) and isinstance(idx[0], str):
            dev = np.array([self._index[d] for d in idx], dtype=np.int64)
        else:
            dev = np.asarray(idx, dtype=np.int64)
        if np.unique(dev).size != dev.size:
            raise ValueError("one fix per device per step")
        times = np.broadcast_to(np.asarray(t, dtype=np.float64), dev.shape)
        lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
        ok = (times > self._last[dev]) & np.isfinite(lat) & np.isfinite(lon)
        dev, times, lat, lon = dev[ok], times[ok], lat[ok], lon[ok]
        kmh = np.asarray(speed_mps, np.float64)[ok] * 3.6
        self._last[dev] = times
        now = self._checker.inside(lat, lon)
        was = self._inside[dev]
        enter, leave = now & ~was, was & ~now
        since = np.where(enter, times[:, None], self._since[dev])
        stay = times[:, None] - since
        with np.errstate(invalid="ignore"):
            dwell = now & ~self._dwelt[dev] & (stay >= self._dwell_s)
            rated = now & np.isfinite(self._limit) & np.isfinite(kmh)[:, None]
            fast = rated & (kmh[:, None] > self._limit)
        over = fast & ~self._over[dev]
        self._inside[dev], self._since[dev] = now, since
        self._dwelt[dev] = now & (self._dwelt[dev] | dwell)
        self._over[dev] = now & np.where(rated, fast, self._over[dev])
        rows: list[tuple[int, int, int, str]] = []
        for kind, mask in (("enter", enter), ("dwell", dwell), ("overspeed", over),
                           ("exit", leave)):
            rows += [(r, _KIND_RANK[kind], j, kind) for r, j in np.argwhere(mask).tolist()]
        return [self._label(float(times[r]), int(dev[r]), kind, j, float(kmh[r]),
                            float(stay[r, j])) for r, _, j, kind in sorted(rows)]

    def _label(self, t: float, dev: int, kind: str, j: int, kmh: float,
               stay: float) -> Label:
        f = self.fences[j]
        details: dict[str, Any] = {"fence": f.name, "category": f.category}
        if kind == "dwell":
            details["dwell_s"] = f.dwell_s
        elif kind == "overspeed":
            details.update(speed_kmh=round(kmh, 1), limit_kmh=f.speed_limit_kmh)
        elif kind == "exit":
            details["inside_s"] = round(stay, 3)
        return Label(t, self.devices[dev], kind, details)
