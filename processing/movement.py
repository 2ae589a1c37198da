"""Movement checks on position batches: plausibility flags, stop/move events, offline devices.

``check_movement`` takes a position batch (every ``POSITION_COLUMNS`` column plus
``device``), rows of many devices in any order, and returns the rows' flags with the new
``FixFlag`` bits, the distance and speed from each device's previous valid fix, and the
anomalies. Per-device state lives in ``MovementState`` between batches. Within a batch the
rows of a device are taken in time order (a stable sort), so a fix that arrives late within
one batch is not out of order; TIME_BACKWARDS is a fix older than one from an earlier batch.

Anomaly kinds (stream ``nmea`` unless noted) and their scores:

* ``jump``: implied speed from the reference fix / the device kind's speed bound (> 1).
  The reference is the last plausible fix: a JUMP fix never becomes the reference, so an
  outlier is judged against the fix before it and the fix after it is not. A device that
  truly relocates (a ferry crossing with the receiver off) recovers after
  ``relocate_after`` consecutive jumps that are each consistent with the one before: the
  last of them is accepted and becomes the reference (the earlier ones stay flagged).
* ``time_backwards``: seconds the fix is older than the device's latest fix.
* ``null_island``: 1.0; once per episode (the device's fixes at 0,0 in a row).
* ``clock_future``: seconds ahead of arrival / ``future_tolerance_s``; once per episode.
* ``poor_fix``: HDOP / ``max_hdop`` (at least 1 for fix quality 0); once per episode.
* ``stopped`` / ``moving``: events, score 0: the speed (reported, else computed) stayed
  below ``stop_speed_mps`` for ``stop_min_s`` / at or above ``move_speed_mps`` for
  ``move_min_s``. The first state a device shows after start is taken silently.
* ``offline`` (stream ``status``, from ``check_offline``): silent seconds /
  ``offline_silence_s``, or 1.0 when the status topic said offline; once per silence.

Duplicates (same time and position as one of the device's latest fixes, which is what
an MQTT QoS 1 redelivery or a store-and-forward resend produces) get the DUPLICATE flag
only: they say nothing about the device, and the idempotent write keeps one row anyway.
A duplicate is not TIME_BACKWARDS and takes no part in the other checks.

The module also holds the array kernels the other detectors share (grouped scans over
rows sorted by group).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from beiflow.processing.config import DeviceKind, MovementConfig
from beiflow.processing.events import AnomalyBatch
from beiflow.schemas.columns import FixFlag

#: Missing time in state arrays.
NO_TIME = np.iinfo(np.int64).min
EARTH_RADIUS_M = 6_371_008.8
US = 1_000_000
DEFAULT_CONFIG = MovementConfig()

# ---------------------------------------------------------------- shared array kernels


def haversine_m(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray,
                lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance in metres (NaN where any coordinate is NaN)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dlat = p2 - p1
    dlon = np.radians(lon2) - np.radians(lon1)
    a = np.sin(dlat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


def grown(arr: np.ndarray, n: int, fill: object) -> np.ndarray:
    """``arr`` with room for at least ``n`` entries (capacity doubles; new ones ``fill``)."""
    have = arr.shape[0]
    if n <= have:
        return arr
    size = max(n, 2 * have, 64)
    extra = np.full((size - have, *arr.shape[1:]), fill, dtype=arr.dtype)
    return np.concatenate([arr, extra])


def group_starts(keys: np.ndarray) -> np.ndarray:
    """True at the first row of each run of equal ``keys`` (rows sorted by key)."""
    first = np.empty(keys.size, dtype=bool)
    if keys.size:
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
    return first


def last_of_group(first: np.ndarray) -> np.ndarray:
    """True at the last row of each group, given its first rows."""
    last = np.empty_like(first)
    if first.size:
        last[:-1] = first[1:]
        last[-1] = True
    return last


def prev_in_group(values: np.ndarray, first: np.ndarray, carry: np.ndarray) -> np.ndarray:
    """Each row's previous value in its group; ``carry`` (per row) at the first rows."""
    out = np.empty(values.size, dtype=np.result_type(values, carry))
    if values.size:
        out[1:] = values[:-1]
        starts = np.flatnonzero(first)
        out[starts] = carry[starts]
    return out


def ffill_index(marker: np.ndarray) -> np.ndarray:
    """Index of the last marked row at or before each row (row 0 counts as marked)."""
    idx = np.where(marker, np.arange(marker.size), 0)
    return np.maximum.accumulate(idx) if idx.size else idx


