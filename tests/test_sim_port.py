"""Port traffic simulator: fences against shapely, motion, missions, injections, truth.

Oracles: shapely (containment in lon/lat for polygons; circles and corridors buffered in
local metres; points within EDGE_M of a boundary may differ), a direct run-based reading
of the sampled tracks for the geofence events, and the pipeline's own event logic
(``processing.geofence_state`` with debounce 1).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import LineString, Point, shape

from beiflow.devices.simulators.labels import Label
from beiflow.devices.simulators.port import (
    PIPELINE_KIND,
    PORT_FENCES,
    FenceChecker,
    Fleet,
    FleetState,
    PortFence,
    TransitionTracker,
    build_fleet,
    load_port_fences,
    load_road_network,
    sky_at,
)

FENCES = load_port_fences()
NAMES = [f.name for f in FENCES]
M_PER_DEG = 6371008.8 * math.pi / 180.0
LON0, LON1, LAT0, LAT1 = 121.366, 121.425, 37.536, 37.595     # port, roads and sea
START = 1_750_000_000.0
#: Points this close (m) to a fence boundary are not compared.
EDGE_M = 0.5
LIMIT = np.array([np.inf if f.speed_limit_kmh is None else f.speed_limit_kmh for f in FENCES])


# ------------------------------------------------------------------------- the oracle


@dataclass
class _Shape:
    """A fence in shapely: containment and boundary distance (m) of lon/lat points."""

    geom: shapely.Geometry
    lon0: float
    lat0: float
    lonlat: bool       # geom in lon/lat (polygons) or local metres (circles, corridors)

    def xy(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kx = math.cos(math.radians(self.lat0)) * M_PER_DEG
        return (lon - self.lon0) * kx, (lat - self.lat0) * M_PER_DEG

    def contains(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        if self.lonlat:
            return shapely.contains_xy(self.geom, lon, lat)
        return shapely.contains_xy(self.geom, *self.xy(lon, lat))

    def edge_m(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        metric = shapely.transform(self.geom, lambda c: np.c_[self.xy(c[:, 0], c[:, 1])]) \
            if self.lonlat else self.geom
        return shapely.distance(metric.boundary, shapely.points(*self.xy(lon, lat)))


def _shape(f: PortFence) -> _Shape:
    g = f.geometry
    if g["type"] == "Point":
        lon0, lat0 = g["coordinates"]
        return _Shape(Point(0, 0).buffer(f.radius_m, quad_segs=256), lon0, lat0, False)
    if g["type"] == "LineString":
        c = np.array(g["coordinates"])
        lon0, lat0 = c.mean(axis=0)
        s = _Shape(LineString(), lon0, lat0, False)
        s.geom = LineString(np.c_[s.xy(c[:, 0], c[:, 1])]).buffer(f.width_m / 2, quad_segs=64)
        return s
    geom = shape(g)
    return _Shape(geom, geom.centroid.x, geom.centroid.y, True)


SHAPES = [_shape(f) for f in FENCES]


def _inside(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Shapely containment of any-shaped arrays: shape + (n_fences,)."""
    return np.stack([s.contains(lon.ravel(), lat.ravel()) for s in SHAPES],
                    axis=-1).reshape(*lat.shape, len(FENCES))


def assert_agrees(got: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """``got`` (points, fences) equals shapely's containment but within ``EDGE_M`` of a
    boundary; returns shapely's."""
    want = _inside(lat, lon)
    assert got.shape == want.shape
    for j in np.flatnonzero((got != want).any(axis=0)):
        bad = np.flatnonzero(got[:, j] != want[:, j])
        dist = SHAPES[j].edge_m(lon[bad], lat[bad])
        assert (dist < EDGE_M).all(), (FENCES[j].name, lat[bad][dist >= EDGE_M][:3],
                                       lon[bad][dist >= EDGE_M][:3])
    return want


# ---------------------------------------------------------------------------- fences


def test_fence_file_has_every_geometry_kind() -> None:
    types = {f.geometry["type"] for f in FENCES}
    assert types == {"Polygon", "MultiPolygon", "Point", "LineString"}
    assert any(len(f.geometry["coordinates"]) > 1 for f in FENCES
               if f.geometry["type"] == "Polygon")                        # a hole


def test_fence_checker_agrees_with_shapely_on_dense_points() -> None:
    rng = np.random.default_rng(3)
    lon = [rng.uniform(LON0, LON1, 100_000)]
    lat = [rng.uniform(LAT0, 37.575, 100_000)]
    for f in FENCES:                       # concentrate points around every fence
        c = np.array(shapely.bounds(shape(f.geometry)))
        pad = (f.radius_m or f.width_m or 0.0) / M_PER_DEG + 0.0006
        lon.append(rng.uniform(c[0] - pad, c[2] + pad, 10_000))
        lat.append(rng.uniform(c[1] - pad, c[3] + pad, 10_000))
    lon_a, lat_a = np.concatenate(lon), np.concatenate(lat)
    want = assert_agrees(FenceChecker(FENCES).inside(lat_a, lon_a), lat_a, lon_a)
    assert (want.sum(axis=0) > 500).all()           # every fence is well exercised


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(LAT0, LAT1), st.floats(LON0, LON1)), min_size=1,
                max_size=40))
