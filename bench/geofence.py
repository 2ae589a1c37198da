"""Geofence containment: beiflow's FenceSet against shapely 2, same run, same data.

100k fixes around Yantai port against 1,000 and 10,000 fences (random star-shaped and
rectangular polygons 20-250 m across, overlapping, plus 20 % circles). Fences are prepared
once on both sides; each timed query counts everything a new batch costs:

* beiflow: ``FenceSet.contains(lon, lat)``;
* shapely STRtree: ``shapely.points`` + ``tree.query(points, predicate=...)`` for
  ``intersects`` and ``within`` (circles as 64-gons);
* shapely contains_xy: points sorted by longitude once per batch, then per fence the
  bounding-box slice (``searchsorted`` + latitude mask) into ``contains_xy``.

Medians of 3 runs; ratio = beiflow / fastest shapely method; the (point, polygon) pairs
are checked to agree with shapely's. Also the event stage:
``geofence_events`` on 100k fixes of 10k devices against 1,000 fences.

    python bench/geofence.py [--points N] [--fences 1000 10000]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import shapely

from beiflow.processing.geofence import (
    FenceDef,
    FenceSet,
    GeofenceState,
    geofence_events,
    parse_geojson,
)

PORT = (121.395, 37.555)          # Yantai port, Zhifu Bay
PORT_BOX = (121.37, 37.54, 121.42, 37.57)
REGION = (121.25, 37.45, 121.55, 37.65)
M_PER_DEG = 111_195.0
REPEAT = 3


def _star(rng: np.random.Generator, cx: float, cy: float, r_m: float) -> np.ndarray:
    n = int(rng.integers(6, 41))
    ang = (np.arange(n) + rng.uniform(0.0, 0.8, n)) * 2 * math.pi / n
    r = r_m * rng.uniform(0.45, 1.0, n)
    return _ring(cx, cy, r * np.cos(ang), r * np.sin(ang))


def _rect(rng: np.random.Generator, cx: float, cy: float, r_m: float) -> np.ndarray:
    a = rng.uniform(0, math.pi)
    w, h = r_m, r_m * rng.uniform(0.15, 0.6)
    x = np.array([-w, w, w, -w])
    y = np.array([-h, -h, h, h])
    return _ring(cx, cy, x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a))


def _ring(cx: float, cy: float, dx_m: np.ndarray, dy_m: np.ndarray) -> np.ndarray:
    lon = cx + dx_m / (M_PER_DEG * math.cos(math.radians(cy)))
    lat = cy + dy_m / M_PER_DEG
    ring = np.c_[lon, lat]
    return np.r_[ring, ring[:1]]


def make_fences(n: int, *, seed: int = 11) -> list[FenceDef]:
    """``n`` fences: 40 % inside the port, the rest over the Yantai area; 20 % circles."""
    rng = np.random.default_rng(seed)
    feats = []
    for i in range(n):
        box = PORT_BOX if rng.random() < 0.4 else REGION
        cx, cy = rng.uniform(box[0], box[2]), rng.uniform(box[1], box[3])
        r_m = float(np.exp(rng.uniform(math.log(20), math.log(250))))
        u = rng.random()
        if u < 0.2:
            geom = {"type": "Point", "coordinates": [cx, cy]}
            props = {"radius_m": r_m}
        else:
            ring = (_rect if u < 0.45 else _star)(rng, cx, cy, r_m)
            geom = {"type": "Polygon", "coordinates": [ring.tolist()]}
            props = {}
        feats.append({"type": "Feature", "id": f"f{i}", "geometry": geom,
                      "properties": props})
    return parse_geojson({"type": "FeatureCollection", "features": feats})


def make_points(n: int, fences: list[FenceDef], *, seed: int = 5,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Half around the port (Gaussian, ~1.2 km), half near random fences."""
    rng = np.random.default_rng(seed)
    k = n // 2
    lon = PORT[0] + rng.normal(0, 0.014, k)
    lat = PORT[1] + rng.normal(0, 0.011, k)
    centres = np.array([_centre(f) for f in fences])
    pick = centres[rng.integers(0, len(fences), n - k)]
    lon2 = pick[:, 0] + rng.normal(0, 0.0015, n - k)
    lat2 = pick[:, 1] + rng.normal(0, 0.0012, n - k)
    return np.r_[lon, lon2], np.r_[lat, lat2]


def _centre(f: FenceDef) -> tuple[float, float]:
    if f.center is not None:
        return f.center
    xy = np.array(f.polygons[0][0])
    return float(xy[:, 0].mean()), float(xy[:, 1].mean())


def to_shapely(fences: list[FenceDef]) -> np.ndarray:
    """Polygons as they are; circles as 64-gons in a local projection."""
    geoms = []
    for f in fences:
        if f.kind == "circle":
            assert f.center is not None and f.radius_m is not None
            a = np.linspace(0, 2 * math.pi, 64, endpoint=False)
            ring = _ring(f.center[0], f.center[1], f.radius_m * np.cos(a),
                         f.radius_m * np.sin(a))
            geoms.append(shapely.Polygon(ring))
        else:
            geoms.append(shapely.Polygon(f.polygons[0][0], f.polygons[0][1:]))
    arr = np.array(geoms, dtype=object)
    shapely.prepare(arr)
    return arr


def _strtree(tree: shapely.STRtree, predicate: str) -> Callable[[np.ndarray, np.ndarray], int]:
    def query(lon: np.ndarray, lat: np.ndarray) -> int:
        return int(tree.query(shapely.points(lon, lat), predicate=predicate).shape[1])
    return query


