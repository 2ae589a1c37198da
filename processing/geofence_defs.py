"""Geofence definitions: GeoJSON parsing, validation and the round trip back to GeoJSON.

A FeatureCollection holds one fence per Feature:

* ``Polygon`` / ``MultiPolygon`` (holes allowed) -> kind ``polygon``;
* ``Point`` with ``properties.radius_m`` -> kind ``circle``;
* ``LineString`` with ``properties.width_m`` -> kind ``corridor`` (``width_m / 2`` each side).

``properties.speed_limit_kmh`` and ``properties.dwell_s`` are honoured for every kind; all
properties (``name``, ``kind``, ``category``, ...) are kept as given in
:attr:`FenceDef.properties`. Coordinates beyond longitude and latitude (altitude) are
dropped. Invalid input raises :class:`GeofenceError` naming the feature by id and index
(the first invalid feature in file order): positions out of range (lon -180..180, lat
-90..90) or not finite; rings not closed, with fewer than 4 positions or 3 distinct
vertices, or turning back on themselves; any two segments of a fence's rings touching or
crossing (stricter than OGC, which lets rings touch at a point); holes outside their shell
or nested; MultiPolygon parts overlapping; radius or width not positive; a circle or
corridor reaching a pole or across the antimeridian; duplicate ids in one collection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

FenceKind = Literal["polygon", "circle", "corridor"]
Position = tuple[float, float]
Ring = tuple[Position, ...]
#: One polygon: its shell, then its holes; every ring closed (first == last).
PolygonRings = tuple[Ring, ...]

#: Mean Earth radius (IUGG), metres: used for circles and corridors.
EARTH_RADIUS_M = 6371008.8
#: Metres per degree of latitude on that sphere.
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0


class GeofenceError(ValueError):
    """A fence definition is invalid; ``feature_id`` / ``index`` name the feature."""

    def __init__(self, message: str, *, feature_id: str | None = None,
                 index: int | None = None) -> None:
        self.feature_id = feature_id
        self.index = index
        self.reason = message
        where = [f"{feature_id!r}"] if feature_id is not None else []
        if index is not None:
            where.append(f"#{index}")
        super().__init__(f"feature {' '.join(where)}: {message}" if where else message)


class Properties(Mapping[str, Any]):
    """A read-only (picklable) copy of a Feature's properties."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = _plain(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Properties({self._data!r})"


@dataclass(frozen=True, slots=True)
class FenceDef:
    """One validated fence; build with :meth:`from_geojson` or :func:`parse_geojson`."""

    geofence_id: str
    kind: FenceKind
    name: str | None = None
    #: ``polygon``: the polygons (one unless MultiPolygon), each ``(shell, *holes)``.
    polygons: tuple[PolygonRings, ...] = ()
    #: ``polygon``: written back as a MultiPolygon.
    multi: bool = False
    #: ``circle``: centre (lon, lat) and radius.
    center: Position | None = None
    radius_m: float | None = None
    #: ``corridor``: the centre line and the full width.
    line: tuple[Position, ...] = ()
    width_m: float | None = None
    speed_limit_kmh: float | None = None
    dwell_s: float | None = None
    properties: Properties = field(default_factory=Properties, hash=False)

    @staticmethod
    def from_geojson(feature: Mapping[str, Any], index: int | None = None) -> FenceDef:
        """Validate one GeoJSON Feature; ``index`` is its position, used in error messages."""
        fence, rings = _parse_feature(feature, index)
        if rings is not None:
            _validate_polygons([(fence.geofence_id, index, rings)])
        return fence

    def geometry(self) -> dict[str, Any]:
        """The GeoJSON geometry object."""
        if self.kind == "circle":
            assert self.center is not None
            return {"type": "Point", "coordinates": list(self.center)}
        if self.kind == "corridor":
            return {"type": "LineString", "coordinates": [list(p) for p in self.line]}
        polys = [[[list(p) for p in ring] for ring in poly] for poly in self.polygons]
        if self.multi:
            return {"type": "MultiPolygon", "coordinates": polys}
        return {"type": "Polygon", "coordinates": polys[0]}

    def to_geojson(self) -> dict[str, Any]:
        """The GeoJSON Feature; ``FenceDef.from_geojson(d.to_geojson()) == d``."""
        return {"type": "Feature", "id": self.geofence_id, "geometry": self.geometry(),
                "properties": _plain(self.properties)}


