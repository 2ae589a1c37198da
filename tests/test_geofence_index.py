"""FenceSet.contains against oracles: shapely 2 for polygons, exact spherical references
for circles and corridors; plus the documented boundary rule."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beiflow.processing.geofence import EARTH_RADIUS_M, FenceDef, FenceSet, parse_geojson

R = EARTH_RADIUS_M
#: Points closer than this (degrees) to a polygon boundary may go either way.
POLY_BAND = 1e-9


def _fc(features: list[dict]) -> list[FenceDef]:
    return parse_geojson({"type": "FeatureCollection", "features": features})


def _polygon(fid: str, *rings: np.ndarray) -> dict:
    return {"type": "Feature", "id": fid, "properties": {},
            "geometry": {"type": "Polygon", "coordinates": [r.tolist() for r in rings]}}


def _matrix(fs: FenceSet, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    pt, fence = fs.contains(lon, lat)
    key = pt.astype(np.int64) * len(fs) + fence
    assert np.all(np.diff(key) > 0), "pairs sorted by (point, fence), no duplicates"
    out = np.zeros((lon.size, len(fs)), dtype=bool)
    out[pt, fence] = True
    return out


# ------------------------------------------------------------------ spherical references


def _unit(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lo, la = np.radians(lon), np.radians(lat)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def _great_circle_m(lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray,
                    lat2: np.ndarray) -> np.ndarray:
    """Angle between unit vectors via atan2(|a x b|, a . b): exact, independent of haversine."""
    a, b = _unit(lon1, lat1), _unit(lon2, lat2)
    return R * np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1))


def _segment_distance_m(lon: np.ndarray, lat: np.ndarray, a: tuple[float, float],
                        b: tuple[float, float]) -> np.ndarray:
    """Great-circle distance to the segment a-b, straight in lon/lat (RFC 7946), by golden
    section search over the segment parameter."""
    lo, hi = np.zeros(lon.size), np.ones(lon.size)
    g = (math.sqrt(5) - 1) / 2

    def f(t: np.ndarray) -> np.ndarray:
        return _great_circle_m(lon, lat, a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))

    for _ in range(90):
        m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
        left = f(m1) < f(m2)
        hi = np.where(left, m2, hi)
        lo = np.where(left, lo, m1)
    return np.minimum(f((lo + hi) / 2), np.minimum(f(np.zeros(1)), f(np.ones(1))))


def _destination(lon: float, lat: float, bearing: np.ndarray, dist_m: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray]:
    d, la, b = dist_m / R, math.radians(lat), bearing
    la2 = np.arcsin(np.sin(la) * np.cos(d) + np.cos(la) * np.sin(d) * np.cos(b))
    lo2 = math.radians(lon) + np.arctan2(np.sin(b) * np.sin(d) * np.cos(la),
                                          np.cos(d) - np.sin(la) * np.sin(la2))
    return np.degrees(lo2), np.degrees(la2)


# ------------------------------------------------------------------ random fence sets


def _star(rng: np.random.Generator, cx: float, cy: float, size: float, n: int,
          ) -> tuple[np.ndarray, float]:
    """A star-shaped (often concave) ring around (cx, cy) and the distance from the centre
    to its nearest edge."""
    ang = (np.arange(n) + rng.uniform(0.0, 0.9, n)) * 2 * math.pi / n
    r = size * rng.uniform(0.3, 1.0, n)
    ring = np.c_[r * np.cos(ang), r * np.sin(ang)]
    closed = np.r_[ring, ring[:1]]
    a, b = closed[:-1], closed[1:]
    t = np.clip(np.sum(-a * (b - a), axis=1) / np.sum((b - a) ** 2, axis=1), 0, 1)
    inner = float(np.min(np.linalg.norm(a + t[:, None] * (b - a), axis=1)))
    return closed + np.array([cx, cy]), inner


def _with_holes(rng: np.random.Generator, cx: float, cy: float, size: float, n: int,
                holes: int) -> list[np.ndarray]:
    shell, inner = _star(rng, cx, cy, size, n)
    rings = [shell]
    for k in range(holes):      # holes: small stars left and right of the centre
        hx = cx + (0.45 if k == 0 else -0.45) * inner
        rings.append(_star(rng, hx, cy, 0.4 * inner, int(rng.integers(3, 12)))[0])
    return rings


@st.composite
def fence_sets(draw: st.DrawFn) -> tuple[list[dict], np.random.Generator, dict]:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    cx = draw(st.floats(-170, 170))
    cy = draw(st.floats(-70, 70))
    scale = 10 ** draw(st.floats(-4.5, -0.5))           # ~3 m .. 35 km
    spread = draw(st.sampled_from([0.0, 1.0, 30.0, 3000.0]))  # mixed sizes: several levels
    feats: list[dict] = []
    meta: dict = {"circles": {}, "corridors": {}}
    for i in range(draw(st.integers(1, 4))):
        size = min(scale * 10 ** rng.uniform(0, math.log10(1 + spread)), 5.0)
        x, y = cx + rng.normal(0, scale), cy + rng.normal(0, scale)
        rings = _with_holes(rng, x, y, size, draw(st.integers(5, 60)),
                            draw(st.integers(0, 2)))
        feats.append(_polygon(f"p{i}", *rings))
    if draw(st.booleans()):                              # a multipolygon of 2-3 parts
        parts = [[r.tolist() for r in _with_holes(rng, cx + 2.5 * k * scale, cy - scale,
                                                   scale, int(rng.integers(5, 30)),
                                                   int(rng.integers(0, 2)))]
                 for k in range(int(rng.integers(2, 4)))]
        feats.append({"type": "Feature", "id": "mp", "properties": {},
                      "geometry": {"type": "MultiPolygon", "coordinates": parts}})
    for i in range(draw(st.integers(0, 2))):
        radius = float(scale * R * math.pi / 180 * rng.uniform(0.2, 2.0))
        centre = (cx + rng.normal(0, scale), cy + rng.normal(0, scale))
        meta["circles"][f"c{i}"] = (centre, radius)
        feats.append({"type": "Feature", "id": f"c{i}", "properties": {"radius_m": radius},
                      "geometry": {"type": "Point", "coordinates": list(centre)}})
    # corridors within the documented accuracy: segments of up to ~0.1 degree (a road's
    # vertices are far closer); longer ones at high latitude exceed the stated bound
    step = min(scale, 0.02)
    for i in range(draw(st.integers(0, 2))):
        n = int(rng.integers(2, 8))
        line = np.c_[cx + np.cumsum(rng.normal(0, step, n)),
                     cy + np.cumsum(rng.normal(0, step, n))]
        width = float(step * R * math.pi / 180 * rng.uniform(0.05, 1.0))
        meta["corridors"][f"r{i}"] = (line, width)
        feats.append({"type": "Feature", "id": f"r{i}", "properties": {"width_m": width},
                      "geometry": {"type": "LineString", "coordinates": line.tolist()}})
    return feats, rng, meta


def _points(rng: np.random.Generator, fences: list[FenceDef], meta: dict,
            ) -> tuple[np.ndarray, np.ndarray]:
    """Uniform points over the fences' extent, points near (and on) every boundary."""
    lon, lat = [], []
    xy = np.concatenate([np.array(r) for f in fences for p in f.polygons for r in p]
                        + [np.array(f.line) for f in fences if f.line]
                        + [np.array([f.center]) for f in fences if f.center])
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    pad = (hi - lo) * 0.2 + 1e-4
    u = rng.uniform(lo - pad, hi + pad, (400, 2))
    lon.append(u[:, 0])
    lat.append(u[:, 1])
    for f in fences:
        for poly in f.polygons:
            for ring in poly:
                r = np.array(ring)
                lon.append(r[:, 0])                     # vertices, exactly
                lat.append(r[:, 1])
                k = rng.integers(0, len(r) - 1, 60)
                t = rng.uniform(0, 1, 60)
                a, b = r[k], r[k + 1]
                p = a + t[:, None] * (b - a)
                normal = np.c_[-(b - a)[:, 1], (b - a)[:, 0]]
                normal /= np.linalg.norm(normal, axis=1, keepdims=True)
                off = np.sign(rng.uniform(-1, 1, 60)) * 10 ** rng.uniform(-11, -3, 60) \
                    * np.linalg.norm(hi - lo)
                lon.append(p[:, 0] + off * normal[:, 0])
                lat.append(p[:, 1] + off * normal[:, 1])
    for (clon, clat), radius in meta["circles"].values():
        d = radius * (1 + np.sign(rng.uniform(-1, 1, 80)) * 10 ** rng.uniform(-9, -1, 80))
        x, y = _destination(clon, clat, rng.uniform(0, 2 * math.pi, 80), d)
        lon.append(x)
        lat.append(y)
    for line, width in meta["corridors"].values():
        k = rng.integers(0, len(line) - 1, 80)
        p = line[k] + rng.uniform(0, 1, 80)[:, None] * (line[k + 1] - line[k])
        ang = rng.uniform(0, 2 * math.pi, 80)
        d = width / 2 * (1 + np.sign(rng.uniform(-1, 1, 80)) * 10 ** rng.uniform(-4, -0.5, 80))
        x, y = _destination(0.0, 0.0, ang, d)            # offset direction and size only
        lon.append(p[:, 0] + x / np.cos(np.radians(p[:, 1])))
        lat.append(p[:, 1] + y)
    lon.append(np.array([np.nan, 0.0, np.nan]))
    lat.append(np.array([0.0, np.nan, np.nan]))
    return np.concatenate(lon), np.clip(np.concatenate(lat), -89.9, 89.9)