def test_fence_checker_agrees_with_shapely(points: list[tuple[float, float]]) -> None:
    lat, lon = np.array(points).T
    assert_agrees(FenceChecker(FENCES).inside(lat, lon), lat, lon)


def test_fence_checker_nan_and_empty() -> None:
    checker = FenceChecker(FENCES)
    assert not checker.inside(np.array([np.nan, 37.56]), np.array([121.39, np.nan])).any()
    assert checker.inside(np.empty(0), np.empty(0)).shape == (0, len(FENCES))


def test_fences_round_trip_the_geojson() -> None:
    raw = json.loads(PORT_FENCES.read_text())["features"]
    assert [f["properties"]["name"] for f in raw] == NAMES
    apron = FENCES[NAMES.index("Quay apron")]
    assert (apron.kind, apron.category, apron.speed_limit_kmh) == ("apron", "speed_limit", 15)
    assert FENCES[NAMES.index("Bunker fuel depot")].radius_m == 120


# ---------------------------------------------------------------------------- roads


def test_every_stop_is_reachable_and_sky_zones() -> None:
    roads = load_road_network()
    kinds = {s.kind for s in roads.stops}
    assert {"outside", "gate", "customs", "fuel", "yard", "apron", "restricted",
            "anchorage", "mooring", "crane"} <= kinds
    outside = roads.stops_of("outside")[0].node
    for s in roads.stops:
        if s.kind in ("gate", "customs", "fuel", "yard", "apron"):
            path = roads.route(outside, s.node)
            assert path[0] == outside and path[-1] == s.node
    with pytest.raises(ValueError, match="no route"):
        roads.route(outside, roads.stops_of("restricted")[0].node)
    sky = sky_at(np.array([37.5398, 37.5643, 37.5580, 37.5643]),
                 np.array([121.3845, 121.3906, 121.3965, 121.3700]))
    assert sky.tolist() == [0.0, 0.5, 1.0, 1.0]


# ---------------------------------------------------------------------------- fleet


@dataclass
class Tracks:
    """The fleet sampled at 1 Hz over the longest period: arrays (time, device)."""

    fleet: Fleet
    t: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    speed: np.ndarray
    course: np.ndarray
    inside: np.ndarray      # shapely containment (time, device, fence)

    def devices(self, kind: str) -> np.ndarray:
        return np.array([i for i, k in enumerate(self.fleet.kinds) if k == kind])


def _fleet(seed: int = 7) -> Fleet:
    return build_fleet(trucks=16, tractors=8, vessels=4, cranes=6, seed=seed, fences=FENCES,
                       overspeed=3, restricted=3, start=START, missions=2)


@pytest.fixture(scope="module")
def tracks() -> Tracks:
    fleet = _fleet()
    t = START + np.arange(0.0, float(fleet.period_s.max()) + 1.0)
    states = [fleet.state(x) for x in t]
    lat, lon, speed, course = (np.array([getattr(s, k) for s in states])
                               for k in ("lat", "lon", "speed_mps", "course_deg"))
    return Tracks(fleet, t, lat, lon, speed, course, _inside(lat, lon))


def _windows(fleet: Fleet, kind: str, t0: float, t1: float) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for j in fleet.injections(t0, t1):
        if j.kind == kind:
            out.setdefault(j.device, []).append((j.start, j.end, j.fence))
    return out