def parse_geojson(obj: Mapping[str, Any]) -> list[FenceDef]:
    """Validate a GeoJSON FeatureCollection into fences, in file order.

    >>> fc = {"type": "FeatureCollection", "features": [{"type": "Feature", "id": 7,
    ...       "geometry": {"type": "Point", "coordinates": [121.4, 37.55]},
    ...       "properties": {"name": "fuel depot", "radius_m": 120}}]}
    >>> [(f.geofence_id, f.kind, f.radius_m) for f in parse_geojson(fc)]
    [('7', 'circle', 120.0)]
    """
    if not isinstance(obj, Mapping) or obj.get("type") != "FeatureCollection":
        raise GeofenceError("expected a GeoJSON FeatureCollection")
    features = obj.get("features")
    if not isinstance(features, Sequence) or isinstance(features, str | bytes):
        raise GeofenceError("FeatureCollection has no 'features' list")
    out: list[FenceDef] = []
    polygons: list[tuple[str, int | None, list[list[np.ndarray]]]] = []
    seen: dict[str, int] = {}
    error: GeofenceError | None = None
    for i, feature in enumerate(features):
        try:
            fence, rings = _parse_feature(feature, i)
            if fence.geofence_id in seen:
                raise GeofenceError(f"duplicate id (also feature #{seen[fence.geofence_id]})",
                                    feature_id=fence.geofence_id, index=i)
        except GeofenceError as exc:
            error = exc
            break
        seen[fence.geofence_id] = i
        out.append(fence)
        if rings is not None:
            polygons.append((fence.geofence_id, i, rings))
    _validate_polygons(polygons)        # all of them precede the feature that failed
    if error is not None:
        raise error
    return out