def _oracle(fence: FenceDef, meta: dict, lon: np.ndarray, lat: np.ndarray,
            ) -> tuple[np.ndarray, np.ndarray]:
    """(inside, undecided): undecided points lie in the documented tolerance band."""
    ok = np.isfinite(lon) & np.isfinite(lat)
    x, y = np.where(ok, lon, 0.0), np.where(ok, lat, 0.0)
    if fence.kind == "polygon":
        geom = shapely.MultiPolygon([shapely.Polygon(p[0], p[1:]) for p in fence.polygons])
        inside = shapely.contains_xy(geom, x, y)
        band = shapely.distance(geom.boundary, shapely.points(x, y)) <= POLY_BAND
    elif fence.kind == "circle":
        (clon, clat), radius = meta["circles"][fence.geofence_id]
        d = _great_circle_m(x, y, np.full(x.size, clon), np.full(x.size, clat))
        inside = d <= radius
        band = np.abs(d - radius) <= 1e-7 * radius + 1e-6
    else:
        line, width = meta["corridors"][fence.geofence_id]
        d = np.min([_segment_distance_m(x, y, tuple(a), tuple(b))
                    for a, b in itertools.pairwise(line)], axis=0)
        dlat = np.radians(np.abs(np.diff(line[:, 1])).max())
        rel = math.tan(math.radians(min(89.0, np.abs(line[:, 1]).max()))) * dlat / 2
        inside = d <= width / 2
        band = np.abs(d - width / 2) <= (1.5 * rel + 1e-6) * width / 2 + 1e-6
    return inside & ok, band & ok


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fence_sets())
def test_contains_matches_the_oracles(case: tuple[list[dict], np.random.Generator, dict],
                                      ) -> None:
    feats, rng, meta = case
    fences = _fc(feats)
    lon, lat = _points(rng, fences, meta)
    got = _matrix(FenceSet.build(fences), lon, lat)
    for j, fence in enumerate(fences):
        inside, band = _oracle(fence, meta, lon, lat)
        wrong = np.flatnonzero((got[:, j] != inside) & ~band)
        assert not wrong.size, (fence.geofence_id, fence.kind, lon[wrong[:5]], lat[wrong[:5]])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 16), st.integers(0, 2**32 - 1))