def rank_in_group(first: np.ndarray) -> np.ndarray:
    """0-based position of each row within its group."""
    return np.arange(first.size) - ffill_index(first)


def affine_scan(a: np.ndarray, b: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``y[i] = a[i] * y[i-1] + b[i]`` within groups, as ``y[i] = A[i] * y0 + B[i]``.

    ``y0`` is the value before a group's first row; ``rank`` is the row's position in its
    group. A Hillis-Steele scan: ceil(log2(longest group)) vectorised passes, so a batch
    dominated by one device costs a few passes, not one per row. Only products of the
    ``a`` and weighted sums of the ``b`` are formed (stable for 0 <= a <= 1).
    """
    big_a, big_b = a.astype(np.float64), b.astype(np.float64)
    step = 1
    longest = int(rank.max()) if rank.size else 0
    while step <= longest:
        idx = np.flatnonzero(rank >= step)
        pa, pb = big_a[idx - step], big_b[idx - step]
        big_b[idx] += big_a[idx] * pb
        big_a[idx] *= pa
        step *= 2
    return big_a, big_b


def count_before(mask: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Number of ``mask`` rows before each row within its group."""
    m = mask.astype(np.int64)
    excl = np.cumsum(m) - m
    return excl - excl[ffill_index(first)]


def ewma_scan(x: np.ndarray, update: np.ndarray, first: np.ndarray, alpha: float | np.ndarray,
              count0: np.ndarray, mean0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exponentially weighted mean per group over the ``update`` rows.

    ``count0``/``mean0`` (per row, read at group starts) carry the state; the first sample
    ever initialises the mean (no bias towards 0). Returns, per row, the number of samples
    and the mean before the row, and the mean after it (NaN while there is no sample).
    """
    before_n = count0 + count_before(update, first)
    init = before_n == 0
    a = np.where(update, np.where(init, 0.0, 1.0 - alpha), 1.0)
    b = np.where(update, np.where(init, x, alpha * x), 0.0)
    big_a, big_b = affine_scan(a, b, rank_in_group(first))
    y0 = np.where(np.isnan(mean0), 0.0, mean0)
    after = np.where(before_n + update > 0, big_a * y0 + big_b, np.nan)
    return before_n, prev_in_group(after, first, mean0), after


def run_starts(cond: np.ndarray, first: np.ndarray, carry: np.ndarray) -> np.ndarray:
    """Rows where ``cond`` holds and did not on the group's previous row (``carry`` first)."""
    return cond & ~prev_in_group(cond, first, carry)


def latch(set_: np.ndarray, reset: np.ndarray, first: np.ndarray,
          carry: np.ndarray) -> np.ndarray:
    """Set/reset latch per group: on from a ``set_`` row, off from a ``reset`` row
    (``set_`` wins), else the previous row's state (``carry`` per row at group starts)."""
    marker = set_ | reset | first
    value = np.where(set_, True, np.where(reset, False, carry))
    return value[ffill_index(marker)]


def iso_times(us: np.ndarray) -> np.ndarray:
    """ISO 8601 UTC text of microsecond times (vectorised)."""
    return np.char.add(np.datetime_as_string(us.astype("datetime64[us]"), unit="ms"), "Z")


def details(**columns: np.ndarray) -> np.ndarray:
    """JSON object text per row from equal-length columns (NaN and infinities become
    null: JSON has no such numbers and the database's jsonb refuses them)."""
    names = list(columns)
    lists = []
    for arr in columns.values():
        values = arr.tolist()
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            values = [v if math.isfinite(v) else None for v in values]
        lists.append(values)
    out = np.empty(len(lists[0]) if lists else 0, dtype=object)
    out[:] = [json.dumps(dict(zip(names, row, strict=True))) for row in zip(*lists, strict=True)]
    return out


def anomaly_rows(time: np.ndarray, device: np.ndarray, stream: str, kind: str | np.ndarray,
                 score: np.ndarray, detail: np.ndarray) -> AnomalyBatch:
    """An ``AnomalyBatch`` from row arrays (``kind`` one label or one per row)."""
    n = time.size
    kinds = np.full(n, kind, dtype=object) if isinstance(kind, str) else kind.astype(object)
    return AnomalyBatch(time.astype(np.int64), device.astype(np.int32),
                        np.full(n, stream, dtype=object), kinds,
                        np.asarray(score, dtype=np.float64), detail)


# ---------------------------------------------------------------- movement state

#: Recent fixes remembered per device to recognise redelivered duplicates.
RECENT = 4
_NONE, _MOVE, _STOP = 0, 1, 2
_ACTIVE_BITS = (int(FixFlag.NULL_ISLAND), int(FixFlag.CLOCK_FUTURE), int(FixFlag.POOR_QUALITY))


#: (name, dtype, fill, ring width or 0) of each per-device state array.
_STATE_FIELDS: tuple[tuple[str, type, object, int], ...] = (
    ("last_time", np.int64, NO_TIME, 0), ("ref_time", np.int64, NO_TIME, 0),
    ("ref_lat", np.float64, np.nan, 0), ("ref_lon", np.float64, np.nan, 0),
    ("pend_n", np.int32, 0, 0), ("pend_time", np.int64, NO_TIME, 0),
    ("pend_lat", np.float64, np.nan, 0), ("pend_lon", np.float64, np.nan, 0),
    ("recent_time", np.int64, NO_TIME, RECENT), ("recent_lat", np.float64, np.nan, RECENT),
    ("recent_lon", np.float64, np.nan, RECENT), ("recent_head", np.int32, 0, 0),
    ("active", np.int32, 0, 0), ("motion", np.int8, _NONE, 0), ("cand", np.int8, _NONE, 0),
    ("cand_since", np.int64, NO_TIME, 0), ("last_seen", np.int64, NO_TIME, 0),
    ("offline_sent", np.bool_, False, 0),
)


class MovementState:
    """Per-device movement state in arrays indexed by dense device index, grown on demand.

    ``ref_*`` is the last plausible fix (the reference of the jump check), ``pend_*`` the
    latest run of consecutive jumps, ``recent_*`` a ring of the latest fixes (duplicates),
    ``active`` the FixFlag bits of the episodes in progress, ``motion``/``cand`` the
    confirmed and candidate stop/move state, ``last_seen`` the latest arrival time.
    """

    __slots__ = tuple(f[0] for f in _STATE_FIELDS)
    last_time: np.ndarray
    ref_time: np.ndarray
    ref_lat: np.ndarray
    ref_lon: np.ndarray
    pend_n: np.ndarray
    pend_time: np.ndarray
    pend_lat: np.ndarray
    pend_lon: np.ndarray
    recent_time: np.ndarray
    recent_lat: np.ndarray
    recent_lon: np.ndarray
    recent_head: np.ndarray
    active: np.ndarray
    motion: np.ndarray
    cand: np.ndarray
    cand_since: np.ndarray
    last_seen: np.ndarray
    offline_sent: np.ndarray

    def __init__(self) -> None:
        for name, dtype, _, width in _STATE_FIELDS:
            setattr(self, name, np.empty((0, width) if width else 0, dtype=dtype))

    def __len__(self) -> int:
        return int(self.last_time.size)

    def reserve(self, devices: int) -> None:
        """Make room for device indexes below ``devices``."""
        if devices > len(self):
            for name, _, fill, _ in _STATE_FIELDS:
                setattr(self, name, grown(getattr(self, name), devices, fill))

    def touch(self, device: np.ndarray, received_at: np.ndarray) -> None:
        """Record traffic of other streams (sensor, RFID, status) as signs of life."""
        if device.size:
            self.reserve(int(device.max()) + 1)
            np.maximum.at(self.last_seen, device, received_at)
            self.offline_sent[device] = False


@dataclass(frozen=True, slots=True)
class MovementResult:
    """Per input row: flags (input flags OR the new bits), distance and speed from the
    device's previous valid fix (NaN when none); plus the anomalies of the batch."""

    flags: np.ndarray
    distance_m: np.ndarray
    speed_calc_mps: np.ndarray
    anomalies: AnomalyBatch


@dataclass(slots=True)
class _Sorted:
    """The batch sorted by (device, time)."""

    order: np.ndarray
    dev: np.ndarray
    t: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    first: np.ndarray


def check_movement(pos: dict[str, np.ndarray], state: MovementState, *,
                   device_kind: np.ndarray | None = None,
                   config: MovementConfig | None = None) -> MovementResult:
    """Flag implausible fixes, detect stop/move transitions, update ``state``.

    ``device_kind`` holds a ``DeviceKind`` code per dense device index (None: all of the
    default kind). The input is not modified.
    """
    cfg = config or DEFAULT_CONFIG
    n = pos["time"].size
    if n == 0:
        empty = np.empty(0, np.float64)
        return MovementResult(pos["flags"].copy(), empty, empty.copy(), AnomalyBatch.empty())
    device = pos["device"].astype(np.intp)
    state.reserve(int(device.max()) + 1)
    order = np.lexsort((pos["time"], device))
    dev = device[order]
    s = _Sorted(order, dev, pos["time"][order], pos["lat"][order], pos["lon"][order],
                group_starts(dev))
    flags = pos["flags"][order].astype(np.int32)
    received = pos["received_at"][order]

    dup = _duplicates(s, state)
    backwards = ~dup & (s.t < state.last_time[dev])
    has_xy = np.isfinite(s.lat) & np.isfinite(s.lon)
    null = has_xy & (np.abs(s.lat) < cfg.null_island_deg) & (np.abs(s.lon) < cfg.null_island_deg)
    ahead_s = (s.t - received) / US
    future = ((flags & int(FixFlag.CLOCK_FUTURE)) != 0) | (ahead_s > cfg.future_tolerance_s)
    quality = pos["fix_quality"][order]
    hdop = pos["hdop"][order]
    poor = (quality == 0) | (hdop > cfg.max_hdop)
    flags |= np.where(dup, int(FixFlag.DUPLICATE), 0)
    flags |= np.where(backwards, int(FixFlag.TIME_BACKWARDS), 0)
    flags |= np.where(null, int(FixFlag.NULL_ISLAND), 0)
    flags |= np.where(future, int(FixFlag.CLOCK_FUTURE), 0)
    flags |= np.where(poor, int(FixFlag.POOR_QUALITY), 0)

    chain = np.flatnonzero(has_xy & ~null & ~dup & ~backwards
                           & ((flags & int(FixFlag.NO_FIX)) == 0))
    jumps = _jumps(s, chain, _bounds(dev[chain], device_kind, cfg), state, cfg)
    flags[chain[jumps.jump]] |= int(FixFlag.JUMP)
    distance = np.full(n, np.nan)
    speed = np.full(n, np.nan)
    distance[chain] = jumps.dist
    speed[chain] = jumps.speed

    parts = [_jump_anomalies(s, chain, jumps)]
    timeline = ~dup & ~backwards
    parts.append(_episodes(s, timeline, null, future, poor, ahead_s, hdop, quality, state, cfg))
    if backwards.any():
        idx = np.flatnonzero(backwards)
        behind = (state.last_time[dev[idx]] - s.t[idx]) / US
        parts.append(anomaly_rows(s.t[idx], dev[idx], "nmea", "time_backwards", behind,
                                  details(latest=iso_times(state.last_time[dev[idx]]))))
    accepted = chain[~jumps.jump]
    reported = pos["speed_mps"][order]
    parts.append(_motion(s, accepted, np.where(np.isfinite(reported), reported, speed),
                         state, cfg))
    _remember(s, timeline, received, state)

    out_flags = np.empty(n, np.int32)
    out_flags[order] = flags
    out_dist = np.empty(n)
    out_dist[order] = distance
    out_speed = np.empty(n)
    out_speed[order] = speed
    return MovementResult(out_flags, out_dist, out_speed, AnomalyBatch.concat(parts))


def _bounds(dev: np.ndarray, device_kind: np.ndarray | None, cfg: MovementConfig) -> np.ndarray:
    """Speed bound (m/s) per row from its device's kind code (default when unknown)."""
    table = np.append(cfg.speed_bounds_mps(), cfg.default_max_speed_kmh / 3.6)
    codes = np.full(dev.size, len(DeviceKind))
    if device_kind is not None:
        kinds = np.asarray(device_kind)
        inside = dev < kinds.size
        known = kinds[dev[inside]]
        codes[inside] = np.where((known >= 0) & (known < len(DeviceKind)), known, len(DeviceKind))
    return table[codes]


def _same_xy(lat: np.ndarray, lon: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    same_lat = (lat == lat2) | (np.isnan(lat) & np.isnan(lat2))
    return same_lat & ((lon == lon2) | (np.isnan(lon) & np.isnan(lon2)))


def _duplicates(s: _Sorted, state: MovementState) -> np.ndarray:
    """Same time and position as the previous row or one of the device's recent fixes."""
    dup = np.zeros(s.t.size, dtype=bool)
    inner = ~s.first
    inner[0] = False
    i = np.flatnonzero(inner)
    dup[i] = (s.t[i] == s.t[i - 1]) & _same_xy(s.lat[i], s.lon[i], s.lat[i - 1], s.lon[i - 1])
    rt = state.recent_time[s.dev]
    hit = (rt == s.t[:, None]) & _same_xy(state.recent_lat[s.dev], state.recent_lon[s.dev],
                                         s.lat[:, None], s.lon[:, None])
    return dup | hit.any(axis=1)


def _remember(s: _Sorted, timeline: np.ndarray, received: np.ndarray,
              state: MovementState) -> None:
    """Update last time, recent-fix ring, last seen and the offline episode."""
    starts = np.flatnonzero(s.first)
    devs = s.dev[starts]
    state.last_seen[devs] = np.maximum(state.last_seen[devs],
                                       np.maximum.reduceat(received, starts))
    state.offline_sent[devs] = False
    idx = np.flatnonzero(timeline)
    if not idx.size:
        return
    d = s.dev[idx]
    first = group_starts(d)
    last = last_of_group(first)
    heads = d[last]
    state.last_time[heads] = np.maximum(state.last_time[heads], s.t[idx[last]])
    # ring of the latest RECENT fixes: written oldest first from the head onwards
    gid = np.cumsum(first) - 1
    from_end = np.flatnonzero(last)[gid] - np.arange(d.size)
    count = np.minimum(np.bincount(gid), RECENT)
    keep = np.flatnonzero(from_end < RECENT)
    dk = d[keep]
    slot = (state.recent_head[dk] + count[gid[keep]] - 1 - from_end[keep]) % RECENT
    state.recent_time[dk, slot] = s.t[idx[keep]]
    state.recent_lat[dk, slot] = s.lat[idx[keep]]
    state.recent_lon[dk, slot] = s.lon[idx[keep]]
    state.recent_head[heads] = (state.recent_head[heads] + count) % RECENT


@dataclass(slots=True)
class _Jumps:
    jump: np.ndarray      # per chain row
    dist: np.ndarray      # from the reference / previous accepted fix
    speed: np.ndarray     # dist / dt, NaN when dt == 0
    ratio: np.ndarray     # implied speed / bound


def _jumps(s: _Sorted, chain: np.ndarray, bound: np.ndarray, state: MovementState,
           cfg: MovementConfig) -> _Jumps:
    """Resolve the jump chain as a sequential scan would, in rounds over devices.

    Every fix is first tested against its predecessor (the device's reference for its
    first fix). Up to a device's first failing test all fixes are accepted; that fix is
    settled (JUMP, or the relocating fix). Only the fix after a JUMP changes predecessor
    (to the reference), so each round re-tests one fix per device and skips ahead to the
    next failing pairwise test. Rounds = 1 + the most jumps of one device in the batch.
    """
    m = chain.size
    cd, ct, clat, clon = s.dev[chain], s.t[chain], s.lat[chain], s.lon[chain]
    res = _Jumps(np.zeros(m, bool), np.full(m, np.nan), np.full(m, np.nan), np.full(m, np.nan))
    if not m:
        return res
    first = group_starts(cd)
    prev = np.maximum(np.arange(m) - 1, 0)
    pt = np.where(first, state.ref_time[cd], ct[prev])
    no_ref = first & (state.ref_time[cd] == NO_TIME)
    res.dist = haversine_m(np.where(first, state.ref_lat[cd], clat[prev]),
                           np.where(first, state.ref_lon[cd], clon[prev]), clat, clon)
    dt = np.where(no_ref, 0, ct - pt) / US
    ok = _plausible(res.dist, dt, bound, cfg) | no_ref
    bad = np.flatnonzero(~ok)
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], m)
    # devices without a failing test: everything accepted
    has_bad = np.zeros(starts.size, bool)
    has_bad[np.searchsorted(starts, bad, side="right") - 1] = True
    _accept(cd, ct, clat, clon, ends[~has_bad] - 1, state)
    cur, end = starts[has_bad], ends[has_bad]
    over = np.zeros(cur.size, bool)     # the fix at ``cur`` follows a JUMP: test vs reference
    while cur.size:
        d = cd[cur]
        o = np.flatnonzero(over)
        if o.size:
            c, do = cur[o], d[o]
            res.dist[c] = haversine_m(state.ref_lat[do], state.ref_lon[do], clat[c], clon[c])
            dt[c] = (ct[c] - state.ref_time[do]) / US
            ok[c] = _plausible(res.dist[c], dt[c], bound[c], cfg)
        good = ok[cur]
        nxt = np.searchsorted(bad, cur, side="right")
        nb = np.where(nxt < bad.size, bad[np.minimum(nxt, bad.size - 1)], m)
        f = np.where(good, np.minimum(nb, end), cur)
        acc = good & (f > cur)
        _accept(cd, ct, clat, clon, f[acc] - 1, state)
        live = f < end
        f, end = f[live], end[live]
        jump = _settle(f, cd, ct, clat, clon, res.dist, dt, bound, res, state, cfg)
        cur, over = f + 1, jump
        more = cur < end
        cur, end, over = cur[more], end[more], over[more]
    with np.errstate(divide="ignore", invalid="ignore"):
        res.speed = np.where(dt > 0, res.dist / dt, np.nan)
    return res


def _accept(cd: np.ndarray, ct: np.ndarray, clat: np.ndarray, clon: np.ndarray,
            rows: np.ndarray, state: MovementState) -> None:
    """The fixes at ``rows`` (one per device) are accepted: the new references."""
    d = cd[rows]
    state.ref_time[d], state.ref_lat[d], state.ref_lon[d] = ct[rows], clat[rows], clon[rows]
    state.pend_n[d] = 0


def _plausible(dist: np.ndarray, dt: np.ndarray, bound: np.ndarray,
               cfg: MovementConfig) -> np.ndarray:
    return dist <= np.maximum(cfg.min_jump_m, bound * dt)


def _settle(rows: np.ndarray, cd: np.ndarray, ct: np.ndarray, clat: np.ndarray,
            clon: np.ndarray, dist: np.ndarray, dt: np.ndarray, bound: np.ndarray,
            res: _Jumps, state: MovementState, cfg: MovementConfig) -> np.ndarray:
    """Decide each device's failing fix: JUMP (returned True), or the relocating fix."""
    d = cd[rows]
    pend = state.pend_n[d]
    pdist = haversine_m(state.pend_lat[d], state.pend_lon[d], clat[rows], clon[rows])
    pdt = np.where(pend > 0, ct[rows] - state.pend_time[d], 0) / US
    consistent = (pend > 0) & _plausible(pdist, pdt, bound[rows], cfg)
    run = np.where(consistent, pend + 1, 1)
    relocate = run >= cfg.relocate_after
    res.jump[rows] = ~relocate
    res.ratio[rows] = dist[rows] / np.maximum(dt[rows], 1e-3) / bound[rows]
    state.pend_n[d] = np.where(relocate, 0, run)
    state.pend_time[d], state.pend_lat[d], state.pend_lon[d] = ct[rows], clat[rows], clon[rows]
    _accept(cd, ct, clat, clon, rows[relocate], state)
    return ~relocate


def _jump_anomalies(s: _Sorted, chain: np.ndarray, j: _Jumps) -> AnomalyBatch:
    idx = np.flatnonzero(j.jump)
    if not idx.size:
        return AnomalyBatch.empty()
    rows = chain[idx]
    return anomaly_rows(s.t[rows], s.dev[rows], "nmea", "jump", j.ratio[idx],
                        details(distance_m=np.round(j.dist[idx], 1),
                                speed_kmh=np.round(j.speed[idx] * 3.6, 1),
                                lat=s.lat[rows], lon=s.lon[rows]))


def _episodes(s: _Sorted, timeline: np.ndarray, null: np.ndarray, future: np.ndarray,
              poor: np.ndarray, ahead_s: np.ndarray, hdop: np.ndarray, quality: np.ndarray,
              state: MovementState, cfg: MovementConfig) -> AnomalyBatch:
    """Once-per-episode anomalies over the device's timeline (no duplicates, no late fixes)."""
    idx = np.flatnonzero(timeline)
    if not idx.size:
        return AnomalyBatch.empty()
    d, t = s.dev[idx], s.t[idx]
    first = group_starts(d)
    last = last_of_group(first)
    active = state.active[d]
    parts = []
    for bit, cond in zip(_ACTIVE_BITS, (null[idx], future[idx], poor[idx]), strict=True):
        was = (active & bit) != 0
        start = np.flatnonzero(run_starts(cond, first, was))
        state.active[d[last]] = np.where(cond[last], state.active[d[last]] | bit,
                                         state.active[d[last]] & ~bit)
        if not start.size:
            continue
        rows, sd, st = idx[start], d[start], t[start]
        if bit == int(FixFlag.NULL_ISLAND):
            parts.append(anomaly_rows(st, sd, "nmea", "null_island", np.ones(start.size),
                                      details(lat=s.lat[rows], lon=s.lon[rows])))
        elif bit == int(FixFlag.CLOCK_FUTURE):
            ahead = ahead_s[rows]
            parts.append(anomaly_rows(st, sd, "nmea", "clock_future",
                                      np.maximum(ahead / cfg.future_tolerance_s, 1.0),
                                      details(ahead_s=np.round(ahead, 3))))
        else:
            h = hdop[rows]
            ratio = np.where(np.isfinite(h), h / cfg.max_hdop, 1.0)
            score = np.where(quality[rows] == 0, np.maximum(ratio, 1.0), ratio)
            parts.append(anomaly_rows(st, sd, "nmea", "poor_fix", score,
                                      details(hdop=h, fix_quality=quality[rows].astype(np.int64))))
    return AnomalyBatch.concat(parts)


def _motion(s: _Sorted, rows: np.ndarray, speed: np.ndarray, state: MovementState,
            cfg: MovementConfig) -> AnomalyBatch:
    """Stop/move state machine with minimum durations over the accepted fixes."""
    if not rows.size:
        return AnomalyBatch.empty()
    d, t, sp = s.dev[rows], s.t[rows], speed[rows]
    first = group_starts(d)
    c = np.where(sp < cfg.stop_speed_mps, _STOP,
                 np.where(sp >= cfg.move_speed_mps, _MOVE, _NONE)).astype(np.int8)
    new_run = c != prev_in_group(c, first, state.cand[d])
    since = np.where(new_run, t, state.cand_since[d])[ffill_index(new_run | first)]
    need = np.where(c == _STOP, cfg.stop_min_s, cfg.move_min_s) * US
    confirmed = (c != _NONE) & (t - since >= need)
    after = np.where(confirmed, c, state.motion[d])[ffill_index(confirmed | first)]
    before = prev_in_group(after, first, state.motion[d])
    event = np.flatnonzero(confirmed & (c != before) & (before != _NONE))
    last = last_of_group(first)
    dl = d[last]
    state.cand[dl], state.cand_since[dl], state.motion[dl] = c[last], since[last], after[last]
    if not event.size:
        return AnomalyBatch.empty()
    kinds = np.where(c[event] == _STOP, "stopped", "moving")
    return anomaly_rows(t[event], d[event], "nmea", kinds, np.zeros(event.size),
                        details(since=iso_times(since[event]), speed_mps=sp[event]))


def check_offline(state: MovementState, now_us: int, *, silence_s: float | None = None,
                  status_offline: np.ndarray | None = None) -> AnomalyBatch:
    """``offline`` anomalies, once per silence, for devices silent longer than ``silence_s``
    (default ``MovementConfig().offline_silence_s``) and for those the status topic reports
    offline (``status_offline``: device indexes or a boolean mask). Devices never seen are
    not reported silent. A new fix (or ``MovementState.touch``) ends the episode."""
    silence = DEFAULT_CONFIG.offline_silence_s if silence_s is None else silence_s
    if status_offline is None:
        said = np.empty(0, np.intp)
    else:
        arr = np.asarray(status_offline)
        said = np.flatnonzero(arr) if arr.dtype == bool else arr.astype(np.intp)
    if said.size:
        state.reserve(int(said.max()) + 1)
    quiet = np.zeros(len(state), dtype=bool)
    quiet[said] = True
    seen = state.last_seen != NO_TIME
    silent_s = np.where(seen, (now_us - state.last_seen) / US, np.nan)
    by_silence = seen & (silent_s > silence)
    report = np.flatnonzero((by_silence | quiet) & ~state.offline_sent)
    if not report.size:
        return AnomalyBatch.empty()
    state.offline_sent[report] = True
    from_status = quiet[report]
    score = np.where(from_status & ~by_silence[report], 1.0, silent_s[report] / silence)
    reason = np.where(from_status, "status", "silence")
    return anomaly_rows(np.full(report.size, now_us), report, "status", "offline", score,
                        details(reason=reason, silent_s=np.round(silent_s[report], 3)))
