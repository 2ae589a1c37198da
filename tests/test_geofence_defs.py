"""Fence definitions: GeoJSON parsing, validation errors naming the feature, round trip."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from beiflow.processing.geofence import FenceDef, FenceSet, GeofenceError, parse_geojson

PORT = Path(__file__).parent.parent / "devices" / "simulators" / "data" / "yantai_port.geojson"
SQUARE = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]


def _fc(*features: dict) -> dict:
    return {"type": "FeatureCollection", "features": list(features)}


def _feature(fid: object, geometry: dict, **props: object) -> dict:
    return {"type": "Feature", "id": fid, "geometry": geometry, "properties": props}


def _poly(*rings: list) -> dict:
    return {"type": "Polygon", "coordinates": list(rings)}


def test_kinds_ids_and_properties() -> None:
    fences = parse_geojson(_fc(
        _feature("yard", _poly(SQUARE), name="Yard", kind="container_yard",
                 speed_limit_kmh=20, dwell_s=600),
        _feature(42, {"type": "Point", "coordinates": [121.4, 37.55, 12.0]},
                 radius_m=150),
        _feature(7.0, {"type": "LineString", "coordinates": [[121.38, 37.54], [121.39, 37.55]]},
                 width_m=20),
        _feature("mp", {"type": "MultiPolygon", "coordinates": [
            [SQUARE], [[[2, 0], [3, 0], [3, 1], [2, 0]]]]}),
    ))
    yard, depot, road, mp = fences
    assert (yard.geofence_id, yard.kind, yard.name) == ("yard", "polygon", "Yard")
    assert (yard.speed_limit_kmh, yard.dwell_s) == (20.0, 600.0)
    assert yard.properties["kind"] == "container_yard"
    assert (depot.geofence_id, depot.kind, depot.center, depot.radius_m) == \
        ("42", "circle", (121.4, 37.55), 150.0)
    assert (road.geofence_id, road.kind, road.width_m) == ("7", "corridor", 20.0)
    assert mp.kind == "polygon" and mp.multi and len(mp.polygons) == 2


def test_round_trip_through_json() -> None:
    fences = parse_geojson(json.loads(PORT.read_text()))
    for fence in fences:
        stored = json.loads(json.dumps(fence.to_geojson()))     # as the jsonb column does
        assert FenceDef.from_geojson(stored) == fence
    # the geometry and properties columns separately, as the lead stores them
    f = fences[0]
    feature = {"type": "Feature", "id": f.geofence_id, "geometry": f.geometry(),
               "properties": dict(f.properties)}
    assert FenceDef.from_geojson(feature) == f


def test_defs_are_immutable() -> None:
    fence = parse_geojson(json.loads(PORT.read_text()))[0]
    with pytest.raises(AttributeError):
        fence.geofence_id = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        fence.properties["name"] = "x"  # type: ignore[index]
    twin = copy.deepcopy(fence)
    assert twin == fence and hash(twin) == hash(fence)
    assert pickle.loads(pickle.dumps(fence)) == fence


def test_yantai_fixture() -> None:
    fences = parse_geojson(json.loads(PORT.read_text()))
    kinds = {f.geofence_id: f.kind for f in fences}
    assert kinds["fuel-depot"] == "circle" and kinds["port-road"] == "corridor"
    assert sum(1 for k in kinds if k.startswith("berth-")) == 6
    assert {f.properties["category"] for f in fences} >= {
        "berth", "yard", "gate", "hazardous", "restricted", "speed_limit"}
    fs = FenceSet.build(fences)
    lon = np.array([121.3970, 121.3990, 121.4150, 121.3868, 121.3700])
    lat = np.array([37.5580, 37.5600, 37.5480, 37.5510, 37.5500])
    pt, fence = fs.contains(lon, lat)
    got = [sorted(fs.ids[f] for f in fence[pt == i]) for i in range(lon.size)]
    assert got == [["port-area", "yard-a"],          # in the yard
                   ["port-area"],                    # the yard's hole (maintenance shop)
                   ["fuel-depot", "port-area"],
                   ["port-area", "port-road"],
                   []]                               # west of the port


def _ring_error(coords: list, match: str) -> None:
    with pytest.raises(GeofenceError, match=match) as err:
        parse_geojson(_fc(_feature("ok", _poly(SQUARE)), _feature("bad-1", _poly(*coords))))
    assert "'bad-1'" in str(err.value) and "#1" in str(err.value)
    assert err.value.feature_id == "bad-1" and err.value.index == 1


@pytest.mark.parametrize(("rings", "match"), [
    ([[[0, 0], [1, 0], [1, 1], [0, 1]]], "ring 0 of polygon 0 is not closed"),
    ([[[0, 0], [1, 0], [0, 0]]], "3 positions"),
    ([[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]], "intersects itself"),
    ([[[0, 0], [2, 0], [2, 2], [1, 2], [1, -1], [0, 2], [0, 0]]], "intersects itself"),
    ([[[0, 0], [2, 0], [2, 2], [0, 0], [0, 2], [-1, 1], [0, 0]]], "intersects itself"),
    ([[[0, 0], [2, 0], [1, 0], [1, 1], [0, 0]]], "turns back"),
    ([[[0, 0], [1, 0], [2, 0], [0, 0]]], "turns back"),
    ([[[0, 0], [1, 1], [1, 1], [0, 0]]], "fewer than 3 distinct"),
    ([SQUARE, [[2, 2], [3, 2], [3, 3], [2, 2]]], "hole.*outside its shell"),
    ([SQUARE, [[0.5, 0.5], [1.5, 0.5], [0.5, 0.7], [0.5, 0.5]]], "crosses or touches"),
    ([SQUARE, [[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.1]],
      [[0.5, 0.2], [0.8, 0.2], [0.8, 0.5], [0.5, 0.2]]], "nested"),
    ([[[0, 0], [181, 0], [1, 1], [0, 0]]], "out of range"),
    ([[[0, 0], [1, 0], [1, 91], [0, 0]]], "out of range"),
    ([[[0, 0], [1, 0], [1, float("nan")], [0, 0]]], "out of range"),
    ([[[0, 0], ["a", 0], [1, 1], [0, 0]]], "malformed"),
])
def test_invalid_rings_name_the_feature(rings: list, match: str) -> None:
    _ring_error(rings, match)


def test_self_intersection_in_a_large_ring() -> None:
    # 3,000 vertices on a circle, two of them swapped: one local crossing
    a = np.linspace(0, 2 * np.pi, 3000, endpoint=False)
    ring = np.c_[np.cos(a), np.sin(a)]
    assert parse_geojson(_fc(_feature("big", _poly(np.r_[ring, ring[:1]].tolist()))))
    ring[[1000, 1001]] = ring[[1001, 1000]]
    _ring_error([np.r_[ring, ring[:1]].tolist()], "intersects itself")


def test_overlapping_multipolygon_parts() -> None:
    geom = {"type": "MultiPolygon", "coordinates": [
        [SQUARE], [[[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.2]]]]}
    with pytest.raises(GeofenceError, match="'mp' #0: polygon 1 overlaps polygon 0"):
        parse_geojson(_fc(_feature("mp", geom)))
    # a part inside another part's hole is fine
    geom["coordinates"][0].append([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9], [0.1, 0.1]])
    assert parse_geojson(_fc(_feature("mp", geom)))[0].multi


@pytest.mark.parametrize(("feature", "match"), [
    (_feature("c", {"type": "Point", "coordinates": [121.4, 37.5]}, radius_m=0),
     "'c' #0: properties.radius_m must be a positive number"),
    (_feature("c", {"type": "Point", "coordinates": [121.4, 37.5]}, radius_m=-5),
     "radius_m must be a positive"),
    (_feature("c", {"type": "Point", "coordinates": [121.4, 37.5]}), "radius_m is required"),
    (_feature("c", {"type": "Point", "coordinates": [121.4, 37.5]}, radius_m="9"),
     "radius_m must be a positive"),
    (_feature("c", {"type": "Point", "coordinates": [200, 37.5]}, radius_m=9), "out of range"),
    (_feature("c", {"type": "Point", "coordinates": [179.9999, 0]}, radius_m=50),
     "antimeridian"),
    (_feature("c", {"type": "Point", "coordinates": [0, 89.9999]}, radius_m=50), "pole"),
    (_feature("r", {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, width_m=0),
     "'r' #0: properties.width_m must be a positive"),
    (_feature("r", {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}),
     "width_m is required"),
    (_feature("r", {"type": "LineString", "coordinates": [[0, 0], [0, 0]]}, width_m=5),
     "2 distinct"),
    (_feature("s", _poly(SQUARE), speed_limit_kmh=0), "speed_limit_kmh must be a positive"),
    (_feature("s", _poly(SQUARE), dwell_s=True), "dwell_s must be a positive"),
    (_feature("g", {"type": "MultiPoint", "coordinates": [[0, 0]]}), "'g' #0: unsupported"),
    (_feature("g", None), "'g' #0: has no geometry"),
    (_feature("g", _poly(SQUARE)) | {"properties": [1]}, "properties must be an object"),
    (_feature(None, _poly(SQUARE)), "feature #0: has no id"),
    (_feature("  ", _poly(SQUARE)), "feature #0: id is empty"),
    (_feature(["x"], _poly(SQUARE)), "feature #0: id must be a string or number"),
    ({"type": "Polygon", "coordinates": [SQUARE]}, "feature #0: not a GeoJSON Feature"),
])
def test_invalid_features(feature: dict, match: str) -> None:
    with pytest.raises(GeofenceError, match=match):
        parse_geojson(_fc(feature))


def test_duplicate_ids() -> None:
    with pytest.raises(GeofenceError, match=r"'7' #2: duplicate id \(also feature #0\)"):
        parse_geojson(_fc(_feature(7, _poly(SQUARE)), _feature("8", _poly(SQUARE)),
                          _feature("7", _poly(SQUARE))))


def test_not_a_feature_collection() -> None:
    with pytest.raises(GeofenceError, match="FeatureCollection"):
        parse_geojson({"type": "Feature"})
    with pytest.raises(GeofenceError, match="'features' list"):
        parse_geojson({"type": "FeatureCollection"})
    assert parse_geojson(_fc()) == []


def test_first_invalid_feature_in_file_order_is_named() -> None:
    bowtie = _poly([[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]])
    unclosed = _poly([[0, 0], [1, 0], [1, 1], [0, 1]])
    no_radius = {"type": "Point", "coordinates": [0, 0]}
    with pytest.raises(GeofenceError, match="'b' #1: ring 0 of polygon 0 intersects"):
        parse_geojson(_fc(_feature("a", _poly(SQUARE)), _feature("b", bowtie),
                          _feature("c", no_radius), _feature("d", unclosed)))
    with pytest.raises(GeofenceError, match=r"'c' #1: properties\.radius_m is required"):
        parse_geojson(_fc(_feature("a", _poly(SQUARE)), _feature("c", no_radius),
                          _feature("b", bowtie)))
    with pytest.raises(GeofenceError, match="'d' #2: ring 0 of polygon 0 is not closed"):
        parse_geojson(_fc(_feature("a", _poly(SQUARE)), _feature("c", _poly(SQUARE)),
                          _feature("d", unclosed), _feature("b", bowtie)))


@st.composite
def _random_multipolygons(draw: st.DrawFn) -> list[list[np.ndarray]]:
    """Parts and holes of random shape: star-shaped (valid) or random vertex order (mostly
    self-intersecting), placed so that parts and holes sometimes overlap."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def ring(cx: float, cy: float, size: float) -> np.ndarray:
        k = int(rng.integers(3, 12))
        if rng.random() < 0.7:
            a = (np.arange(k) + rng.uniform(0, 0.9, k)) * 2 * np.pi / k
            r = rng.uniform(0.3, 1, k) * size
            xy = np.c_[cx + r * np.cos(a), cy + r * np.sin(a)]
        else:
            xy = rng.uniform(-size, size, (k, 2)) + np.array([cx, cy])
        return np.r_[xy, xy[:1]]

    parts = []
    for _ in range(draw(st.integers(1, 3))):
        cx, cy = rng.uniform(-2, 2, 2)
        parts.append([ring(cx, cy, 1.0)] + [
            ring(cx + rng.uniform(-0.5, 0.5), cy + rng.uniform(-0.5, 0.5),
                 rng.uniform(0.05, 0.4)) for _ in range(draw(st.integers(0, 2)))])
    return parts


@settings(max_examples=300, deadline=None)
@given(_random_multipolygons())
def test_validity_agrees_with_shapely(parts: list[list[np.ndarray]]) -> None:
    geom = shapely.MultiPolygon([shapely.Polygon(p[0], p[1:]) for p in parts])
    feature = _feature("x", {"type": "MultiPolygon",
                             "coordinates": [[r.tolist() for r in p] for p in parts]})
    try:
        FenceDef.from_geojson(feature)
        ours = True
    except GeofenceError:
        ours = False
    assert ours == shapely.is_valid(geom), shapely.is_valid_reason(geom)
