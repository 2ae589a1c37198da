"""Movement checks: hand-worked flags, distances, anomalies and state across batches."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from beiflow.processing.config import DeviceKind, MovementConfig
from beiflow.processing.events import AnomalyBatch
from beiflow.processing.movement import (
    EARTH_RADIUS_M,
    US,
    MovementState,
    affine_scan,
    check_movement,
    check_offline,
    haversine_m,
)
from beiflow.schemas.columns import POSITION_COLUMNS, FixFlag, empty_columns

LAT0, LON0 = 37.5, 121.4
#: metres per degree of latitude (arc of the sphere used by haversine_m)
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180
ROAD_MPS = 250 / 3.6


def fixes(dev, t_s, lat, lon=None, **cols) -> dict[str, np.ndarray]:
    """A position batch; times in seconds, arrival = device time unless given."""
    n = len(t_s)
    c = empty_columns(POSITION_COLUMNS, n)
    c["device"] = np.broadcast_to(np.asarray(dev, np.int32), (n,)).copy()
    c["time"] = np.asarray(t_s, np.int64) * US
    c["received_at"] = c["time"].copy()
    c["lat"] = np.asarray(lat, np.float64)
    c["lon"] = np.full(n, LON0) if lon is None else np.asarray(lon, np.float64)
    c["fix_quality"][:] = 1
    c["hdop"][:] = 0.9
    for name, value in cols.items():
        c[name] = np.asarray(value, dtype=c[name].dtype)
    return c


def kinds(a: AnomalyBatch) -> list[tuple[int, int, str]]:
    return [(int(t) // US, int(d), str(k)) for t, d, k in zip(a.time, a.device, a.kind,
                                                               strict=True)]


def test_distance_and_speed_from_previous_fix() -> None:
    lat = [LAT0, LAT0 + 0.001, LAT0 + 0.002]
    r = check_movement(fixes(0, [0, 10, 20], lat), MovementState())
    step = 0.001 * M_PER_DEG                      # 111.195 m
    assert np.isnan(r.distance_m[0]) and np.isnan(r.speed_calc_mps[0])
    assert r.distance_m[1:] == pytest.approx([step, step], rel=1e-9)
    assert r.speed_calc_mps[1:] == pytest.approx([step / 10, step / 10], rel=1e-9)
    assert (r.flags == 0).all() and len(r.anomalies) == 0


def test_haversine_quarter_meridian() -> None:
    d = haversine_m(np.array([0.0]), np.array([0.0]), np.array([90.0]), np.array([0.0]))
    assert d[0] == pytest.approx(EARTH_RADIUS_M * math.pi / 2)


def test_spike_is_a_jump_and_does_not_poison_the_reference() -> None:
    lat = [LAT0, LAT0 + 0.1, LAT0 + 0.0002]
    pos = fixes(0, [0, 10, 20], lat)
    before = {k: v.copy() for k, v in pos.items()}
    r = check_movement(pos, MovementState())
    assert r.flags.tolist() == [0, int(FixFlag.JUMP), 0]
    (score,) = r.anomalies.score
    # 0.1 deg = 11,119.5 m in 10 s against the 250 km/h road bound
    assert score == pytest.approx(0.1 * M_PER_DEG / 10 / ROAD_MPS, rel=1e-9)
    assert score == pytest.approx(16.0121, abs=1e-4)
    assert kinds(r.anomalies) == [(10, 0, "jump")]
    detail = json.loads(r.anomalies.detail[0])
    assert detail["distance_m"] == pytest.approx(11119.5, abs=0.1)
    # the fix after the spike is judged against the fix before it: 22.2 m in 20 s
    assert r.distance_m[2] == pytest.approx(0.0002 * M_PER_DEG, rel=1e-9)
    assert r.speed_calc_mps[2] == pytest.approx(0.0002 * M_PER_DEG / 20, rel=1e-9)
    for k, v in before.items():                     # the input is not modified
        np.testing.assert_array_equal(pos[k], v)


def test_vessel_bound_is_lower_than_road() -> None:
    # 200 m in 10 s = 72 km/h: fine for a truck, a jump for a vessel (60 km/h)
    lat = [LAT0, LAT0 + 200 / M_PER_DEG] * 2
    pos = fixes([0, 0, 1, 1], [0, 10, 0, 10], lat)
    kind = np.array([DeviceKind.ROAD, DeviceKind.VESSEL])
    r = check_movement(pos, MovementState(), device_kind=kind)
    assert r.flags.tolist() == [0, 0, 0, int(FixFlag.JUMP)]
    assert r.anomalies.score[0] == pytest.approx(20 / (60 / 3.6), rel=1e-9)   # 1.2


def test_min_jump_distance_absorbs_gnss_noise() -> None:
    # 40 m in 0.1 s is 1440 km/h, but below min_jump_m (50 m): noise, not a jump
    pos = fixes(0, [0, 0], [LAT0, LAT0 + 40 / M_PER_DEG])
    pos["time"][1] += 100_000
    assert check_movement(pos, MovementState()).flags.tolist() == [0, 0]


def test_relocation_after_consecutive_consistent_jumps() -> None:
    far = LAT0 + 1.0
    lat = [LAT0, far, far + 0.0001, far + 0.0002, far + 0.0003]
    r = check_movement(fixes(0, [0, 10, 20, 30, 40], lat), MovementState())
    jump = int(FixFlag.JUMP)
    # relocate_after=3: the third consistent jump is accepted and becomes the reference
    assert r.flags.tolist() == [0, jump, jump, 0, 0]
    assert r.distance_m[4] == pytest.approx(0.0001 * M_PER_DEG, rel=1e-6)
    assert [k for *_, k in kinds(r.anomalies)] == ["jump", "jump"]


def test_inconsistent_jumps_never_relocate() -> None:
    lat = [LAT0, LAT0 + 1, LAT0 - 1, LAT0 + 1, LAT0 - 1, LAT0 + 0.0001]
    r = check_movement(fixes(0, range(0, 60, 10), lat), MovementState())
    jump = int(FixFlag.JUMP)
    assert r.flags.tolist() == [0, jump, jump, jump, jump, 0]


def test_jump_state_carries_across_batches() -> None:
    st = MovementState()
    r1 = check_movement(fixes(0, [0, 10], [LAT0, LAT0 + 0.5]), st)
    r2 = check_movement(fixes(0, [20], [LAT0 + 0.0002]), st)
    assert r1.flags.tolist() == [0, int(FixFlag.JUMP)]
    assert r2.flags.tolist() == [0]
    assert r2.distance_m[0] == pytest.approx(0.0002 * M_PER_DEG, rel=1e-6)


def test_duplicates_are_flagged_only() -> None:
    st = MovementState()
    check_movement(fixes(0, [0, 10, 20], [LAT0, LAT0 + 0.0001, LAT0 + 0.0002]), st)
    # a redelivered older fix (10 s) and a repeat of the latest (20 s), plus a new one
    r = check_movement(fixes(0, [10, 20, 30], [LAT0 + 0.0001, LAT0 + 0.0002, LAT0 + 0.0003]),
                       st)
    dup = int(FixFlag.DUPLICATE)
    assert r.flags.tolist() == [dup, dup, 0]
    assert len(r.anomalies) == 0
    assert np.isnan(r.distance_m[:2]).all()
    assert r.distance_m[2] == pytest.approx(0.0001 * M_PER_DEG, rel=1e-6)


def test_time_backwards() -> None:
    st = MovementState()
    check_movement(fixes(0, [100], [LAT0]), st)
    r = check_movement(fixes(0, [40, 110], [LAT0 + 0.0001, LAT0 + 0.0001]), st)
    assert r.flags.tolist() == [int(FixFlag.TIME_BACKWARDS), 0]
    assert kinds(r.anomalies) == [(40, 0, "time_backwards")]
    assert r.anomalies.score[0] == 60.0                  # seconds behind the latest fix
    assert np.isnan(r.distance_m[0])


def test_null_island_once_per_episode() -> None:
    lat = [LAT0, 0.0, 0.0, 0.0, LAT0, 0.0]
    lon = [LON0, 0.0, 0.0, 0.0, LON0, 0.0]
    r = check_movement(fixes(0, range(0, 60, 10), lat, lon), MovementState())
    null = int(FixFlag.NULL_ISLAND)
    assert r.flags.tolist() == [0, null, null, null, 0, null]
    assert kinds(r.anomalies) == [(10, 0, "null_island"), (50, 0, "null_island")]
    assert r.anomalies.score.tolist() == [1.0, 1.0]


def test_clock_future_adds_the_anomaly() -> None:
    st = MovementState()
    pos = fixes(0, [1000, 1010], [LAT0, LAT0])
    pos["received_at"] -= 600 * US                   # device clock 10 min ahead
    r = check_movement(pos, st)
    assert (r.flags & int(FixFlag.CLOCK_FUTURE)).all()
    assert kinds(r.anomalies) == [(1000, 0, "clock_future")]
    assert r.anomalies.score[0] == pytest.approx(600 / 300)
    # the episode continues into the next batch: no new anomaly
    pos2 = fixes(0, [1020], [LAT0])
    pos2["received_at"] -= 600 * US
    assert len(check_movement(pos2, st).anomalies) == 0


def test_poor_fix_scores() -> None:
    r = check_movement(fixes(0, [0, 10, 20], [LAT0] * 3, hdop=[8.0, 9.0, 1.0]),
                       MovementState())
    poor = int(FixFlag.POOR_QUALITY)
    assert r.flags.tolist() == [poor, poor, 0]
    assert kinds(r.anomalies) == [(0, 0, "poor_fix")]
    assert r.anomalies.score[0] == pytest.approx(8.0 / 5.0)
    q = fixes(1, [0], [np.nan], fix_quality=[0], hdop=[np.nan],
              flags=[int(FixFlag.NO_FIX)])
    r = check_movement(q, MovementState())
    assert r.flags[0] == FixFlag.NO_FIX | FixFlag.POOR_QUALITY
    assert r.anomalies.score.tolist() == [1.0]


def test_stop_and_move_transitions_with_minimum_duration() -> None:
    # 10 s fixes: moving 60 s (the first state, taken silently), stopped 100 s, moving
    t = list(range(0, 250, 10))
    speed = [10.0] * 7 + [0.0] * 10 + [10.0] * 8
    lat = np.cumsum([0.0, *[s * 10 / M_PER_DEG for s in speed[:-1]]]) + LAT0
    st = MovementState()
    r = check_movement(fixes(0, t, lat, speed_mps=speed), st)
    # stop run starts at 70 s -> confirmed at 130 s; move run starts at 170 s -> at 180 s
    assert kinds(r.anomalies) == [(130, 0, "stopped"), (180, 0, "moving")]
    assert r.anomalies.score.tolist() == [0.0, 0.0]
    assert json.loads(r.anomalies.detail[0])["since"] == "1970-01-01T00:01:10.000Z"


def test_stop_confirmation_spans_batches() -> None:
    st = MovementState()
    check_movement(fixes(0, [0, 10, 20], [LAT0] * 3, speed_mps=[5.0] * 3), st)
    r1 = check_movement(fixes(0, [30, 40, 50], [LAT0] * 3, speed_mps=[0.0] * 3), st)
    r2 = check_movement(fixes(0, [60, 90], [LAT0] * 2, speed_mps=[0.1] * 2), st)
    assert len(r1.anomalies) == 0
    assert kinds(r2.anomalies) == [(90, 0, "stopped")]       # 60 s after 30 s


def test_interleaved_devices_in_any_order_match_separate_runs() -> None:
    rng = np.random.default_rng(4)
    n = 30
    lat = LAT0 + np.cumsum(rng.normal(0, 0.0001, (3, n)), axis=1)
    lat[1, 12] += 0.3                                            # a spike on device 1
    t = np.arange(n) * 5
    one = [check_movement(fixes(d, t, lat[d]), MovementState()) for d in range(3)]
    dev = np.repeat(np.arange(3), n)
    perm = rng.permutation(3 * n)
    mixed = check_movement(fixes(dev[perm], np.tile(t, 3)[perm], lat.ravel()[perm]),
                           MovementState())
    inv = np.argsort(perm)
    np.testing.assert_array_equal(mixed.flags[inv], np.concatenate([r.flags for r in one]))
    np.testing.assert_allclose(mixed.distance_m[inv],
                               np.concatenate([r.distance_m for r in one]))
    assert kinds(mixed.anomalies) == [(60, 1, "jump")]


def test_offline_by_silence_and_by_status_once_per_episode() -> None:
    st = MovementState()
    check_movement(fixes([0, 1, 2], [0, 0, 0], [LAT0] * 3), st)
    a = check_offline(st, 200 * US, silence_s=300)
    assert len(a) == 0
    a = check_offline(st, 400 * US, silence_s=300, status_offline=np.array([2]))
    assert sorted(zip(a.device.tolist(), a.score.tolist(), strict=True)) == [
        (0, pytest.approx(400 / 300)), (1, pytest.approx(400 / 300)),
        (2, pytest.approx(400 / 300))]
    assert set(a.stream) == {"status"} and set(a.kind) == {"offline"}
    assert len(check_offline(st, 500 * US, silence_s=300)) == 0     # once per silence
    check_movement(fixes(0, [600], [LAT0]), st)                     # device 0 is back
    st.touch(np.array([1]), np.array([600 * US]))                   # device 1: a sensor
    assert len(check_offline(st, 700 * US, silence_s=300)) == 0
    a = check_offline(st, 1000 * US, silence_s=300)
    assert sorted(a.device.tolist()) == [0, 1]
    # the status topic alone: reported with score 1 before any silence
    a = check_offline(st, 1000 * US, silence_s=300,
                      status_offline=np.array([False, False, False, True]))
    assert a.device.tolist() == [3] and a.score.tolist() == [1.0]


def test_state_grows_on_demand() -> None:
    st = MovementState()
    check_movement(fixes([5], [0], [LAT0]), st)
    check_movement(fixes([100_000], [0], [LAT0]), st)
    assert len(st) > 100_000


def test_affine_scan_matches_the_recurrence() -> None:
    rng = np.random.default_rng(9)
    sizes = [1, 7, 33, 2]
    first = np.concatenate([[True, *([False] * (s - 1))] for s in sizes])
    rank = np.concatenate([np.arange(s) for s in sizes])
    a, b = rng.uniform(0, 1, first.size), rng.normal(size=first.size)
    big_a, big_b = affine_scan(a, b, rank)
    y0 = 2.5
    expect = []
    for i in range(first.size):
        prev = y0 if first[i] else expect[-1]
        expect.append(a[i] * prev + b[i])
    np.testing.assert_allclose(big_a * y0 + big_b, expect, rtol=1e-12)


def test_config_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown device kind 'boat'"):
        MovementConfig(max_speed_kmh={"boat": 30.0})


def _sequential_jumps(dev, t_s, lat, bound_mps, cfg: MovementConfig) -> list[bool]:
    """The jump rule as a plain per-fix loop (rows already in device/time order)."""
    ref: dict[int, tuple[float, float]] = {}
    pend: dict[int, tuple[int, float, float]] = {}
    out = []

    def ok(a, b, dt):
        d = haversine_m(np.array([a]), np.array([LON0]), np.array([b]), np.array([LON0]))[0]
        return d <= max(cfg.min_jump_m, bound_mps * dt)

    for d, t, y in zip(dev, t_s, lat, strict=True):
        if d not in ref or ok(ref[d][1], y, t - ref[d][0]):
            ref[d], pend[d] = (t, y), (0, 0.0, 0.0)
            out.append(False)
            continue
        n, pt, py = pend.get(d, (0, 0.0, 0.0))
        n = n + 1 if n > 0 and ok(py, y, t - pt) else 1
        if n >= cfg.relocate_after:
            ref[d], pend[d] = (t, y), (0, 0.0, 0.0)
            out.append(False)
        else:
            pend[d] = (n, t, y)
            out.append(True)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_jump_resolution_matches_a_sequential_scan(seed: int) -> None:
    rng = np.random.default_rng(seed)
    devices, n = 5, 120
    dev = np.sort(rng.integers(0, devices, n))
    t = np.zeros(n, np.int64)
    for d in range(devices):
        rows = dev == d
        t[rows] = np.cumsum(rng.integers(1, 20, rows.sum()))
    lat = LAT0 + np.cumsum(rng.normal(0, 0.0002, n))
    spikes = rng.random(n)
    lat[spikes < 0.25] += rng.choice([-0.3, 0.3, 1.0], (spikes < 0.25).sum())
    lat[(spikes > 0.9)] += 2.0
    for d in (0, 1):                            # true relocations: the rest of the track moves
        rows = np.flatnonzero(dev == d)
        lat[rows[rows.size // 3:]] += 1.5
    cfg = MovementConfig()
    expect = _sequential_jumps(dev.tolist(), t.tolist(), lat.tolist(), ROAD_MPS, cfg)
    st = MovementState()
    got = np.zeros(n, bool)
    early = t < np.median(t)                    # two batches by time; devices span both
    for part in (np.flatnonzero(early), np.flatnonzero(~early)):
        part = rng.permutation(part)
        r = check_movement(fixes(dev[part], t[part], lat[part]), st)
        got[part] = (r.flags & int(FixFlag.JUMP)) != 0
    assert got.tolist() == expect
    assert any(expect)
    far = np.flatnonzero((dev == 0) & ~np.asarray(expect))
    assert (lat[far] > LAT0 + 1).any()          # device 0 was relocated