def _plain(value: Any) -> Any:
    """A JSON-ready deep copy (mappings and tuples become dicts and lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _parse_feature(feature: Any, index: int | None,
                   ) -> tuple[FenceDef, list[list[np.ndarray]] | None]:
    """The fence, and for polygons their rings, still to be validated together."""
    if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
        raise GeofenceError("not a GeoJSON Feature", index=index)
    fid = _feature_id(feature.get("id"), index)

    def fail(message: str) -> GeofenceError:
        return GeofenceError(message, feature_id=fid, index=index)

    props = feature.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, Mapping):
        raise fail("properties must be an object")
    geom = feature.get("geometry")
    if not isinstance(geom, Mapping):
        raise fail("has no geometry")
    gtype = geom.get("type")
    coords = geom.get("coordinates")
    name = props.get("name")
    common: dict[str, Any] = {
        "geofence_id": fid,
        "name": None if name is None else str(name),
        "speed_limit_kmh": _positive(props, "speed_limit_kmh", fail),
        "dwell_s": _positive(props, "dwell_s", fail),
        "properties": Properties(props),
    }
    try:
        if gtype in ("Polygon", "MultiPolygon"):
            polys = [coords] if gtype == "Polygon" else coords
            if not isinstance(polys, list | tuple) or not polys:
                raise ValueError(f"{gtype} has no coordinates")
            rings = [[_positions(ring, f"ring {r} of polygon {p}") for r, ring in
                      enumerate(_seq(poly, f"polygon {p}"))] for p, poly in enumerate(polys)]
            return FenceDef(kind="polygon", multi=gtype == "MultiPolygon",
                            polygons=tuple(tuple(_tuples(r) for r in poly) for poly in rings),
                            **common), rings
        if gtype == "Point":
            center = _positions([coords], "Point")
            radius = _required(props, "radius_m", fail)
            _check_reach(center, radius, "circle")
            return FenceDef(kind="circle", center=_tuples(center)[0], radius_m=radius,
                            **common), None
        if gtype == "LineString":
            line = _positions(coords, "LineString")
            width = _required(props, "width_m", fail)
            if line.shape[0] < 2 or not np.any(np.any(line[1:] != line[:-1], axis=1)):
                raise ValueError("LineString needs at least 2 distinct positions")
            _check_reach(line, width / 2.0, "corridor")
            return FenceDef(kind="corridor", line=_tuples(line), width_m=width,
                            **common), None
    except ValueError as exc:
        raise fail(str(exc)) from None
    raise fail(f"unsupported geometry type {gtype!r} (Polygon, MultiPolygon, Point with "
               "radius_m, LineString with width_m)")


def _feature_id(raw: Any, index: int | None) -> str:
    if raw is None:
        raise GeofenceError("has no id (the Feature's 'id' is the geofence_id)", index=index)
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise GeofenceError(f"id must be a string or number, not {raw!r}", index=index)
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    fid = str(raw)
    if not fid.strip():
        raise GeofenceError("id is empty", index=index)
    return fid


def _positive(props: Mapping[str, Any], key: str, fail: Callable[[str], GeofenceError],
              ) -> float | None:
    """``properties[key]`` as a positive float, None when absent."""
    value = props.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise fail(f"properties.{key} must be a positive number, not {value!r}")
    return float(value)


def _required(props: Mapping[str, Any], key: str, fail: Callable[[str], GeofenceError],
              ) -> float:
    value = _positive(props, key, fail)
    if value is None:
        raise fail(f"properties.{key} is required for this geometry")
    return value


def _seq(value: Any, what: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{what} has no coordinates")
    return value


def _positions(value: Any, what: str) -> np.ndarray:
    """(n, 2) float64 lon/lat, range-checked."""
    try:
        arr = np.array([[float(c) for c in p[:2]] for p in _seq(value, what)], dtype=np.float64)
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"{what} has malformed positions") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{what} has malformed positions")
    bad = ~(np.isfinite(arr).all(axis=1) & (np.abs(arr[:, 0]) <= 180)
            & (np.abs(arr[:, 1]) <= 90))
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"{what}: position {k} {value[k]!r} is out of range "
                         "(lon -180..180, lat -90..90)")
    return arr


def _tuples(arr: np.ndarray) -> tuple[Position, ...]:
    return tuple((float(x), float(y)) for x, y in arr.tolist())


def _check_reach(points: np.ndarray, radius_m: float, what: str) -> None:
    """Reject a circle/corridor reaching a pole or across the antimeridian."""
    dlat = radius_m / M_PER_DEG
    lat = np.abs(points[:, 1]) + dlat
    if lat.max() >= 90.0:
        raise ValueError(f"{what} reaches a pole (not supported)")
    dlon = dlat / np.cos(np.radians(lat))
    if (np.abs(points[:, 0]) + dlon).max() > 180.0:
        raise ValueError(f"{what} crosses the antimeridian (not supported)")


# ---------------------------------------------------------------------------- polygons


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each i, ``counts[i]`` rows: (owner i, rank 0..counts[i]-1)."""
    owner = np.repeat(np.arange(counts.size), counts)
    ends = np.cumsum(counts)
    rank = np.arange(owner.size) - np.repeat(ends - counts, counts)
    return owner, rank


def _fmt(pt: np.ndarray) -> str:
    return f"({pt[0]:.7f}, {pt[1]:.7f})"