def test_cell_size_does_not_change_the_answer(cells: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    feats = [_polygon(f"p{i}", *_with_holes(rng, rng.uniform(0, 1), rng.uniform(0, 1),
                                            rng.uniform(0.05, 0.5), 40, 2))
             for i in range(5)]
    fences = _fc(feats)
    lon, lat = rng.uniform(-0.5, 1.5, 3000), rng.uniform(-0.5, 1.5, 3000)
    ref = _matrix(FenceSet.build(fences), lon, lat)
    assert np.array_equal(_matrix(FenceSet.build(fences, cells_per_fence=cells), lon, lat),
                          ref)


def test_boundary_rule_half_open() -> None:
    """Left and bottom edges belong to the polygon, right and top edges do not."""
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], dtype=float)
    fs = FenceSet.build(_fc([_polygon("sq", square)]))
    lon = np.array([0.0, 1.0, 0.5, 0.5, 0.0, 1.0, 1.0, 0.0, 0.5])
    lat = np.array([0.5, 0.5, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.5])
    assert _matrix(fs, lon, lat)[:, 0].tolist() == [
        True, False, True, False, True, False, False, False, True]


def test_shared_edge_belongs_to_exactly_one_fence() -> None:
    a = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], dtype=float)
    b = a + np.array([1.0, 0.0])
    c = a + np.array([0.0, 1.0])
    fs = FenceSet.build(_fc([_polygon("a", a), _polygon("b", b), _polygon("c", c)]))
    t = np.linspace(0, 1, 101)[:-1]
    lon = np.r_[np.ones(100), t]               # a|b shared edge, then a/c shared edge
    lat = np.r_[t, np.ones(100)]
    assert np.all(_matrix(fs, lon, lat).sum(axis=1) == 1)