def test_ids_kinds_and_pipeline_kinds() -> None:
    fleet = build_fleet(trucks=2, tractors=1, vessels=1, cranes=2, seed=1, fences=FENCES,
                        start=START)
    assert fleet.device_ids == ["truck-0001", "truck-0002", "tractor-0001", "vessel-0001",
                                "crane-0001", "crane-0002"]
    assert fleet.pipeline_kinds == ["road", "road", "road", "vessel", "crane", "crane"]
    assert set(PIPELINE_KIND.values()) <= {"road", "vessel", "rail", "crane"}
    assert fleet.injections(START, START + 1e6) == []
    with pytest.raises(ValueError, match="exceeds"):
        build_fleet(trucks=1, tractors=0, vessels=0, cranes=0, seed=1, fences=FENCES,
                    overspeed=1, restricted=1, start=START)


def test_deterministic_for_a_seed() -> None:
    def small(seed: int) -> Fleet:
        return build_fleet(trucks=4, tractors=2, vessels=2, cranes=2, seed=seed, fences=FENCES,
                           overspeed=1, restricted=1, start=START)

    a, b, c = small(7), small(7), small(8)
    for t in (START, START + 1234.5, START + 86_400 * 30):
        sa, sb, sc = a.state(t), b.state(t), c.state(t)
        for k in FleetState._fields:
            assert np.array_equal(getattr(sa, k), getattr(sb, k))
        assert not np.array_equal(sa.lat, sc.lat)
    assert a.injections(START, START + 1e5) == b.injections(START, START + 1e5)
    idx = np.array([5, 0, 9])
    sub, full = a.state(START + 99.0, idx), a.state(START + 99.0)
    for k in FleetState._fields:
        assert np.array_equal(getattr(sub, k), getattr(full, k)[idx])


def test_plans_repeat_with_their_period(tracks: Tracks) -> None:
    fleet = tracks.fleet
    for t in (START + 17.0, START + 5000.5):
        later = fleet.state(t + 3 * fleet.period_s[4])
        now = fleet.state(t)
        assert np.allclose(now.lat[4], later.lat[4], atol=1e-9)
        assert np.allclose(now.lon[4], later.lon[4], atol=1e-9)


def test_normal_speeds_stay_under_the_limits(tracks: Tracks) -> None:
    fleet, speed = tracks.fleet, tracks.speed
    cap = 0.8 * np.where(tracks.inside, LIMIT, np.inf).min(axis=2) / 3.6
    allowed = np.ones(speed.shape, dtype=bool)
    for dev, windows in _windows(fleet, "overspeed", tracks.t[0], tracks.t[-1]).items():
        i = fleet.device_ids.index(dev)
        for t0, t1, _ in windows:
            allowed[(tracks.t >= t0) & (tracks.t <= t1), i] = False
    assert (speed[allowed] <= cap[allowed] + 1e-9).all()
    assert (tracks.speed[:, tracks.devices("crane")] <= 0.8 + 1e-9).all()
    assert tracks.speed[:, tracks.devices("crane")].max() >= 0.3
    assert tracks.speed[:, tracks.devices("truck")].max() > 13        # the highway


def test_overspeed_devices_exceed_inside_the_fence(tracks: Tracks) -> None:
    fleet = tracks.fleet
    windows = _windows(fleet, "overspeed", tracks.t[0], tracks.t[-1])
    assert len(windows) == 3
    for dev, wins in windows.items():
        i = fleet.device_ids.index(dev)
        for t0, t1, fence in wins:
            j = NAMES.index(fence)
            sel = (tracks.t >= t0) & (tracks.t <= t1)
            assert tracks.inside[sel, i, j].all()
            assert tracks.speed[sel, i].max() >= 1.4 * LIMIT[j] / 3.6


def test_restricted_fences_only_for_injected_devices(tracks: Tracks) -> None:
    fleet = tracks.fleet
    restricted = [j for j, f in enumerate(FENCES) if f.category == "restricted"]
    inside = tracks.inside[:, :, restricted].any(axis=2)
    windows = _windows(fleet, "restricted", tracks.t[0], tracks.t[-1])
    assert len(windows) == 3
    expected = np.zeros(inside.shape, dtype=bool)
    for dev, wins in windows.items():
        i = fleet.device_ids.index(dev)
        for t0, t1, fence in wins:
            assert FENCES[NAMES.index(fence)].category == "restricted"
            expected[(tracks.t >= t0) & (tracks.t <= t1), i] = True
    # inside exactly within the windows
    assert not (inside & ~expected).any()
    assert np.array_equal(inside, expected) and expected.any()


