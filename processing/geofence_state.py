"""Geofence events (enter, exit, dwell, overspeed) with membership kept across batches.

Per batch, usable fixes are sorted by (device, time) and tested against the fence set;
for each (device, fence) the fixes form alternating *runs* inside and outside. With
debounce ``D`` a run on the other side of the confirmed membership flips it when it has at
least ``D`` consecutive fixes (counting a run left pending at the end of the previous
batch); the event carries the time of the run's first fix. Shorter runs are jitter.

* Fixes flagged NO_FIX, JUMP, NULL_ISLAND, POOR_QUALITY or TIME_BACKWARDS
  (``IGNORED_FLAGS``; the ``ignore_flags`` argument changes the set), or without
  coordinates, are skipped: they neither count for a run nor break one.
* Out-of-order fixes: a fix whose time is <= the last time already processed for its
  device (in an earlier batch, or an equal time within the batch) is skipped for
  membership. Within one batch rows are sorted first, so arrival order does not matter.
* A stay begins at the entering run's first fix (the ``enter`` time) but counts for
  dwell and overspeed only from the fix that confirms it (the ``debounce``-th), so the
  result does not depend on how fixes are split into batches.
* ``dwell``: once per stay, at the first fix observed inside (while the membership is
  confirmed) at least ``dwell_s`` after the stay began.
* ``overspeed``: fixes observed inside during a stay in a fence with ``speed_limit_kmh``;
  one event when speed first exceeds the limit, re-armed by a fix at or under the limit
  or by leaving the fence. Fixes without speed neither trigger nor re-arm.
* ``exit`` detail gives the stay's length (``inside_s``); ``dwell`` the fence's
  ``dwell_s``; ``overspeed`` the speed and the limit (km/h).

State is sparse: one row per (device, fence) that is inside or has a pending run, keyed by
``device << 32 | fence`` in sorted int64 arrays; plus the last processed time per device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from beiflow.processing.events import GeofenceEventBatch
from beiflow.processing.geofence_index import FenceSet
from beiflow.schemas.columns import FixFlag

#: Fixes with any of these flags are ignored for membership.
IGNORED_FLAGS = (FixFlag.NO_FIX | FixFlag.JUMP | FixFlag.NULL_ISLAND | FixFlag.POOR_QUALITY
                 | FixFlag.TIME_BACKWARDS)
#: Missing time (int64 us).
NO_TIME = np.iinfo(np.int64).min
_KIND_ORDER = {"enter": 0, "dwell": 1, "overspeed": 2, "exit": 3}
_LOW32 = np.int64(0xFFFFFFFF)


class GeofenceState:
    """Membership of devices in fences, carried from batch to batch.

    The attributes are parallel arrays sorted by ``key``; treat them as read-only and use
    :meth:`snapshot` / :meth:`restore` to persist or rebuild the state.
    """

    __slots__ = ("_dev_last", "dwell", "inside", "key", "over", "pending", "pending_since",
                 "since")

    def __init__(self) -> None:
        self.key = np.empty(0, np.int64)            # device << 32 | fence, sorted
        self.inside = np.empty(0, bool)              # confirmed membership
        self.since = np.empty(0, np.int64)           # stay start (NO_TIME when outside)
        self.dwell = np.empty(0, bool)               # dwell emitted for the stay
        self.over = np.empty(0, bool)                # overspeed episode active
        self.pending = np.empty(0, np.int32)         # fixes on the other side, not yet D
        self.pending_since = np.empty(0, np.int64)   # first of those fixes
        self._dev_last = np.empty(0, np.int64)       # last processed time per device

    def __len__(self) -> int:
        return int(self.key.size)

    def last_time_us(self, device: np.ndarray) -> np.ndarray:
        """Last processed fix time per device (NO_TIME when none)."""
        device = np.asarray(device, dtype=np.int64)
        out = np.full(device.shape, NO_TIME, dtype=np.int64)
        known = device < self._dev_last.size
        out[known] = self._dev_last[device[known]]
        return out

    def snapshot(self) -> dict[str, np.ndarray]:
        """Every tracked (device, fence) as arrays; ``restore(**snapshot())`` round-trips.

        ``last_time_us`` is the device's last processed time (devices without a tracked
        pair are not included).
        """
        device = (self.key >> 32).astype(np.int32)
        return {"device": device, "fence": (self.key & _LOW32).astype(np.int32),
                "inside_since_us": self.since.copy(), "dwell_emitted": self.dwell.copy(),
                "last_time_us": self.last_time_us(device), "inside": self.inside.copy(),
                "overspeed_active": self.over.copy(), "pending": self.pending.copy(),
                "pending_since_us": self.pending_since.copy()}

    @classmethod
    def restore(cls, device: np.ndarray, fence: np.ndarray, inside_since_us: np.ndarray,
                dwell_emitted: np.ndarray, last_time_us: np.ndarray, *,
                inside: np.ndarray | None = None, overspeed_active: np.ndarray | None = None,
                pending: np.ndarray | None = None, pending_since_us: np.ndarray | None = None,
                ) -> GeofenceState:
        """State from arrays, e.g. rebuilt from ``geofence_events`` (enter without a later
        exit: ``inside_since_us`` = its time, ``dwell_emitted`` = a dwell followed it).

        Optional arrays default to: inside, no overspeed episode, nothing pending.
        """
        device = np.asarray(device, dtype=np.int64)
        fence = np.asarray(fence, dtype=np.int64)
        n = device.size
        if n and (device.min() < 0 or fence.min() < 0 or fence.max() > _LOW32):
            raise ValueError("device and fence indices must be >= 0 (fence < 2**32)")
        key = device << 32 | fence
        cols = [np.asarray(inside_since_us, np.int64), np.asarray(dwell_emitted, bool),
                np.ones(n, bool) if inside is None else np.asarray(inside, bool),
                np.zeros(n, bool) if overspeed_active is None
                else np.asarray(overspeed_active, bool),
                np.zeros(n, np.int32) if pending is None else np.asarray(pending, np.int32),
                np.full(n, NO_TIME) if pending_since_us is None
                else np.asarray(pending_since_us, np.int64)]
        last = np.asarray(last_time_us, dtype=np.int64)
        if any(c.shape != (n,) for c in [key, last, *cols]):
            raise ValueError("restore arrays must be 1-D and of one length")
        order = np.argsort(key, kind="stable")
        key = key[order]
        if n and (key[1:] == key[:-1]).any():
            raise ValueError("duplicate (device, fence) in restore")
        state = cls()
        state.key = key
        state.since, state.dwell, state.inside, state.over, state.pending, \
            state.pending_since = (c[order] for c in cols)
        if n:
            state._dev_last = np.full(int(device.max()) + 1, NO_TIME, dtype=np.int64)
            np.maximum.at(state._dev_last, device, last)
        return state

    def merge(self, other: GeofenceState) -> int:
        """Add the pairs of ``other`` (e.g. restored from the database for devices seen for
        the first time); pairs already tracked here win. Returns how many were added."""
        new = ~np.isin(other.key, self.key)
        if other._dev_last.size:
            self._grow(other._dev_last.size)
            np.maximum(self._dev_last[:other._dev_last.size], other._dev_last,
                       out=self._dev_last[:other._dev_last.size])
        if not new.any():
            return 0
        key = np.concatenate([self.key, other.key[new]])
        order = np.argsort(key, kind="stable")
        self.key = key[order]
        for name in ("inside", "since", "dwell", "over", "pending", "pending_since"):
            merged = np.concatenate([getattr(self, name), getattr(other, name)[new]])
            setattr(self, name, merged[order])
        return int(new.sum())

    def remap_fences(self, old_ids: Sequence[str], new_ids: Sequence[str]) -> int:
        """Re-key memberships to a re-imported fence set by ``geofence_id``.

        Pairs whose fence id is not in ``new_ids`` are dropped (no exit event); returns
        how many were dropped.
        """
        where = {fid: i for i, fid in enumerate(new_ids)}
        table = np.array([where.get(fid, -1) for fid in old_ids], dtype=np.int64)
        fence = self.key & _LOW32
        if fence.size and int(fence.max()) >= table.size:
            raise ValueError("state refers to fences beyond old_ids")
        new_fence = table[fence] if fence.size else fence
        keep = new_fence >= 0
        key = (self.key >> 32 << 32 | new_fence)[keep]
        order = np.argsort(key, kind="stable")
        self.key = key[order]
        for name in ("inside", "since", "dwell", "over", "pending", "pending_since"):
            setattr(self, name, getattr(self, name)[keep][order])
        return int((~keep).sum())

    def _grow(self, n_devices: int) -> None:
        """Room for device indices below ``n_devices`` (amortised doubling)."""
        size = self._dev_last.size
        if n_devices > size:
            self._dev_last = np.concatenate(
                [self._dev_last, np.full(max(n_devices, 2 * size) - size, NO_TIME)])


def _starts(a: np.ndarray) -> np.ndarray:
    """True where a run of equal values begins."""
    out = np.ones(a.size, dtype=bool)
    out[1:] = a[1:] != a[:-1]
    return out


def _ends(a: np.ndarray) -> np.ndarray:
    """True where a run of equal values ends."""
    out = np.ones(a.size, dtype=bool)
    out[:-1] = a[1:] != a[:-1]
    return out


def _last_flagged(flag: np.ndarray, group_first: np.ndarray, *, inclusive: bool,
                  ) -> np.ndarray:
    """Per row, the index of the last row with ``flag`` in the same group up to it
    (inclusive or strictly before), else -1; ``group_first``: the group's first row."""
    idx = np.where(flag, np.arange(flag.size), -1)
    last = np.maximum.accumulate(idx)
    if not inclusive:
        last = np.r_[-1, last[:-1]]
    return np.where(last >= group_first, last, -1)