class _Rings:
    """All rings of a batch of polygon fences, concatenated; consecutive duplicate
    positions dropped for the segment arrays."""

    def __init__(self, fences: Sequence[tuple[str, int | None, list[list[np.ndarray]]]],
                 ) -> None:
        meta = [(k, p, r) for k, (_, _, polys) in enumerate(fences)
                for p, poly in enumerate(polys) for r in range(len(poly))]
        self.fence, self.part, self.index = np.array(meta, dtype=np.int64).reshape(-1, 3).T
        arrays = [ring for _, _, polys in fences for poly in polys for ring in poly]
        self.n = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        self.xy = np.concatenate(arrays)
        self.first = np.cumsum(self.n) - self.n
        keep = np.ones(self.xy.shape[0], dtype=bool)
        keep[1:] = np.any(self.xy[1:] != self.xy[:-1], axis=1)
        keep[self.first] = True
        #: distinct positions per ring, counting the closing one
        self.m = np.add.reduceat(keep.astype(np.int64), self.first)
        pts = self.xy[keep]
        self.seg_ring, self.seg_pos = _expand(np.maximum(self.m - 1, 0))
        self.seg_first = np.cumsum(self.m - 1) - (self.m - 1)
        at = (np.cumsum(self.m) - self.m)[self.seg_ring] + self.seg_pos
        self.a, self.b = pts[at], pts[at + 1]
        self.v0 = pts[np.cumsum(self.m) - self.m]       # first vertex of each ring

    def name(self, ring: int) -> str:
        return f"ring {self.index[ring]} of polygon {self.part[ring]}"

    def crossings(self, px: np.ndarray, py: np.ndarray, ring: np.ndarray) -> np.ndarray:
        """Crossing count of each point's rightward ray with its ring."""
        job, k = _expand(self.m[ring] - 1)
        seg = self.seg_first[ring][job] + k
        (x0, y0), (x1, y1) = self.a[seg].T, self.b[seg].T
        y = py[job]
        with np.errstate(divide="ignore", invalid="ignore"):
            hit = ((y0 > y) != (y1 > y)) & (px[job] < x0 + (y - y0) * (x1 - x0) / (y1 - y0))
        return np.bincount(job[hit], minlength=ring.size)


def _validate_polygons(fences: Sequence[tuple[str, int | None, list[list[np.ndarray]]]],
                       ) -> None:
    """Raise GeofenceError naming the first fence (in order) with an invalid polygon.

    Valid: every ring closed, >= 4 positions and 3 distinct vertices, never turning back
    on itself; no two segments touching or crossing except neighbours within a ring;
    holes inside their shell and not nested; MultiPolygon parts disjoint. All fences of
    the batch are checked together, vectorised.
    """
    if not fences:
        return
    rings = _Rings(fences)
    limit, message = len(fences), ""
    for check in (_ring_faults, _crossing_faults, _hole_faults, _part_faults):
        found = check(rings, limit)
        if found is not None:
            limit, message = found
    if message:
        fid, index, _ = fences[limit]
        raise GeofenceError(message, feature_id=fid, index=index)


_Fault = tuple[int, str] | None


def _first(fence: np.ndarray, keys: list[np.ndarray]) -> int | None:
    """Index of the first fault ordered by fence, then ``keys`` (None when no fault)."""
    if not fence.size:
        return None
    return int(np.lexsort((*keys[::-1], fence))[0])


def _ring_faults(rings: _Rings, limit: int) -> _Fault:
    """Per ring: too few positions, not closed, too few distinct vertices, a spike."""
    nseg = rings.m - 1
    d = rings.b - rings.a
    last = rings.seg_pos == nseg[rings.seg_ring] - 1
    nxt = np.arange(d.shape[0]) + np.where(last, -rings.seg_pos, 1)
    turn = d[:, 0] * d[nxt, 1] - d[:, 1] * d[nxt, 0]
    spike = (turn == 0) & (np.sum(d * d[nxt], axis=1) < 0)
    spike_seg = np.full(rings.n.size, -1)
    idx = np.flatnonzero(spike)[::-1]
    spike_seg[rings.seg_ring[idx]] = idx                # first spike of each ring
    closed = np.all(rings.xy[rings.first] == rings.xy[rings.first + rings.n - 1], axis=1)
    faults = np.stack([rings.n < 4, ~closed, rings.m < 4, spike_seg >= 0])
    bad = np.flatnonzero(faults.any(axis=0) & (rings.fence < limit))
    if not bad.size:
        return None
    r = int(bad[0])                                      # rings are in fence order
    what = rings.name(r)
    kind = int(np.argmax(faults[:, r]))
    if kind == 0:
        text = f"{what} has {rings.n[r]} positions (at least 4 needed)"
    elif kind == 1:
        text = f"{what} is not closed (first position != last)"
    elif kind == 2:
        text = f"{what} has fewer than 3 distinct vertices"
    else:
        s = int(spike_seg[r])
        text = f"{what} turns back on itself at {_fmt(rings.b[s])}"
    return int(rings.fence[r]), text