def test_vessels_moor_at_berths_longer_than_dwell(tracks: Tracks) -> None:
    berths = [j for j, f in enumerate(FENCES) if f.kind == "berth"]
    for i in tracks.devices("vessel"):
        at_berth = tracks.inside[:, i, berths].any(axis=1).astype(np.int8)
        edges = np.flatnonzero(np.diff(np.r_[0, at_berth, 0]))
        longest = np.diff(edges.reshape(-1, 2), axis=1).max()
        assert longest >= FENCES[berths[0]].dwell_s + 60
        assert tracks.lat[:, i].max() > 37.58                       # came from the sea
        assert (tracks.speed[at_berth == 1, i] <= 1.0).all()        # slow at the berth


def test_trucks_pass_through_gates(tracks: Tracks) -> None:
    gates = [j for j, f in enumerate(FENCES) if f.kind == "gate"]
    port = NAMES.index("Yantai Port operating area")
    for i in tracks.devices("truck"):
        assert tracks.inside[:, i, gates].any()
        assert not tracks.inside[:, i, port].all()
        # from outside to inside the port area always through a gate
        enters = np.flatnonzero(tracks.inside[1:, i, port] & ~tracks.inside[:-1, i, port])
        for k in enters:
            assert tracks.inside[k:k + 600, i, gates].any()
    sky = sky_at(tracks.lat[:, tracks.devices("truck")], tracks.lon[:, tracks.devices("truck")])
    assert (sky == 0.0).any() and (sky == 0.5).any()


def test_motion_is_continuous_and_consistent(tracks: Tracks) -> None:
    kx = np.cos(np.radians(tracks.lat[:-1])) * M_PER_DEG
    dist = np.hypot((tracks.lon[1:] - tracks.lon[:-1]) * kx,
                    (tracks.lat[1:] - tracks.lat[:-1]) * M_PER_DEG)
    fastest = np.maximum(tracks.speed[1:], tracks.speed[:-1])
    assert (dist <= fastest * 1.0 + 0.5 * 1.5 + 1e-6).all()        # at most 1.5 m/s^2
    assert (tracks.speed <= 13.9 + 1e-9).all()
    # speed and course are those of the track itself
    rng = np.random.default_rng(0)
    fleet, dt = tracks.fleet, 0.01
    for t in rng.uniform(START, START + 20_000, 40):
        a, b = fleet.state(t), fleet.state(t + dt)
        kx = np.cos(np.radians(a.lat)) * M_PER_DEG
        east, north = (b.lon - a.lon) * kx, (b.lat - a.lat) * M_PER_DEG
        moving = (a.speed_mps > 0.5) & (b.speed_mps == a.speed_mps)
        assert np.allclose(np.hypot(east, north)[moving] / dt, a.speed_mps[moving], rtol=1e-4)
        bearing = np.degrees(np.arctan2(east, north)) % 360
        diff = (bearing - a.course_deg + 180) % 360 - 180
        assert (np.abs(diff[moving]) < 0.1).all()


# ---------------------------------------------------------------------------- truth


def _reference_events(t: np.ndarray, inside: np.ndarray, speed: np.ndarray,
                      ) -> set[tuple[float, int, str, int]]:
    """Events read directly off sampled membership: (time, device, kind, fence)."""
    out = set()
    prev = np.r_[np.zeros((1, *inside.shape[1:]), bool), inside[:-1]]
    for kind, mask in (("enter", inside & ~prev), ("exit", prev & ~inside)):
        out |= {(t[a], d, kind, j) for a, d, j in zip(*np.nonzero(mask), strict=True)}
    over = inside & (speed[:, :, None] * 3.6 > LIMIT)
    first = over & ~np.r_[np.zeros((1, *over.shape[1:]), bool), over[:-1]]
    out |= {(t[a], d, "overspeed", j) for a, d, j in zip(*np.nonzero(first), strict=True)}
    for j, f in enumerate(FENCES):
        if f.dwell_s is None:
            continue
        for d in range(inside.shape[1]):
            edges = np.flatnonzero(np.diff(np.r_[0, inside[:, d, j].astype(np.int8), 0]))
            for a, b in edges.reshape(-1, 2):
                late = np.flatnonzero(t[a:b] - t[a] >= f.dwell_s)
                if late.size:
                    out.add((t[a + late[0]], d, "dwell", j))
    return out


#: Epochs (1 Hz) fed to the tracker.
TRUTH_S = 7200