def _fresh_rows(state: GeofenceState, device: np.ndarray, time_us: np.ndarray,
                usable: np.ndarray) -> np.ndarray:
    """Usable rows sorted by (device, time), without those at or before the device's last
    processed time (earlier batch or an equal time in this one)."""
    rows = np.flatnonzero(usable)
    if not rows.size:
        return rows
    rows = rows[np.lexsort((time_us[rows], device[rows]))]
    d, t = device[rows], time_us[rows]
    if d[0] < 0:
        raise ValueError("device indices must be >= 0")
    state._grow(int(d[-1]) + 1)
    fresh = t > state._dev_last[d]
    fresh[1:] &= (d[1:] != d[:-1]) | (t[1:] != t[:-1])
    return rows[fresh]


def geofence_events(fences: FenceSet, state: GeofenceState, device: np.ndarray,
                    time_us: np.ndarray, lon: np.ndarray, lat: np.ndarray,
                    speed_mps: np.ndarray, flags: np.ndarray, *, debounce: int = 3,
                    ignore_flags: int = IGNORED_FLAGS) -> GeofenceEventBatch:
    """Events of one batch of fixes (any devices, any order); updates ``state``.

    ``debounce``: consecutive fixes on the new side needed for a transition (1 = none).
    ``ignore_flags``: FixFlag bits that exclude a fix from membership.
    """
    if isinstance(debounce, bool) or not isinstance(debounce, int) or debounce < 1:
        raise ValueError(f"debounce must be an integer >= 1, not {debounce!r}")
    device = np.asarray(device, dtype=np.int64)
    time_us = np.asarray(time_us, dtype=np.int64)
    lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
    speed_mps = np.asarray(speed_mps, np.float64)
    flags = np.asarray(flags)
    n = device.size
    if any(a.shape != (n,) for a in (time_us, lon, lat, speed_mps, flags)):
        raise ValueError("all columns must be 1-D and of one length")
    usable = (flags & int(ignore_flags)) == 0
    usable &= np.isfinite(lon)
    usable &= np.isfinite(lat)
    rows = _fresh_rows(state, device, time_us, usable)
    if not rows.size:
        return GeofenceEventBatch.empty()
    d, t = device[rows], time_us[rows]
    n_u = rows.size
    block = np.flatnonzero(_starts(d))                 # first row of each device
    ud = d[block]
    block_len = np.diff(np.r_[block, n_u])
    rank = np.arange(n_u) - np.repeat(block, block_len)
    hu, hf = fences.contains(lon[rows], lat[rows])
    hkey = d[hu] << 32 | hf.astype(np.int64)
    present = np.zeros(int(max(ud[-1], state.key[-1] >> 32 if len(state) else 0)) + 1, bool)
    present[ud] = True
    in_batch = present[state.key >> 32]
    pairs = np.union1d(hkey, state.key[in_batch])
    state._dev_last[ud] = t[np.r_[block[1:], n_u] - 1]
    if not pairs.size:
        return GeofenceEventBatch.empty()
    prior = _Prior(state, pairs)
    p_block = np.searchsorted(ud, pairs >> 32)
    p_fence = (pairs & _LOW32).astype(np.int32)
    # hits ordered by (pair, rank): runs of consecutive ranks are the runs inside
    hp = np.searchsorted(pairs, hkey)
    order = np.argsort(hp * (n_u + 1) + rank[hu])
    hp, hu = hp[order], hu[order]
    runs = _Runs.of(hp, rank[hu], block_len[p_block], prior, debounce)
    runs.time = np.where(runs.carry, prior.pending_since[runs.pair],
                         t[block[p_block][runs.pair] + runs.start])
    stay_start = np.where(runs.carried, prior.since[runs.pair],
                          runs.time[np.maximum(runs.last_enter, 0)])
    # fixes seen inside during a confirmed stay: dwell and overspeed
    h_run, h_time, h_fence = runs.hit_run, t[hu], p_fence[hp]
    h_key = runs.stay_key[h_run]
    h_carried = runs.carried[h_run]
    start = np.where(runs.hit_stay, stay_start[h_run], NO_TIME)
    dwell_ok = (start != NO_TIME) & ~(h_carried & prior.dwell[hp])
    dwell_ok &= h_time - np.where(dwell_ok, start, 0) >= fences.dwell_s[h_fence] * 1e6
    dw = np.flatnonzero(dwell_ok)
    dw = dw[_starts(h_key[dw])]
    limit = fences.speed_limit_kmh[h_fence]
    speed_kmh = speed_mps[rows[hu]] * 3.6
    rated = np.flatnonzero(runs.hit_stay & np.isfinite(limit) & np.isfinite(speed_kmh))
    r_key = h_key[rated]
    r_over = speed_kmh[rated] > limit[rated]
    r_prev = np.r_[False, r_over[:-1]]
    r_first = _starts(r_key)
    r_prev[r_first] = (h_carried & prior.over[hp])[rated[r_first]]
    os_ = rated[r_over & ~r_prev]
    # membership at the end of the batch
    last = np.flatnonzero(_ends(runs.pair))
    lp, cur = runs.pair[last], runs.stay_key[last]
    inside = runs.after[last]
    pending = np.where(runs.side[last] != inside, runs.length[last], 0).astype(np.int32)
    dwell = inside & ((runs.carried[last] & prior.dwell[lp]) | np.isin(cur, h_key[dw]))
    over = inside & runs.carried[last] & prior.over[lp]
    final = _ends(r_key)                # the last rated fix of each stay sets the episode
    j = np.searchsorted(r_key[final], cur)
    seen = j < int(final.sum())
    seen[seen] = r_key[final][j[seen]] == cur[seen]
    over[seen] = r_over[final][j[seen]] & inside[seen]
    keep = inside | (pending > 0)
    _store(state, in_batch, pairs[lp][keep], inside[keep],
           np.where(inside, stay_start[last], NO_TIME)[keep], dwell[keep], over[keep],
           pending[keep], np.where(pending > 0, runs.time[last], NO_TIME)[keep])
    # events
    enter, leave = runs.flip & runs.side, runs.flip & ~runs.side
    inside_s = np.where(stay_start[leave] == NO_TIME, -1.0,
                        (runs.time[leave] - stay_start[leave]) / 1e6)
    parts = [   # float reprs are valid JSON numbers (all finite here)
        (runs.time[enter], runs.pair[enter], "enter", ["{}"] * int(enter.sum())),
        (runs.time[leave], runs.pair[leave], "exit",
         ["{}" if s < 0 else f'{{"inside_s": {round(s, 3)!r}}}' for s in inside_s.tolist()]),
        (h_time[dw], hp[dw], "dwell",
         [f'{{"dwell_s": {s!r}}}' for s in fences.dwell_s[h_fence[dw]].tolist()]),
        (h_time[os_], hp[os_], "overspeed",
         [f'{{"speed_kmh": {round(v, 1)!r}, "limit_kmh": {lim!r}}}' for v, lim in
          zip(speed_kmh[os_].tolist(), limit[os_].tolist(), strict=True)]),
    ]
    return _event_batch(parts, pairs, p_fence)