def _crossing_faults(rings: _Rings, limit: int) -> _Fault:
    """Two non-adjacent segments of one fence that touch or cross."""
    sel = np.flatnonzero(rings.fence[rings.seg_ring] < limit)
    if not sel.size:
        return None
    ring = rings.seg_ring[sel]
    i, j = _candidate_pairs(rings.a[sel], rings.b[sel], rings.fence[ring])
    same = ring[i] == ring[j]
    gap = np.abs(rings.seg_pos[sel][i] - rings.seg_pos[sel][j])
    nseg = rings.m[ring[i]] - 1
    keep = ~(same & ((gap == 1) | (gap == nseg - 1)))
    i, j = sel[i[keep]], sel[j[keep]]
    hit = np.flatnonzero(_segments_touch(rings.a[i], rings.b[i], rings.a[j], rings.b[j]))
    k = _first(rings.fence[rings.seg_ring[i[hit]]], [])
    if k is None:
        return None
    si, sj = int(i[hit[k]]), int(j[hit[k]])
    ri, rj = int(rings.seg_ring[si]), int(rings.seg_ring[sj])
    where = f"near {_fmt(rings.a[si])}-{_fmt(rings.b[si])}"
    text = (f"{rings.name(ri)} intersects itself {where}" if ri == rj
            else f"{rings.name(rj)} crosses or touches {rings.name(ri)} {where}")
    return int(rings.fence[ri]), text


def _hole_faults(rings: _Rings, limit: int) -> _Fault:
    """A hole outside its shell, or two holes of a polygon nested."""
    hole = np.flatnonzero((rings.index > 0) & (rings.fence < limit))
    shell = hole - rings.index[hole]
    out = rings.crossings(rings.v0[hole, 0], rings.v0[hole, 1], shell) % 2 == 0
    h, g = _expand(rings.index[hole] - 1)               # earlier holes of one polygon
    h = hole[h]
    g = h - rings.index[h] + 1 + g
    nested = (rings.crossings(rings.v0[h, 0], rings.v0[h, 1], g) % 2 == 1) \
        | (rings.crossings(rings.v0[g, 0], rings.v0[g, 1], h) % 2 == 1)
    h_bad = np.r_[hole[out], h[nested]]
    g_bad = np.r_[np.zeros(int(out.sum()), np.int64), g[nested]]
    code = np.r_[np.zeros(int(out.sum()), np.int64), np.ones(int(nested.sum()), np.int64)]
    k = _first(rings.fence[h_bad], [rings.part[h_bad], rings.index[h_bad], code,
                                     rings.index[g_bad]])
    if k is None:
        return None
    r, p = int(h_bad[k]), rings.part[h_bad[k]]
    text = (f"ring {rings.index[r]} of polygon {p} (a hole) lies outside its shell"
            if code[k] == 0 else
            f"holes {rings.index[g_bad[k]]} and {rings.index[r]} of polygon {p} are nested")
    return int(rings.fence[r]), text


