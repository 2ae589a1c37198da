"""FenceSet: fences rasterised once into uniform grids, queried per batch with NumPy only.

Each fence is assigned to a *level*: a uniform lon/lat grid whose cell size makes the fence
span at most ``8 * cells_per_fence`` cells per axis (levels are 8x apart, so a set mixing
berths and a whole port area stays compact). Every (cell, fence) pair the fence touches
becomes an *entry* of one of four kinds:

* ``_INSIDE``: the cell (widened by a rounding margin) lies wholly inside the fence: a point
  in it is contained without further test;
* ``_POLY``: the cell meets a polygon's boundary. The entry lists the polygon edges a
  horizontal ray from the cell can cross: the edges of the cell's row to the right (or to
  the left, whichever list is shorter; a closed ring crosses any horizontal line an even
  number of times, so both rays give the same parity);
* ``_CIRCLE``: the cell meets a circle's rim: exact haversine test;
* ``_CORRIDOR``: the cell meets a corridor's edge; the entry lists the centre-line
  segments that can come within half the width of the cell.

Cells wholly outside a fence get no entry. A query finds each point's cell (one
multiply-add per axis), expands the cell's entries with ``np.repeat``/``cumsum`` into
candidate (point, entry) pairs, and runs the exact tests vectorised over all candidate
pairs of the batch, grouped by kind: no Python loop over points or fences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from beiflow.processing.geofence_defs import EARTH_RADIUS_M, M_PER_DEG, FenceDef

_INSIDE, _POLY, _CIRCLE, _CORRIDOR = 0, 1, 2, 3
#: Rounding margin, in grid cells, by which cells are widened when rasterising.
_MARGIN = 1e-6
#: Largest dense grid of one level (cells); coarser cells beyond it.
_MAX_CELLS = 1 << 22
#: Largest number of (pair, edge) tests expanded at once.
_CHUNK = 1 << 21
#: Cells plus vertices rasterised at once when building.
_BUILD_CHUNK = 1 << 18


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each i, ``counts[i]`` rows: (owner i, rank 0..counts[i]-1)."""
    owner = np.repeat(np.arange(counts.size), counts)
    ends = np.cumsum(counts)
    rank = np.arange(owner.size) - np.repeat(ends - counts, counts)
    return owner, rank