def _event_batch(parts: list[tuple[np.ndarray, np.ndarray, str, list[str]]],
                 pairs: np.ndarray, p_fence: np.ndarray) -> GeofenceEventBatch:
    time = np.concatenate([p[0] for p in parts])
    if not time.size:
        return GeofenceEventBatch.empty()
    pair = np.concatenate([p[1] for p in parts])
    rank = np.concatenate([np.full(p[0].size, _KIND_ORDER[p[2]], np.int8) for p in parts])
    kind = np.array([p[2] for p in parts for _ in range(p[0].size)], dtype=object)
    detail = np.array([x for p in parts for x in p[3]], dtype=object)
    device = (pairs[pair] >> 32).astype(np.int32)
    fence = p_fence[pair]
    o = np.lexsort((fence, rank, time, device))
    return GeofenceEventBatch(time[o], device[o], fence[o], kind[o], detail[o])


class _Prior:
    """State before the batch of each (device, fence) pair of the batch."""

    def __init__(self, state: GeofenceState, pairs: np.ndarray) -> None:
        si = np.searchsorted(state.key, pairs)
        known = si < len(state)
        known[known] = state.key[si[known]] == pairs[known]

        def get(arr: np.ndarray, default: object) -> np.ndarray:
            out = np.full(pairs.size, default, dtype=arr.dtype)
            out[known] = arr[si[known]]
            return out

        self.inside = get(state.inside, False)
        self.since = np.where(self.inside, get(state.since, NO_TIME), NO_TIME)
        self.dwell = self.inside & get(state.dwell, False)
        self.over = self.inside & get(state.over, False)
        self.pending = get(state.pending, 0)
        self.pending_since = get(state.pending_since, NO_TIME)