def test_shared_diagonal_edge_belongs_to_exactly_one_fence() -> None:
    """Two fences computing the same crossing for a shared edge partition its points,
    including points that lie on it to the last bit."""
    a = np.array([[0, 0], [1, 0], [0.3, 1], [0, 0]])
    b = np.array([[1, 0], [1.3, 1], [0.3, 1], [1, 0]])          # the edge reversed
    fs = FenceSet.build(_fc([_polygon("a", a), _polygon("b", b)]), cells_per_fence=5)
    t = np.linspace(0, 1, 1003)[1:-1]
    lon, lat = 1 - 0.7 * t, t
    near = np.r_[lon, np.nextafter(lon, 2), np.nextafter(lon, -1)]
    assert np.all(_matrix(fs, near, np.r_[lat, lat, lat]).sum(axis=1) == 1)


def test_nan_and_far_points_are_in_nothing() -> None:
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], dtype=float)
    fs = FenceSet.build(_fc([_polygon("sq", square)]))
    lon = np.array([np.nan, 0.5, np.inf, 50.0, -0.5])
    lat = np.array([0.5, np.nan, 0.5, 50.0, np.inf])
    pt, fence = fs.contains(lon, lat)
    assert pt.size == 0 and fence.size == 0


def test_overlapping_and_nested_fences_all_reported() -> None:
    fs = FenceSet.build(_fc([
        _polygon(str(i), np.array([[0, 0], [s, 0], [s, s], [0, s], [0, 0]], dtype=float))
        for i, s in enumerate([1.0, 2.0, 1000.0 / 111.0, 0.001])]))
    pt, fence = fs.contains(np.array([0.0005, 0.5, 1.5, 5.0]),
                            np.array([0.0005, 0.5, 1.5, 5.0]))
    assert list(zip(pt.tolist(), fence.tolist(), strict=True)) == [
        (0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2), (3, 2)]


def test_empty_set_and_empty_batch() -> None:
    fs = FenceSet.build([])
    assert len(fs) == 0 and fs.contains(np.zeros(3), np.zeros(3))[0].size == 0
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], dtype=float)
    fs = FenceSet.build(_fc([_polygon("sq", square)]))
    assert fs.contains(np.empty(0), np.empty(0))[0].size == 0
    with pytest.raises(ValueError, match="1-D"):
        fs.contains(np.zeros(3), np.zeros(2))
    assert fs.index("sq") == 0 and fs.ids == ("sq",)


def test_chunked_build_and_query_give_the_same_answer(monkeypatch: pytest.MonkeyPatch,
                                                      ) -> None:
    """Building and querying in small chunks (as with large sets) changes nothing."""
    import beiflow.processing.geofence_index as index

    rng = np.random.default_rng(4)
    feats = []
    for i in range(40):
        x, y = rng.uniform(121.37, 121.42), rng.uniform(37.54, 37.57)
        size = rng.uniform(2e-4, 3e-3)
        if i % 4 == 0:
            feats.append({"type": "Feature", "id": f"c{i}", "properties": {"radius_m": 150},
                          "geometry": {"type": "Point", "coordinates": [x, y]}})
        elif i % 4 == 1:
            line = np.c_[x + np.cumsum(rng.normal(0, size, 5)), y + np.cumsum(
                rng.normal(0, size, 5))]
            feats.append({"type": "Feature", "id": f"r{i}", "properties": {"width_m": 30},
                          "geometry": {"type": "LineString", "coordinates": line.tolist()}})
        else:
            feats.append(_polygon(f"p{i}", *_with_holes(rng, x, y, size, 30, 1)))
    fences = _fc(feats)
    lon, lat = rng.uniform(121.36, 121.43, 20000), rng.uniform(37.53, 37.58, 20000)
    ref = FenceSet.build(fences).contains(lon, lat)
    monkeypatch.setattr(index, "_BUILD_CHUNK", 50)
    monkeypatch.setattr(index, "_CHUNK", 64)
    got = FenceSet.build(fences).contains(lon, lat)
    assert ref[0].size > 1000
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