def _ranges(start: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(start[i], start[i] + count[i])``."""
    ends = np.cumsum(count)
    return np.arange(int(ends[-1]) if ends.size else 0) + np.repeat(start - ends + count, count)


#: Polygon edge items, one row per (boundary entry, edge): ``ya, yb, xa, k``. The edge
#: counts for a point when ``ya <= py < yb`` and its crossing ``xa + (py - ya) * k`` lies
#: right of px. Left-ray entries store ``-xa, -k`` (the crossing negated, exactly) and
#: count it when it is >= ``-px``, i.e. when the crossing is not right of px.
_POLY_COLS = 4
#: Corridor segment items, one row per (boundary entry, segment): ``lon0, lat0, kx, ux,
#: uy, inv_len2, hw2``. In the segment's projection ``x = (lon - lon0) * kx``,
#: ``y = (lat - lat0) * M_PER_DEG`` (metres) the segment runs from (0, 0) to (ux, uy); a
#: point is inside when its squared distance to it is <= ``hw2``.
_SEG_COLS = 7


def _poly_hits(px: np.ndarray, py: np.ndarray, left: np.ndarray, start: np.ndarray,
               count: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Crossing-number parity of each point against its entry's edge list."""
    # right ray: crossing > px; left ray: -crossing >= -px, i.e. > the next float below
    thr = np.where(left, np.nextafter(-px, -np.inf), px)
    out = np.empty(px.size, dtype=bool)
    for lo, hi in _chunks(count):
        c = count[lo:hi]
        edge = np.take(items, _ranges(start[lo:hi], c), axis=0)
        y = np.repeat(py[lo:hi], c)
        ya = edge[:, 0]
        cross = y - ya
        cross *= edge[:, 3]
        cross += edge[:, 2]
        hit = cross > np.repeat(thr[lo:hi], c)
        hit &= ya <= y
        hit &= y < edge[:, 1]
        acc = np.zeros(hit.size + 1, dtype=np.int32)
        np.cumsum(hit, out=acc[1:])
        ends = np.cumsum(c)
        out[lo:hi] = ((acc[ends] - acc[ends - c]) & 1).astype(bool)
    return out


def _seg_hits(lon: np.ndarray, lat: np.ndarray, start: np.ndarray, count: np.ndarray,
              items: np.ndarray) -> np.ndarray:
    """Whether each point lies within half-width of any segment of its entry."""
    out = np.empty(lon.size, dtype=bool)
    for lo, hi in _chunks(count):
        c = count[lo:hi]
        seg = np.take(items, _ranges(start[lo:hi], c), axis=0)
        dx = (np.repeat(lon[lo:hi], c) - seg[:, 0]) * seg[:, 2]
        dy = (np.repeat(lat[lo:hi], c) - seg[:, 1]) * M_PER_DEG
        ux, uy = seg[:, 3], seg[:, 4]
        t = np.clip((dx * ux + dy * uy) * seg[:, 5], 0.0, 1.0)
        dx -= t * ux
        dy -= t * uy
        hit = dx * dx + dy * dy <= seg[:, 6]
        owner = np.repeat(np.arange(c.size), c)
        out[lo:hi] = np.bincount(owner[hit], minlength=c.size) > 0
    return out


def _chunks(count: np.ndarray) -> list[tuple[int, int]]:
    """Split rows so that no chunk expands to more than ``_CHUNK`` (row, item) tests."""
    ends = np.cumsum(count)
    if not ends.size or ends[-1] <= _CHUNK:
        return [(0, count.size)]
    cuts = np.searchsorted(ends, np.arange(_CHUNK, int(ends[-1]), _CHUNK), side="right")
    bounds = np.unique(np.r_[0, cuts, count.size])
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def _haversine_a(lon: np.ndarray, lat: np.ndarray, lon0: np.ndarray, lat0: np.ndarray,
                 ) -> np.ndarray:
    """The haversine ``a`` term: distance = 2 R asin(sqrt(a))."""
    la, la0 = np.radians(lat), np.radians(lat0)
    s1 = np.sin((la - la0) * 0.5)
    s2 = np.sin(np.radians(lon - lon0) * 0.5)
    return s1 * s1 + np.cos(la) * np.cos(la0) * s2 * s2


def _haversine_m(lon: np.ndarray, lat: np.ndarray, lon0: np.ndarray, lat0: np.ndarray,
                 ) -> np.ndarray:
    a = np.clip(_haversine_a(lon, lat, lon0, lat0), 0.0, 1.0)
    return 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(a))


@dataclass(frozen=True, slots=True)
class _Level:
    """One uniform grid and its entries (sorted by cell, then fence)."""

    x0: float
    y0: float
    inv: float
    nx: int
    ny: int
    cell_ptr: np.ndarray     # int32, nx * ny + 1
    fence: np.ndarray        # int32 per entry
    kind: np.ndarray         # int8 per entry
    start: np.ndarray        # int64 per entry: first item (edges or segments)
    count: np.ndarray        # int32 per entry
    left: np.ndarray         # bool per entry: polygon edges listed for a leftward ray
    poly: np.ndarray         # (n, _POLY_COLS)
    seg: np.ndarray          # (n, _SEG_COLS)

    def query(self, lon: np.ndarray, lat: np.ndarray, circles: _Circles,
              ) -> tuple[np.ndarray, np.ndarray]:
        """(point, fence) pairs of this level, sorted by point then fence."""
        fx = lon - self.x0
        fx *= self.inv
        fy = lat - self.y0
        fy *= self.inv
        ok = fx >= 0
        ok &= fy >= 0
        ok &= fx < self.nx
        ok &= fy < self.ny
        idx = np.flatnonzero(ok)
        cell = fy[idx].astype(np.int32)
        cell *= self.nx
        cell += fx[idx].astype(np.int32)
        first = self.cell_ptr[cell]
        cnt = self.cell_ptr[cell + 1] - first
        pt = np.repeat(idx, cnt)
        entry = _ranges(first, cnt)
        kind = self.kind[entry]
        hit = kind == _INSIDE
        tested = np.flatnonzero(~hit)
        tested_kind = kind[tested]
        for k in (_POLY, _CIRCLE, _CORRIDOR):
            sel = tested[tested_kind == k]
            if not sel.size:
                continue
            p, e = pt[sel], entry[sel]
            if k == _POLY:
                hit[sel] = _poly_hits(lon[p], lat[p], self.left[e], self.start[e],
                                      self.count[e], self.poly)
            elif k == _CIRCLE:
                f = self.fence[e]
                a = _haversine_a(lon[p], lat[p], circles.lon[f], circles.lat[f])
                hit[sel] = a <= circles.thr[f]
            else:
                hit[sel] = _seg_hits(lon[p], lat[p], self.start[e], self.count[e], self.seg)
        return pt[hit], self.fence[entry[hit]]