def _part_faults(rings: _Rings, limit: int) -> _Fault:
    """A MultiPolygon part with a vertex inside another part of the same fence."""
    shells = np.flatnonzero(rings.index == 0)
    size = np.diff(np.r_[shells, rings.n.size])          # rings per polygon
    sel = rings.fence[shells] < limit
    shells, size = shells[sel], size[sel]
    f = rings.fence[shells]
    first = np.searchsorted(f, f)                        # the fence's first polygon
    parts = np.bincount(f, minlength=limit)[f]
    q, k = _expand(np.where(parts > 1, parts, 0))        # polygon q against each p
    p = first[q] + k
    q, p = q[p != q], p[p != q]
    job, r = _expand(size[p])
    pts = rings.v0[shells[q]][job]
    inside = np.bincount(job, weights=rings.crossings(pts[:, 0], pts[:, 1], shells[p][job] + r),
                         minlength=p.size) % 2 == 1
    q, p = shells[q[inside]], shells[p[inside]]
    k0 = _first(rings.fence[p], [rings.part[p], rings.part[q]])
    if k0 is None:
        return None
    return int(rings.fence[p[k0]]), f"polygon {rings.part[q[k0]]} overlaps polygon " \
        f"{rings.part[p[k0]]}"


def _candidate_pairs(a: np.ndarray, b: np.ndarray, group: np.ndarray,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Segment index pairs (i < j) of one group whose bounding boxes overlap.

    Each group (fence) gets a uniform grid sized to its segment count; segments are
    bucketed by the cells their boxes cover, pairs come from shared cells.
    """
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    n = a.shape[0]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    count = np.diff(np.r_[starts, n])
    gi = np.repeat(np.arange(starts.size), count)
    origin = np.minimum.reduceat(lo, starts, axis=0)
    extent = (np.maximum.reduceat(hi, starts, axis=0) - origin).max(axis=1)
    mean = np.add.reduceat((hi - lo).max(axis=1), starts) / count
    cell = np.maximum.reduce([extent / np.sqrt(count), mean, extent * 1e-9,
                              np.full(count.size, 1e-12)])
    c0 = np.floor((lo - origin[gi]) / cell[gi, None]).astype(np.int64)
    c1 = np.floor((hi - origin[gi]) / cell[gi, None]).astype(np.int64)
    ncol = (np.floor(extent / cell).astype(np.int64) + 1)[gi]
    w = c1[:, 0] - c0[:, 0] + 1
    seg, k = _expand(w * (c1[:, 1] - c0[:, 1] + 1))
    key = (gi[seg] << 40) + (c0[seg, 1] + k // w[seg]) * ncol[seg] + c0[seg, 0] + k % w[seg]
    order = np.argsort(key, kind="stable")
    key, seg = key[order], seg[order]
    bounds = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
    partners = np.repeat(bounds[1:], np.diff(bounds)) - np.arange(seg.size) - 1
    first, k = _expand(partners)
    i, j = seg[first], seg[first + 1 + k]
    i, j = np.minimum(i, j), np.maximum(i, j)
    ok = (lo[i] <= hi[j]).all(axis=1) & (lo[j] <= hi[i]).all(axis=1)
    return i[ok], j[ok]


def _orient(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    v = ((q[:, 0] - p[:, 0]) * (r[:, 1] - p[:, 1])
         - (q[:, 1] - p[:, 1]) * (r[:, 0] - p[:, 0]))
    return np.sign(v)


def _on_box(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """r lies in the bounding box of p-q (used once r is known to be collinear)."""
    return ((np.minimum(p, q) <= r) & (r <= np.maximum(p, q))).all(axis=1)


def _segments_touch(p1: np.ndarray, q1: np.ndarray, p2: np.ndarray,
                    q2: np.ndarray) -> np.ndarray:
    """Closed segments p1-q1 and p2-q2 share at least one point."""
    o1, o2 = _orient(p1, q1, p2), _orient(p1, q1, q2)
    o3, o4 = _orient(p2, q2, p1), _orient(p2, q2, q1)
    proper = (o1 * o2 < 0) & (o3 * o4 < 0)
    return (proper | ((o1 == 0) & _on_box(p1, q1, p2)) | ((o2 == 0) & _on_box(p1, q1, q2))
            | ((o3 == 0) & _on_box(p2, q2, p1)) | ((o4 == 0) & _on_box(p2, q2, q1)))
