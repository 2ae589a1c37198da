"""geofence_events: hand-worked sequences, and random multi-device batches against a
per-fix reference state machine."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beiflow.processing.geofence import (
    IGNORED_FLAGS,
    NO_TIME,
    FenceSet,
    GeofenceState,
    geofence_events,
    parse_geojson,
)
from beiflow.schemas.columns import FixFlag

S = 1_000_000  # us per second


def _square(fid: str, x0: float, x1: float, **props: object) -> dict:
    ring = [[x0, 0.0], [x1, 0.0], [x1, 2.0], [x0, 2.0], [x0, 0.0]]
    return {"type": "Feature", "id": fid, "properties": props,
            "geometry": {"type": "Polygon", "coordinates": [ring]}}


FENCES = FenceSet.build(parse_geojson({"type": "FeatureCollection", "features": [
    _square("A", 0.0, 2.0, dwell_s=30, speed_limit_kmh=36),
    _square("B", 1.0, 3.0, speed_limit_kmh=50),
    {"type": "Feature", "id": "C", "properties": {"radius_m": 60_000, "dwell_s": 5},
     "geometry": {"type": "Point", "coordinates": [5.0, 1.0]}},
]}))
A, B, C = 0, 1, 2
#: Named positions: only A, A and B, only B, C, nowhere.
AT = {"a": (0.5, 1.0), "ab": (1.5, 1.0), "b": (2.5, 1.0), "c": (5.0, 1.0), "out": (4.0, 4.0)}


@dataclass
class Fix:
    device: int
    t_s: float
    where: str
    speed_mps: float = 0.0
    flags: int = 0


def _feed(state: GeofenceState, fixes: list[Fix], debounce: int = 3,
          fences: FenceSet = FENCES) -> list[tuple]:
    """Run one batch; events as (t_s, device, fence id, event, detail dict)."""
    lon = np.array([AT[f.where][0] for f in fixes], dtype=float)
    lat = np.array([AT[f.where][1] for f in fixes], dtype=float)
    ev = geofence_events(fences, state, np.array([f.device for f in fixes], dtype=np.int32),
                         np.array([round(f.t_s * S) for f in fixes], dtype=np.int64), lon, lat,
                         np.array([f.speed_mps for f in fixes], dtype=float),
                         np.array([f.flags for f in fixes], dtype=np.int32), debounce=debounce)
    assert ev.time.dtype == np.int64 and ev.device.dtype == np.int32
    assert ev.fence.dtype == np.int32
    return [(t / S, d, fences.ids[f], e, json.loads(x)) for t, d, f, e, x in
            zip(ev.time.tolist(), ev.device.tolist(), ev.fence.tolist(), ev.event.tolist(),
                ev.detail.tolist(), strict=True)]


def _track(device: int, t0: float, *wheres: str, speed: float = 0.0) -> list[Fix]:
    return [Fix(device, t0 + i, w, speed) for i, w in enumerate(wheres)]


# ------------------------------------------------------------------ hand-worked


def test_enter_dwell_overspeed_exit_across_two_batches() -> None:
    state = GeofenceState()
    first = _feed(state, _track(0, 100, "out", "a", "a", "a", "a"), debounce=1)
    assert first == [(101, 0, "A", "enter", {})]
    batch2 = [Fix(0, 120, "a", 5.0), Fix(0, 131, "a", 11.0),    # 39.6 km/h > 36
              Fix(0, 132, "a", 12.0), Fix(0, 133, "a", 9.0),   # same episode, then re-armed
              Fix(0, 134, "a", 10.5), Fix(0, 140, "out")]      # 37.8 km/h: a new episode
    assert _feed(state, batch2, debounce=1) == [
        (131, 0, "A", "dwell", {"dwell_s": 30.0}),             # 30 s after the enter at 101
        (131, 0, "A", "overspeed", {"speed_kmh": 39.6, "limit_kmh": 36.0}),
        (134, 0, "A", "overspeed", {"speed_kmh": 37.8, "limit_kmh": 36.0}),
        (140, 0, "A", "exit", {"inside_s": 39.0}),
    ]
    assert len(state) == 0


def test_dwell_once_per_stay() -> None:
    state = GeofenceState()
    got = _feed(state, _track(0, 0, *["a"] * 40, "out", "a", *["a"] * 35), debounce=1)
    assert [(t, e) for t, _, _, e, _ in got] == [
        (0, "enter"), (30, "dwell"), (40, "exit"), (41, "enter"), (71, "dwell")]


def test_jitter_at_a_boundary_is_debounced() -> None:
    jitter = ["a", "out", "a", "out", "a", "a", "out", "a", "out", "out", "a"]
    state = GeofenceState()
    assert _feed(state, _track(0, 0, "out", "out", *jitter)) == []
    # once inside, jitter outwards does not exit either
    state = GeofenceState()
    assert _feed(state, _track(0, 0, "a", "a", "a"))[0][:4] == (0, 0, "A", "enter")
    assert _feed(state, _track(0, 10, *[("out" if w == "a" else "a") for w in jitter])) == []
    # without debounce, every change is an event
    state = GeofenceState()
    got = _feed(state, _track(0, 0, "out", *jitter[:4]), debounce=1)
    assert [(t, e) for t, _, _, e, _ in got] == [(1, "enter"), (2, "exit"), (3, "enter"),
                                                (4, "exit")]


def test_first_fix_inside_enters_at_the_first_fix_of_the_run() -> None:
    state = GeofenceState()
    assert _feed(state, _track(0, 50, "a"), debounce=1) == [(50, 0, "A", "enter", {})]
    state = GeofenceState()
    assert _feed(state, _track(0, 50, "a", "a")) == []               # 2 of 3: pending
    snap = state.snapshot()
    assert snap["pending"].tolist() == [2] and snap["pending_since_us"].tolist() == [50 * S]
    assert _feed(state, _track(0, 52, "a")) == [(50, 0, "A", "enter", {})]


def test_exit_debounced_across_batches() -> None:
    state = GeofenceState()
    _feed(state, _track(0, 0, "a", "a", "a"))
    assert _feed(state, _track(0, 10, "a", "out")) == []
    assert _feed(state, _track(0, 12, "a", "out", "out")) == []      # run broken by "a"
    assert _feed(state, _track(0, 15, "out")) == [(13, 0, "A", "exit", {"inside_s": 13.0})]


def test_out_of_order_fixes_are_skipped_for_membership() -> None:
    state = GeofenceState()
    assert _feed(state, _track(0, 100, "a", "a", "a")) == [(100, 0, "A", "enter", {})]
    # older than what was processed (and one equal time): no exit, no pending run
    late = [*_track(0, 90, "out", "out", "out"), Fix(0, 102, "out")]
    assert _feed(state, late) == []
    snap = state.snapshot()
    assert snap["pending"].tolist() == [0] and snap["last_time_us"].tolist() == [102 * S]
    # within a batch, arrival order does not matter: rows are sorted by time
    rows = _track(0, 103, "out", "out", "out", "a")
    assert _feed(state, rows[::-1]) == [(103, 0, "A", "exit", {"inside_s": 3.0})]
    # duplicates of one time in a batch: the first row of that time counts
    state = GeofenceState()
    assert _feed(state, [Fix(1, 5, "a"), Fix(1, 5, "out")], debounce=1) == \
        [(5, 1, "A", "enter", {})]


def test_flagged_fixes_are_ignored() -> None:
    state = GeofenceState()
    _feed(state, _track(0, 0, "a", "a", "a"))
    for flag in (FixFlag.NO_FIX, FixFlag.JUMP, FixFlag.NULL_ISLAND, FixFlag.POOR_QUALITY,
                 FixFlag.TIME_BACKWARDS):
        bad = [Fix(0, 10 + i, "out", 50.0, int(flag | FixFlag.CLOCK_PAST)) for i in range(5)]
        assert _feed(state, bad, debounce=1) == []
    assert state.snapshot()["last_time_us"].tolist() == [2 * S]      # not processed
    # flagged fixes do not break a run either; other flags do not matter
    rows = [Fix(0, 20, "out"), Fix(0, 21, "a", flags=int(FixFlag.JUMP)), Fix(0, 22, "out"),
            Fix(0, 23, "out", flags=int(FixFlag.DUPLICATE | FixFlag.CLOCK_FUTURE))]
    assert _feed(state, rows) == [(20, 0, "A", "exit", {"inside_s": 20.0})]


def test_ignore_flags_is_configurable() -> None:
    future = int(FixFlag.CLOCK_FUTURE)
    state = GeofenceState()
    _feed(state, _track(0, 0, "a"), debounce=1)
    ev = geofence_events(FENCES, state, np.zeros(1, np.int32), np.array([10**9]) * S,
                         np.array([4.0]), np.array([4.0]), np.zeros(1),
                         np.array([future], np.int32), debounce=1,
                         ignore_flags=IGNORED_FLAGS | future)
    assert len(ev) == 0 and state.last_time_us(np.array([0])).tolist() == [0]
    assert _feed(state, _track(0, 5, "out"), debounce=1) == \
        [(5, 0, "A", "exit", {"inside_s": 5.0})]


def test_nan_position_is_ignored() -> None:
    state = GeofenceState()
    _feed(state, _track(0, 0, "a"), debounce=1)
    ev = geofence_events(FENCES, state, np.zeros(2, np.int32), np.array([5, 6]) * S,
                         np.array([np.nan, 4.0]), np.array([1.0, np.nan]), np.zeros(2),
                         np.zeros(2, np.int32), debounce=1)
    assert len(ev) == 0 and len(state) == 1


def test_overlapping_fences_and_interleaved_devices() -> None:
    state = GeofenceState()
    rows = (_track(0, 0, "ab", "ab", "ab", "b", "b", "b") + _track(1, 0, "a", "a", "a")
            + _track(2, 0, "c", "c", "c", "c", "c", "c", "c"))
    rows.sort(key=lambda f: (f.t_s, -f.device))                       # interleaved
    got = _feed(state, rows)
    assert got == [
        (0, 0, "A", "enter", {}), (0, 0, "B", "enter", {}), (3, 0, "A", "exit", {"inside_s": 3}),
        (0, 1, "A", "enter", {}),
        (0, 2, "C", "enter", {}), (5, 2, "C", "dwell", {"dwell_s": 5.0}),
    ]
    snap = state.snapshot()
    assert sorted(zip(snap["device"].tolist(), snap["fence"].tolist(), strict=True)) == \
        [(0, B), (1, A), (2, C)]


def test_snapshot_restore_round_trip() -> None:
    state = GeofenceState()
    _feed(state, _track(0, 0, "a", "a", "a", "out", "out") + _track(3, 0, "ab", "ab"))
    twin = GeofenceState.restore(**state.snapshot())
    for key, value in state.snapshot().items():
        assert np.array_equal(twin.snapshot()[key], value), key
    more = _track(0, 10, "out", "a", "a", "a", "a") + _track(3, 10, "ab", "b", "b", "b")
    assert _feed(twin, more) == _feed(state, more)


def test_restore_from_stored_events() -> None:
    """What the lead rebuilds from geofence_events: enter without exit, dwell seen."""
    state = GeofenceState.restore(device=np.array([7, 7]), fence=np.array([A, C]),
                                  inside_since_us=np.array([100, 100]) * S,
                                  dwell_emitted=np.array([False, True]),
                                  last_time_us=np.array([120, 125]) * S)
    assert state.last_time_us(np.array([7, 8])).tolist() == [125 * S, NO_TIME]
    got = _feed(state, _track(7, 124, "out") + _track(7, 130, "a", "a", "a"))
    assert got == [(130, 7, "A", "dwell", {"dwell_s": 30.0}),
                   (130, 7, "C", "exit", {"inside_s": 30.0})]
    with pytest.raises(ValueError, match="duplicate"):
        GeofenceState.restore(np.array([1, 1]), np.array([0, 0]), np.zeros(2), np.zeros(2),
                              np.zeros(2))
    with pytest.raises(ValueError, match="one length"):
        GeofenceState.restore(np.array([1]), np.array([0, 1]), np.zeros(2), np.zeros(2),
                              np.zeros(2))


def test_remap_fences_keeps_surviving_memberships() -> None:
    state = GeofenceState()
    _feed(state, _track(0, 0, "ab", "ab", "ab") + _track(1, 0, "c", "c", "c"))
    # re-import: B removed, C and A swapped in order, D added
    new = FenceSet.build(parse_geojson({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "C", "properties": {"radius_m": 60_000},
         "geometry": {"type": "Point", "coordinates": [5.0, 1.0]}},
        _square("D", 10.0, 11.0), _square("A", 0.0, 2.0, dwell_s=30)]}))
    assert state.remap_fences(FENCES.ids, new.ids) == 1
    snap = state.snapshot()
    assert sorted(zip(snap["device"].tolist(), snap["fence"].tolist(), strict=True)) == \
        [(0, 2), (1, 0)]
    # still inside: no new enter; leaving yields exits with the new indices
    got = _feed(state, _track(0, 10, "ab") + _track(1, 10, "out", "out", "out"), fences=new)
    assert got == [(10, 1, "C", "exit", {"inside_s": 10.0})]


def test_rejects_bad_arguments() -> None:
    state = GeofenceState()
    with pytest.raises(ValueError, match="debounce"):
        _feed(state, _track(0, 0, "a"), debounce=0)
    with pytest.raises(ValueError, match="one length"):
        geofence_events(FENCES, state, np.zeros(2), np.zeros(1), np.zeros(2), np.zeros(2),
                        np.zeros(2), np.zeros(2, np.int32))
    assert len(_feed(state, [])) == 0


# ------------------------------------------------------------------ reference model


@dataclass
class _Pair:
    inside: bool = False
    since: int = NO_TIME
    dwell: bool = False
    over: bool = False
    pending: int = 0
    pending_since: int = NO_TIME


def _reference(batches: list[list[Fix]], debounce: int) -> list[tuple]:
    """The rules, one fix at a time."""
    pairs: dict[tuple[int, int], _Pair] = {}
    last: dict[int, int] = {}
    out = []
    for batch in batches:
        for fix in sorted(batch, key=lambda f: (f.device, round(f.t_s * S))):  # stable
            t, d = round(fix.t_s * S), fix.device
            if fix.flags & int(IGNORED_FLAGS) or t <= last.get(d, NO_TIME):
                continue
            last[d] = t
            lon, lat = AT[fix.where]
            _, hit = FENCES.contains(np.array([lon]), np.array([lat]))
            here = set(hit.tolist())
            tracked = {f for (dd, f) in pairs if dd == d}
            for f in sorted(here | tracked):
                p = pairs.setdefault((d, f), _Pair())
                seen = f in here
                if seen == p.inside:
                    p.pending = 0
                else:
                    if not p.pending:
                        p.pending_since = t
                    p.pending += 1
                    if p.pending >= debounce:
                        p.inside, p.pending = seen, 0
                        if seen:
                            p.since, p.dwell, p.over = p.pending_since, False, False
                            out.append((p.since / S, d, FENCES.ids[f], "enter", {}))
                        else:
                            p.over = False
                            out.append((p.pending_since / S, d, FENCES.ids[f], "exit",
                                        {"inside_s": (p.pending_since - p.since) / S}))
                if seen and p.inside:
                    dwell, limit = FENCES.dwell_s[f], FENCES.speed_limit_kmh[f]
                    if not p.dwell and t - p.since >= dwell * S:
                        p.dwell = True
                        out.append((t / S, d, FENCES.ids[f], "dwell", {"dwell_s": dwell}))
                    kmh = fix.speed_mps * 3.6
                    if not math.isnan(limit) and not math.isnan(kmh):
                        if kmh > limit and not p.over:
                            out.append((t / S, d, FENCES.ids[f], "overspeed",
                                        {"speed_kmh": round(kmh, 1), "limit_kmh": limit}))
                        p.over = kmh > limit
                if not p.inside and not p.pending:
                    del pairs[(d, f)]
    return out


_ORDER = {"enter": 0, "dwell": 1, "overspeed": 2, "exit": 3}


def _canon(events: list[tuple]) -> list[tuple]:
    return sorted(events, key=lambda e: (e[1], e[0], _ORDER[e[3]], e[2]))


@st.composite
def _batches(draw: st.DrawFn) -> tuple[list[list[Fix]], int]:
    fixes: list[Fix] = []
    for device in range(draw(st.integers(1, 5))):
        t = draw(st.floats(0, 100))
        for _ in range(draw(st.integers(1, 30))):
            t += draw(st.sampled_from([0.0, 1.0, 1.0, 2.0, 7.5, 20.0, -3.0]))
            fixes.append(Fix(device * 37, t, draw(st.sampled_from(list(AT))),
                             draw(st.sampled_from([math.nan, 3.0, 9.0, 10.5, 15.0])),
                             draw(st.sampled_from([0, 0, 0, 0, int(FixFlag.NO_FIX),
                                                   int(FixFlag.DUPLICATE)]))))
    order = draw(st.permutations(range(len(fixes))))
    cuts = sorted(draw(st.lists(st.integers(0, len(fixes)), max_size=4)))
    rows = [fixes[i] for i in order] if draw(st.booleans()) else fixes
    bounds = [0, *cuts, len(rows)]
    return [rows[a:b] for a, b in itertools.pairwise(bounds)], \
        draw(st.integers(1, 3))


@settings(max_examples=200, deadline=None)
@given(_batches())
def test_batches_match_the_reference(case: tuple[list[list[Fix]], int]) -> None:
    batches, debounce = case
    state = GeofenceState()
    got = [e for batch in batches for e in _feed(state, batch, debounce)]
    assert _canon(got) == _canon(_reference(batches, debounce))


@settings(max_examples=50, deadline=None)
@given(_batches(), st.integers(1, 5))
def test_batch_split_does_not_matter_for_ordered_fixes(case: tuple[list[list[Fix]], int],
                                                       pieces: int) -> None:
    rows = sorted((f for b in case[0] for f in b), key=lambda f: f.t_s)
    whole = _feed(GeofenceState(), rows, case[1])
    step = max(1, len(rows) // pieces)
    state = GeofenceState()
    split = [e for i in range(0, len(rows), step) for e in _feed(state, rows[i:i + step],
                                                                 case[1])]
    assert _canon(split) == _canon(whole)