class _Runs:
    """Alternating inside/outside runs of each pair, sorted by (pair, start), debounced."""

    pair: np.ndarray        # pair index
    start: np.ndarray       # first fix (rank within the device's rows)
    length: np.ndarray      # fixes, including a run pending from the previous batch
    side: np.ndarray        # True: inside
    carry: np.ndarray       # continues the previous batch's pending run
    flip: np.ndarray        # membership flips at this run
    after: np.ndarray       # membership after this run
    last_enter: np.ndarray  # index of the run that began the current stay, -1: earlier
    carried: np.ndarray     # the current stay began before this batch
    stay_key: np.ndarray    # identifies the stay (non-decreasing)
    hit_run: np.ndarray     # per hit: its run
    hit_stay: np.ndarray    # per hit: inside a confirmed stay (from the confirming fix on)
    time: np.ndarray        # time of the first fix (filled in by the caller)

    @staticmethod
    def of(hp: np.ndarray, hr: np.ndarray, p_len: np.ndarray, prior: _Prior,
           debounce: int) -> _Runs:
        """``hp``/``hr``: pair and rank of each hit, sorted; ``p_len``: fixes per pair."""
        new = _starts(hp)
        new[1:] |= hr[1:] != hr[:-1] + 1
        first = np.flatnonzero(new)
        in_pair, in_start = hp[first], hr[first]
        in_len = np.diff(np.r_[first, hp.size])
        in_end = in_start + in_len
        # outside runs: gaps before, between and after the inside runs of each pair
        pair_first, pair_last = _starts(in_pair), _ends(in_pair)
        gap_from = np.where(pair_first, 0, np.r_[0, in_end[:-1]])
        no_hits = np.ones(p_len.size, dtype=bool)
        no_hits[in_pair] = False
        lonely = np.flatnonzero(no_hits)
        out_pair = np.concatenate([in_pair, in_pair[pair_last], lonely])
        out_start = np.concatenate([gap_from, in_end[pair_last], np.zeros(lonely.size, int)])
        out_len = np.concatenate([in_start - gap_from,
                                  p_len[in_pair[pair_last]] - in_end[pair_last],
                                  p_len[lonely]])
        real = out_len > 0
        pair = np.concatenate([in_pair, out_pair[real]])
        start = np.concatenate([in_start, out_start[real]])
        order = np.argsort(pair * (int(p_len.max()) + 1) + start)
        r = _Runs()
        r.pair, r.start = pair[order], start[order]
        r.length = np.concatenate([in_len, out_len[real]])[order]
        r.side = order < in_pair.size
        where = np.empty(order.size, dtype=np.int64)
        where[order] = np.arange(order.size)
        r.hit_run = np.repeat(where[:in_pair.size], in_len)
        group_first = np.maximum.accumulate(np.where(_starts(r.pair),
                                                     np.arange(r.pair.size), 0))
        pr = r.pair
        r.carry = (group_first == np.arange(pr.size)) & (r.side != prior.inside[pr]) \
            & (prior.pending[pr] > 0)
        r.length = r.length + np.where(r.carry, prior.pending[pr], 0)
        long = r.length >= debounce
        prev_long = _last_flagged(long, group_first, inclusive=False)
        prev_side = np.where(prev_long >= 0, r.side[np.maximum(prev_long, 0)],
                             prior.inside[pr])
        r.flip = long & (r.side != prev_side)
        r.after = np.where(long, r.side, prev_side)
        r.last_enter = _last_flagged(r.flip & r.side, group_first, inclusive=True)
        r.carried = r.last_enter < 0
        r.stay_key = np.where(r.carried, 2 * group_first, 2 * r.last_enter + 1)
        # a stay counts from the fix that confirms it: the debounce-th of the entering run
        h = r.hit_run
        pos = np.arange(hp.size) - np.repeat(first, in_len)
        pos += np.where(r.carry[h], prior.pending[hp], 0)
        r.hit_stay = r.after[h] & (~r.flip[h] | (pos >= debounce - 1))
        return r


def _store(state: GeofenceState, replaced: np.ndarray, key: np.ndarray, inside: np.ndarray,
           since: np.ndarray, dwell: np.ndarray, over: np.ndarray, pending: np.ndarray,
           pending_since: np.ndarray) -> None:
    """Replace the rows of the batch's devices (``replaced``) by the new sorted rows."""
    kept = ~replaced
    old_key = state.key[kept]
    at = np.searchsorted(old_key, key) + np.arange(key.size)
    total = old_key.size + key.size
    slot_old = np.ones(total, dtype=bool)
    slot_old[at] = False
    for name, new in (("key", key), ("inside", inside), ("since", since), ("dwell", dwell),
                      ("over", over), ("pending", pending), ("pending_since", pending_since)):
        merged = np.empty(total, dtype=new.dtype)
        merged[at] = new
        merged[slot_old] = getattr(state, name)[kept]
        setattr(state, name, merged)