@dataclass(frozen=True, slots=True)
class _Circles:
    """Circle parameters indexed by fence (NaN for other kinds)."""

    lon: np.ndarray
    lat: np.ndarray
    #: ``haversine a`` at the radius: inside when a <= thr.
    thr: np.ndarray


class FenceSet:
    """Fences prepared for fast containment queries; build once, query every batch."""

    __slots__ = ("_circles", "_levels", "defs", "dwell_s", "ids", "speed_limit_kmh")

    def __init__(self, defs: tuple[FenceDef, ...], levels: tuple[_Level, ...],
                 circles: _Circles) -> None:
        self.defs = defs
        #: ``geofence_id`` of each fence index.
        self.ids: tuple[str, ...] = tuple(d.geofence_id for d in defs)
        #: Per fence, NaN when unset.
        self.speed_limit_kmh = np.array([np.nan if d.speed_limit_kmh is None
                                         else d.speed_limit_kmh for d in defs], np.float64)
        self.dwell_s = np.array([np.nan if d.dwell_s is None else d.dwell_s for d in defs],
                                np.float64)
        self._levels = levels
        self._circles = circles

    def __len__(self) -> int:
        return len(self.defs)

    @staticmethod
    def build(defs: Sequence[FenceDef], *, cells_per_fence: int = 8) -> FenceSet:
        """Rasterise ``defs`` (fence index = position in ``defs``).

        ``cells_per_fence``: grid cells across a fence of median size; more cells mean
        more entries but fewer exact tests per point.
        """
        defs = tuple(defs)
        ids = [d.geofence_id for d in defs]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate geofence_id in the fence set")
        n = len(defs)
        circles = _Circles(*(np.full(n, np.nan) for _ in range(3)))
        if not n:
            return FenceSet(defs, (), circles)
        bbox = _bboxes(defs)
        size = np.maximum(bbox[:, 2] - bbox[:, 0], bbox[:, 3] - bbox[:, 1])
        base = max(float(np.median(size)) / cells_per_fence, 1e-7)
        span = 8.0 * cells_per_fence
        level = np.zeros(n, dtype=np.int64)
        while True:
            big = size > base * 8.0 ** level * span
            if not big.any():
                break
            level[big] += 1
        for i, d in enumerate(defs):
            if d.kind == "circle":
                assert d.center is not None and d.radius_m is not None
                circles.lon[i], circles.lat[i] = d.center
                circles.thr[i] = math.sin(d.radius_m / (2.0 * EARTH_RADIUS_M)) ** 2
        levels = tuple(_build_level(defs, np.flatnonzero(level == k), bbox,
                                    base * 8.0 ** k, circles)
                       for k in np.unique(level).tolist())
        return FenceSet(defs, levels, circles)

    def index(self, geofence_id: str) -> int:
        """Fence index of ``geofence_id`` (ValueError when absent)."""
        return self.ids.index(geofence_id)

    def contains(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All (point, fence) containment pairs, sorted by point then fence.

        Points with a NaN coordinate are in no fence. Returns ``(point, fence)``: intp
        indices into ``lon``/``lat`` and int32 fence indices.
        """
        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        if lon.shape != lat.shape or lon.ndim != 1:
            raise ValueError("lon and lat must be 1-D arrays of one length")
        if not self._levels:
            return np.empty(0, np.intp), np.empty(0, np.int32)
        parts = [lv.query(lon, lat, self._circles) for lv in self._levels]
        if len(parts) == 1:
            return parts[0]
        pt = np.concatenate([p for p, _ in parts])
        fence = np.concatenate([f for _, f in parts])
        # sorted runs, one per level: a stable (merging) sort is linear here
        order = np.argsort(pt.astype(np.int64) * len(self.defs) + fence, kind="stable")
        return pt[order], fence[order]


def _lines(defs: tuple[FenceDef, ...], sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segments (n, 4: x0, y0, x1, y1) of the polygon rings or corridor lines of
    ``defs[sel]``, and the position in ``sel`` owning each."""
    paths = [(j, path) for j, i in enumerate(sel.tolist())
             for path in ([ring for poly in defs[i].polygons for ring in poly]
                          or [defs[i].line])]
    length = np.array([len(p) for _, p in paths], dtype=np.int64)
    xy = np.array([pt for _, p in paths for pt in p], dtype=np.float64).reshape(-1, 2)
    owner = np.repeat(np.array([j for j, _ in paths], dtype=np.int64), length)
    start = np.ones(xy.shape[0], dtype=bool)
    start[np.cumsum(length) - 1] = False                  # the last vertex starts nothing
    at = np.flatnonzero(start)
    return np.hstack([xy[at], xy[at + 1]]), owner[at]


def _bboxes(defs: tuple[FenceDef, ...]) -> np.ndarray:
    """(n, 4) lon/lat bounding boxes, with the radius or half-width around circles and
    corridors."""
    box = np.empty((len(defs), 4))
    kind = np.array([d.kind for d in defs])
    for k in ("polygon", "corridor"):
        sel = np.flatnonzero(kind == k)
        if sel.size:
            segs, owner = _lines(defs, sel)
            first = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
            box[sel, :2] = np.minimum.reduceat(np.minimum(segs[:, :2], segs[:, 2:]), first)
            box[sel, 2:] = np.maximum.reduceat(np.maximum(segs[:, :2], segs[:, 2:]), first)
    sel = np.flatnonzero(kind == "corridor")
    if sel.size:
        dlat = np.array([defs[i].width_m or 0.0 for i in sel.tolist()]) / 2.0 / M_PER_DEG
        far = np.maximum(np.abs(box[sel, 1]), np.abs(box[sel, 3])) + dlat
        dlon = dlat / np.cos(np.radians(far))
        box[sel] += np.c_[-dlon, -dlat, dlon, dlat]
    sel = np.flatnonzero(kind == "circle")
    if sel.size:
        centre = np.array([defs[i].center for i in sel.tolist()], dtype=np.float64)
        ang = np.array([defs[i].radius_m for i in sel.tolist()], dtype=np.float64) \
            / EARTH_RADIUS_M
        dlat = np.degrees(ang)
        dlon = np.degrees(np.arcsin(np.minimum(1.0, np.sin(ang)
                                               / np.cos(np.radians(centre[:, 1])))))
        box[sel] = np.c_[centre[:, 0] - dlon, centre[:, 1] - dlat,
                         centre[:, 0] + dlon, centre[:, 1] + dlat]
    return box


@dataclass(slots=True)
class _Grid:
    """A level's uniform grid: origin, cell size (degrees), columns and rows."""

    x0: float
    y0: float
    cell: float
    nx: int
    ny: int

    def to_u(self, lon: np.ndarray) -> np.ndarray:
        return (lon - self.x0) * (1.0 / self.cell)

    def to_v(self, lat: np.ndarray) -> np.ndarray:
        return (lat - self.y0) * (1.0 / self.cell)


def _make_grid(bbox: np.ndarray, cell: float) -> _Grid:
    x0, y0 = float(bbox[:, 0].min()) - cell, float(bbox[:, 1].min()) - cell
    w = float(bbox[:, 2].max()) + cell - x0
    h = float(bbox[:, 3].max()) + cell - y0
    if (w / cell + 1) * (h / cell + 1) > _MAX_CELLS:
        cell = max(cell, math.sqrt(w * h / _MAX_CELLS)) * 1.05
        while (w / cell + 1) * (h / cell + 1) > _MAX_CELLS:
            cell *= 1.05
    return _Grid(x0, y0, cell, int(w / cell) + 2, int(h / cell) + 2)


@dataclass(slots=True)
class _Blocks:
    """Per fence of one kind: its bounding-box block of cells, flattened row-major."""

    c0: np.ndarray    # first column
    r0: np.ndarray    # first row
    w: np.ndarray     # columns
    h: np.ndarray     # rows
    off: np.ndarray   # first local cell
    total: int

    @staticmethod
    def of(grid: _Grid, bbox: np.ndarray) -> _Blocks:
        c0 = np.floor(grid.to_u(bbox[:, 0]) - _MARGIN).astype(np.int64)
        c1 = np.floor(grid.to_u(bbox[:, 2]) + _MARGIN).astype(np.int64)
        r0 = np.floor(grid.to_v(bbox[:, 1]) - _MARGIN).astype(np.int64)
        r1 = np.floor(grid.to_v(bbox[:, 3]) + _MARGIN).astype(np.int64)
        w, h = c1 - c0 + 1, r1 - r0 + 1
        sizes = w * h
        off = np.cumsum(sizes) - sizes
        return _Blocks(c0, r0, w, h, off, int(sizes.sum()))

    def cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every local cell: (fence, column, row)."""
        f, i = _expand(self.w * self.h)
        row = i // self.w[f]
        return f, self.c0[f] + i - row * self.w[f], self.r0[f] + row

    def local(self, f: np.ndarray, col: np.ndarray, row: np.ndarray) -> np.ndarray:
        return self.off[f] + (row - self.r0[f]) * self.w[f] + (col - self.c0[f])


@dataclass(slots=True)
class _Entries:
    """Entries of some fences, before they are merged and sorted by cell."""

    cell: np.ndarray
    fence: np.ndarray
    kind: np.ndarray
    start: np.ndarray
    count: np.ndarray
    left: np.ndarray


def _build_level(defs: tuple[FenceDef, ...], members: np.ndarray, bbox: np.ndarray,
                 cell: float, circles: _Circles) -> _Level:
    """Rasterise the fences ``members`` into one grid, in chunks of bounded size."""
    grid = _make_grid(bbox[members], cell)
    kinds = np.array([defs[i].kind for i in members.tolist()])
    parts: list[_Entries] = []
    items: dict[str, list[np.ndarray]] = {"polygon": [np.empty((0, _POLY_COLS))],
                                          "corridor": [np.empty((0, _SEG_COLS))]}
    for kind in ("polygon", "circle", "corridor"):
        for sel in _build_chunks(defs, members[kinds == kind], bbox, grid):
            if kind == "circle":
                parts.append(_rasterise_circles(sel, bbox, grid, defs, circles))
                continue
            ent, rows = (_rasterise_polygons if kind == "polygon" else
                         _rasterise_corridors)(defs, sel, bbox, grid)
            ent.start += sum(a.shape[0] for a in items[kind])
            items[kind].append(rows)
            parts.append(ent)
    cells = np.concatenate([p.cell for p in parts])
    fence = np.concatenate([p.fence for p in parts])
    order = np.lexsort((fence, cells))
    ncell = grid.nx * grid.ny
    ptr = np.zeros(ncell + 1, dtype=np.int32)
    np.cumsum(np.bincount(cells, minlength=ncell), out=ptr[1:])
    return _Level(grid.x0, grid.y0, 1.0 / grid.cell, grid.nx, grid.ny, ptr,
                  fence[order].astype(np.int32),
                  np.concatenate([p.kind for p in parts])[order].astype(np.int8),
                  np.concatenate([p.start for p in parts])[order].astype(np.int64),
                  np.concatenate([p.count for p in parts])[order].astype(np.int32),
                  np.concatenate([p.left for p in parts])[order],
                  np.concatenate(items["polygon"]), np.concatenate(items["corridor"]))


def _build_chunks(defs: tuple[FenceDef, ...], sel: np.ndarray, bbox: np.ndarray,
                  grid: _Grid) -> list[np.ndarray]:
    """``sel`` split so that each part covers about ``_BUILD_CHUNK`` cells and vertices,
    which bounds the memory the rasteriser needs."""
    if not sel.size:
        return []
    blocks = _Blocks.of(grid, bbox[sel])
    vertices = np.array([sum(len(r) for p in defs[i].polygons for r in p) + len(defs[i].line)
                         for i in sel.tolist()])
    weight = np.cumsum(blocks.w * blocks.h + vertices)
    cuts = np.searchsorted(weight, np.arange(_BUILD_CHUNK, int(weight[-1]), _BUILD_CHUNK))
    return np.split(sel, np.unique(cuts[(cuts > 0) & (cuts < sel.size)]))


def _rasterise_polygons(defs: tuple[FenceDef, ...], sel: np.ndarray, bbox: np.ndarray,
                        grid: _Grid) -> tuple[_Entries, np.ndarray]:
    blocks = _Blocks.of(grid, bbox[sel])
    s, ef = _lines(defs, sel)
    x0, y0, x1, y1 = s.T
    u0, u1, v0, v1 = grid.to_u(x0), grid.to_u(x1), grid.to_v(y0), grid.to_v(y1)
    vlo, vhi = np.minimum(v0, v1), np.maximum(v0, v1)
    ulo, uhi = np.minimum(u0, u1), np.maximum(u0, u1)
    # (edge, row) for every grid row the edge's y-range (widened) touches
    r_first = np.maximum(np.floor(vlo - _MARGIN).astype(np.int64), blocks.r0[ef])
    r_last = np.minimum(np.floor(vhi + _MARGIN).astype(np.int64),
                        blocks.r0[ef] + blocks.h[ef] - 1)
    e, k = _expand(np.maximum(r_last - r_first + 1, 0))
    row = r_first[e] + k
    flat = v0[e] == v1[e]
    with np.errstate(divide="ignore", invalid="ignore"):
        dudv = np.where(flat, 0.0, (u1 - u0)[e] / (v1 - v0)[e])
        ta = np.clip((np.maximum(vlo[e], row - _MARGIN) - v0[e]) / (v1 - v0)[e], 0.0, 1.0)
        tb = np.clip((np.minimum(vhi[e], row + 1 + _MARGIN) - v0[e]) / (v1 - v0)[e], 0.0, 1.0)
    ua = u0[e] + ta * (u1 - u0)[e]
    ub = u0[e] + tb * (u1 - u0)[e]
    slack = _MARGIN + 1e-12 * np.abs(dudv) * (np.abs(vhi[e]) + 1.0)
    lo = np.where(flat, ulo[e], np.maximum(np.minimum(ua, ub) - slack, ulo[e] - _MARGIN))
    hi = np.where(flat, uhi[e], np.minimum(np.maximum(ua, ub) + slack, uhi[e] + _MARGIN))
    f = ef[e]
    cmin, cmax = blocks.c0[f], blocks.c0[f] + blocks.w[f] - 1
    clo = np.clip(np.floor(lo - _MARGIN).astype(np.int64), cmin, cmax)
    chi = np.clip(np.floor(hi + _MARGIN).astype(np.int64), cmin, cmax)
    # boundary cells: every cell an edge's row span touches
    it, kk = _expand(chi - clo + 1)
    boundary = np.zeros(blocks.total, dtype=bool)
    boundary[blocks.local(f[it], clo[it] + kk, row[it])] = True
    # crossing lists: only edges that are not horizontal in degrees can be crossed
    cross = (y0 != y1)[e]
    ce, crow, cf, cclo, cchi = e[cross], row[cross], f[cross], clo[cross], chi[cross]
    lf, lcol, lrow = blocks.cells()
    row_start = blocks.local(lf, blocks.c0[lf], lrow)
    row_end = row_start + blocks.w[lf]
    acc_hi = np.r_[0, np.cumsum(np.bincount(blocks.local(cf, cchi, crow),
                                            minlength=blocks.total))]
    acc_lo = np.r_[0, np.cumsum(np.bincount(blocks.local(cf, cclo, crow),
                                            minlength=blocks.total))]
    cell_id = np.arange(blocks.total)
    n_right = acc_hi[row_end] - acc_hi[cell_id]          # items with chi >= col
    n_left = acc_lo[cell_id + 1] - acc_lo[row_start]     # items with clo <= col
    use_left = n_left < n_right
    n_items = np.where(use_left, n_left, n_right)
    # group items by row (its first local cell), right lists by chi desc, left by clo asc
    grp = blocks.local(cf, blocks.c0[cf], crow)
    by_hi = np.lexsort((-cchi, grp))
    by_lo = np.lexsort((cclo, grp))
    first_hi = np.searchsorted(grp[by_hi], row_start)
    first_lo = np.searchsorted(grp[by_lo], row_start)
    both = np.concatenate([by_hi, by_lo])
    base = np.where(use_left, first_lo + by_hi.size, first_hi)
    edge = ce[both[_ranges(base, n_items)]]
    sign = np.where(np.repeat(use_left, n_items), -1.0, 1.0)
    up = y1[edge] > y0[edge]
    items = np.stack([np.where(up, y0[edge], y1[edge]), np.where(up, y1[edge], y0[edge]),
                      sign * np.where(up, x0[edge], x1[edge]),
                      sign * ((x1[edge] - x0[edge]) / (y1[edge] - y0[edge]))], axis=1)
    start = np.cumsum(n_items) - n_items
    # status of the cells the boundary misses, from their centres
    inner = np.flatnonzero(~boundary)
    cx = grid.x0 + (lcol[inner] + 0.5) * grid.cell
    cy = grid.y0 + (lrow[inner] + 0.5) * grid.cell
    inside = np.zeros(blocks.total, dtype=bool)
    inside[inner] = _poly_hits(cx, cy, use_left[inner], start[inner], n_items[inner], items)
    keep = np.flatnonzero(boundary | inside)
    # keep the item rows of the boundary entries only
    bcount = np.where(boundary, n_items, 0)
    bstart = np.cumsum(bcount) - bcount
    ent = _Entries(lcol[keep] + lrow[keep] * grid.nx, sel[lf[keep]],
                   np.where(boundary[keep], _POLY, _INSIDE), bstart[keep], bcount[keep],
                   use_left[keep] & boundary[keep])
    return ent, items[_ranges(start[boundary], n_items[boundary])]


def _rasterise_circles(sel: np.ndarray, bbox: np.ndarray, grid: _Grid,
                       defs: tuple[FenceDef, ...], circles: _Circles) -> _Entries:
    blocks = _Blocks.of(grid, bbox[sel])
    lf, col, row = blocks.cells()
    f = sel[lf]
    h = 0.5 + 2 * _MARGIN
    cx = grid.x0 + (col + 0.5) * grid.cell
    cy = grid.y0 + (row + 0.5) * grid.cell
    d = _haversine_m(cx, cy, circles.lon[f], circles.lat[f])
    half = np.max([_haversine_m(cx, cy, cx + sx * h * grid.cell, cy + sy * h * grid.cell)
                   for sx in (-1, 1) for sy in (-1, 1)], axis=0) * (1 + 1e-9) + 1e-6
    radius = np.array([defs[i].radius_m for i in sel.tolist()], dtype=np.float64)[lf]
    inside = d + half <= radius * (1 - 1e-9)
    keep = np.flatnonzero(inside | (d - half <= radius * (1 + 1e-9)))
    zeros = np.zeros(keep.size, dtype=np.int64)
    return _Entries(col[keep] + row[keep] * grid.nx, f[keep],
                    np.where(inside[keep], _INSIDE, _CIRCLE), zeros, zeros,
                    np.zeros(keep.size, dtype=bool))


def _rasterise_corridors(defs: tuple[FenceDef, ...], sel: np.ndarray, bbox: np.ndarray,
                         grid: _Grid) -> tuple[_Entries, np.ndarray]:
    blocks = _Blocks.of(grid, bbox[sel])
    s, sf = _lines(defs, sel)
    hw = np.array([defs[i].width_m or 0.0 for i in sel.tolist()])[sf] / 2.0
    lon0, lat0, lon1, lat1 = s.T
    kx = np.cos(np.radians((lat0 + lat1) / 2.0)) * M_PER_DEG
    ux, uy = (lon1 - lon0) * kx, (lat1 - lat0) * M_PER_DEG
    len2 = ux * ux + uy * uy
    inv_len2 = np.divide(1.0, len2, out=np.zeros_like(len2), where=len2 > 0)
    u0, u1, v0, v1 = grid.to_u(lon0), grid.to_u(lon1), grid.to_v(lat0), grid.to_v(lat1)
    hu = hw / kx / grid.cell + _MARGIN       # half-width in grid columns / rows
    hv = hw / M_PER_DEG / grid.cell + _MARGIN
    vlo, vhi = np.minimum(v0, v1), np.maximum(v0, v1)
    r_first = np.maximum(np.floor(vlo - hv).astype(np.int64), blocks.r0[sf])
    r_last = np.minimum(np.floor(vhi + hv).astype(np.int64), blocks.r0[sf] + blocks.h[sf] - 1)
    e, k = _expand(np.maximum(r_last - r_first + 1, 0))
    row = r_first[e] + k
    dv = (v1 - v0)[e]
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = np.clip((row - hv[e] - v0[e]) / dv, 0.0, 1.0)
        tb = np.clip((row + 1 + hv[e] - v0[e]) / dv, 0.0, 1.0)
    flat = dv == 0
    ta, tb = np.where(flat, 0.0, ta), np.where(flat, 1.0, tb)
    ua, ub = u0[e] + ta * (u1 - u0)[e], u0[e] + tb * (u1 - u0)[e]
    with np.errstate(divide="ignore", invalid="ignore"):
        slack = hu[e] + np.where(flat, 0.0, 1e-12 * np.abs((u1 - u0)[e] / dv)
                                 * (np.abs(v1[e]) + hv[e] + 1.0))
    f = sf[e]
    cmin, cmax = blocks.c0[f], blocks.c0[f] + blocks.w[f] - 1
    clo = np.clip(np.floor(np.minimum(ua, ub) - slack).astype(np.int64), cmin, cmax)
    chi = np.clip(np.floor(np.maximum(ua, ub) + slack).astype(np.int64), cmin, cmax)
    it, kk = _expand(chi - clo + 1)
    seg = e[it]
    col, crow = clo[it] + kk, row[it]
    # distance from each cell centre to the segment, against the cell's half-diagonal
    cx = grid.x0 + (col + 0.5) * grid.cell
    cy = grid.y0 + (crow + 0.5) * grid.cell
    dx, dy = (cx - lon0[seg]) * kx[seg], (cy - lat0[seg]) * M_PER_DEG
    t = np.clip((dx * ux[seg] + dy * uy[seg]) * inv_len2[seg], 0.0, 1.0)
    dist = np.hypot(dx - t * ux[seg], dy - t * uy[seg])
    h = (0.5 + 2 * _MARGIN) * grid.cell
    diag = np.hypot(h * kx[seg], h * M_PER_DEG) * (1 + 1e-9)
    full = dist + diag <= hw[seg] * (1 - 1e-9)
    near = dist - diag <= hw[seg] * (1 + 1e-9)
    local = blocks.local(sf[seg], col, crow)
    inside = np.zeros(blocks.total, dtype=bool)
    inside[local[full]] = True
    rel = near & ~inside[local]
    order = np.argsort(local[rel], kind="stable")
    rseg, rloc = seg[rel][order], local[rel][order]
    count = np.bincount(rloc, minlength=blocks.total)
    start = np.cumsum(count) - count
    lf, lcol, lrow = blocks.cells()
    keep = np.flatnonzero(inside | (count > 0))
    ent = _Entries(lcol[keep] + lrow[keep] * grid.nx, sel[lf[keep]],
                   np.where(inside[keep], _INSIDE, _CORRIDOR), start[keep],
                   np.where(inside[keep], 0, count[keep]), np.zeros(keep.size, dtype=bool))
    items = np.stack([lon0, lat0, kx, ux, uy, inv_len2, hw * hw], axis=1)
    return ent, items[rseg]