@pytest.fixture(scope="module")
def labels(tracks: Tracks) -> list[Label]:
    tracker = TransitionTracker(FENCES, tracks.fleet.device_ids)
    out = []
    for k in range(TRUTH_S):
        out += tracker.step(tracks.t[k], None, tracks.lat[k], tracks.lon[k], tracks.speed[k])
    return out


def test_tracker_matches_a_direct_check_of_the_tracks(tracks: Tracks,
                                                      labels: list[Label]) -> None:
    ids = tracks.fleet.device_ids
    got = {(lb.time, ids.index(lb.device), lb.kind, NAMES.index(lb.details["fence"]))
           for lb in labels}
    assert len(got) == len(labels)
    n = TRUTH_S
    assert got == _reference_events(tracks.t[:n], tracks.inside[:n], tracks.speed[:n])
    assert {lb.kind for lb in labels} == {"enter", "exit", "dwell", "overspeed"}
    assert all(lb.details["category"] == FENCES[NAMES.index(lb.details["fence"])].category
               for lb in labels)
    times = [(lb.time, lb.device) for lb in labels]
    assert times == sorted(times, key=lambda x: x[0])


def test_tracker_agrees_with_the_pipeline_at_debounce_1(tracks: Tracks,
                                                        labels: list[Label]) -> None:
    from beiflow.processing.geofence_defs import parse_geojson
    from beiflow.processing.geofence_index import FenceSet
    from beiflow.processing.geofence_state import GeofenceState, geofence_events
    n, n_dev = TRUTH_S, len(tracks.fleet)
    defs = parse_geojson(json.loads(PORT_FENCES.read_text()))
    time_us = np.repeat(np.round(tracks.t[:n] * 1e6).astype(np.int64), n_dev)
    batch = geofence_events(FenceSet.build(defs), GeofenceState(),
                            np.tile(np.arange(n_dev), n), time_us, tracks.lon[:n].ravel(),
                            tracks.lat[:n].ravel(), tracks.speed[:n].ravel(),
                            np.zeros(n * n_dev, np.int64), debounce=1)
    pipeline = {(int(t), int(d), str(k), defs[f].name) for t, d, f, k in
                zip(batch.time, batch.device, batch.fence, batch.event, strict=True)}
    ids = tracks.fleet.device_ids
    ours = {(round(lb.time * 1e6), ids.index(lb.device), lb.kind, lb.details["fence"])
            for lb in labels}
    assert ours == pipeline


def test_tracker_skips_stale_and_missing_fixes() -> None:
    tracker = TransitionTracker(FENCES, ["a", "b"])
    yard = (37.5578, 121.3965)                 # in container yard A and the port area
    first = tracker.step(10.0, np.array([0]), np.array([yard[0]]), np.array([yard[1]]),
                         np.array([1.0]))
    assert sorted(lb.details["fence"] for lb in first) == ["Container yard A",
                                                            "Yantai Port operating area"]
    assert all(lb.kind == "enter" and lb.time == 10.0 for lb in first)
    # an older fix, or one without a position, changes nothing
    assert tracker.step(9.0, np.array([0]), np.array([37.50]), np.array([121.30]),
                        np.array([1.0])) == []
    assert tracker.step(11.0, np.array([0]), np.array([np.nan]), np.array([np.nan]),
                        np.array([1.0])) == []
    # speed over the yard's limit: one event per episode, re-armed at or under the limit
    kinds = []
    for k, v in enumerate([7.0, 7.5, 5.0, 6.0, np.nan, 7.0]):
        kinds += [(lb.kind, lb.details.get("speed_kmh")) for lb in
                  tracker.step(12.0 + k, np.array([0]), np.array([yard[0]]),
                               np.array([yard[1]]), np.array([v]))]
    assert kinds == [("overspeed", 25.2), ("overspeed", 21.6)]
    out = tracker.step(3700.0, np.array([0, 1]), np.array([yard[0], 37.50]),
                       np.array([yard[1], 121.30]), np.array([0.0, 0.0]))
    assert [(lb.device, lb.kind) for lb in out] == [("a", "dwell")]
    assert out[0].details == {"fence": "Container yard A", "category": "yard",
                              "dwell_s": 3600.0}
    out = tracker.step(3701.0, ["b", "a"], np.array([37.50, 37.50]),
                       np.array([121.30, 121.30]), np.array([0.0, 0.0]))
    assert [(lb.kind, lb.details["inside_s"]) for lb in out] == [("exit", 3691.0)] * 2