def _contains_xy(geoms: np.ndarray) -> Callable[[np.ndarray, np.ndarray], int]:
    bounds = shapely.bounds(geoms)

    def query(lon: np.ndarray, lat: np.ndarray) -> int:
        order = np.argsort(lon)
        slon, slat = lon[order], lat[order]
        lo = np.searchsorted(slon, bounds[:, 0], side="left")
        hi = np.searchsorted(slon, bounds[:, 2], side="right")
        hits = 0
        for g, i0, i1, (_, y0, _, y1) in zip(geoms, lo.tolist(), hi.tolist(), bounds,
                                             strict=True):
            if i0 == i1:
                continue
            y = slat[i0:i1]
            m = np.flatnonzero((y >= y0) & (y <= y1))
            if m.size:
                hits += int(shapely.contains_xy(g, slon[i0:i1][m], y[m]).sum())
        return hits
    return query


def _rate(fn: Callable[[np.ndarray, np.ndarray], object], lon: np.ndarray,
          lat: np.ndarray) -> float:
    t0 = time.perf_counter()
    fn(lon, lat)
    return lon.size / (time.perf_counter() - t0)


def containment(n_fences: int, n_points: int) -> dict[str, float]:
    """Median points/s of each method at one fence count, and ours / fastest shapely."""
    fences = make_fences(n_fences)
    lon, lat = make_points(n_points, fences)
    t0 = time.perf_counter()
    fs = FenceSet.build(fences)
    build_s = time.perf_counter() - t0
    geoms = to_shapely(fences)
    tree = shapely.STRtree(geoms)
    methods: dict[str, Callable[[np.ndarray, np.ndarray], object]] = {
        "beiflow": fs.contains,
        "strtree_intersects": _strtree(tree, "intersects"),
        "strtree_within": _strtree(tree, "within"),
        "contains_xy_bbox": _contains_xy(geoms),
    }
    for fn in methods.values():          # warm-up: lazy preparation, first-call costs
        fn(lon[:1000], lat[:1000])
    rates: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(REPEAT):
        for name, fn in methods.items():
            rates[name].append(_rate(fn, lon, lat))
    out = {f"{k}_points_per_s": statistics.median(v) for k, v in rates.items()}
    fastest = max(v for k, v in out.items() if not k.startswith("beiflow"))
    out["ratio"] = out["beiflow_points_per_s"] / fastest
    out["build_s"] = build_s
    pt, fence = fs.contains(lon, lat)
    out["pairs_per_point"] = pt.size / n_points
    # same answers on the polygons (shapely's circles are 64-gons, so not comparable)
    polygon = np.array([f.kind == "polygon" for f in fences])
    ref = tree.query(shapely.points(lon, lat), predicate="intersects")
    ours = set(zip(pt[polygon[fence]].tolist(), fence[polygon[fence]].tolist(), strict=True))
    keep = polygon[ref[1]]
    theirs = set(zip(ref[0][keep].tolist(), ref[1][keep].tolist(), strict=True))
    out["polygon_pairs"] = len(theirs)
    out["polygon_pairs_differing"] = len(ours ^ theirs)
    return out


def events(n_fixes: int = 100_000, n_devices: int = 10_000, n_fences: int = 1000,
           ) -> float:
    """Median fixes/s of ``geofence_events`` over consecutive batches."""
    fences = make_fences(n_fences)
    fs = FenceSet.build(fences)
    rng = np.random.default_rng(3)
    lon0, lat0 = make_points(n_devices, fences, seed=9)
    per = n_fixes // n_devices
    state = GeofenceState()
    rates = []
    for b in range(REPEAT + 1):
        device = np.tile(np.arange(n_devices), per)
        step = np.repeat(np.arange(per), n_devices) + b * per
        lon = lon0[device] + rng.normal(0, 2e-4, device.size) + step * 2e-5
        lat = lat0[device] + rng.normal(0, 2e-4, device.size)
        t_us = (1_700_000_000 + step) * 1_000_000
        speed = rng.uniform(0, 15, device.size)
        flags = np.zeros(device.size, np.int32)
        t0 = time.perf_counter()
        geofence_events(fs, state, device, t_us, lon, lat, speed, flags)
        if b:                              # the first batch only fills the state
            rates.append(device.size / (time.perf_counter() - t0))
    return statistics.median(rates)


def run(points: int = 100_000, sizes: tuple[int, ...] = (1000, 10_000)) -> dict[str, Any]:
    """Containment results per fence count and the event throughput."""
    return {"points": points,
            "containment": {n: containment(n, points) for n in sizes},
            "events_fixes_per_s": events()}


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--fences", type=int, nargs="+", default=[1000, 10_000])
    args = parser.parse_args()
    r = run(args.points, tuple(args.fences))
    print(f"{args.points} points, medians of {REPEAT} runs, points/s")
    for n, res in r["containment"].items():
        print(f"\n{n} fences (build {res['build_s']:.2f} s, "
              f"{res['pairs_per_point']:.2f} containing fences per point)")
        for k, v in res.items():
            if k.endswith("_points_per_s"):
                print(f"  {k.removesuffix('_points_per_s'):20s} {v:14,.0f}")
        print(f"  ratio beiflow / fastest shapely: {res['ratio']:.2f}x")
        print(f"  polygon pairs: {res['polygon_pairs']:,}, differing from shapely: "
              f"{res['polygon_pairs_differing']}")
    print(f"\ngeofence_events, 100k fixes of 10k devices, 1000 fences: "
          f"{r['events_fixes_per_s']:,.0f} fixes/s")


if __name__ == "__main__":
    main()
