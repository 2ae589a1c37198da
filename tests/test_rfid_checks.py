"""RFID checks: duplicate collapsing, impossible travel, cold-chain exits, tag registry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from beiflow.processing.config import RfidConfig
from beiflow.processing.events import AnomalyBatch
from beiflow.processing.movement import EARTH_RADIUS_M, US
from beiflow.processing.rfid_checks import RfidSites, RfidState, check_rfid

M_PER_DEG = EARTH_RADIUS_M * math.pi / 180
COLD, AMBIENT = 1, 0
# readers: 0 cold store (zone 0), 1 dock (zone 1, ambient) 88 m east of it, 2 a gate 0.1 deg
# (11.1 km) north, 3 a handheld (no position, no zone), 4 a second cold store (zone 2)
SITES = RfidSites(
    lat=np.array([37.5, 37.5, 37.6, np.nan, 37.5]),
    lon=np.array([121.0, 121.001, 121.0, np.nan, 121.0]),
    zone=np.array([0, 1, -1, -1, 2]),
    zone_kind=np.array([COLD, AMBIENT, COLD]),
    cold_kind=np.array([False, True]),
)


def reads(epc, reader, t_s) -> dict[str, np.ndarray]:
    t = (np.asarray(t_s, np.float64) * US).astype(np.int64)
    return {"time": t, "received_at": t, "epc": np.asarray(epc, dtype=object),
            "device": np.asarray(reader, np.int32)}


def found(a: AnomalyBatch) -> list[tuple[int, int, str, str]]:
    return [(int(t) // US, int(d), str(k), json.loads(x)["epc"])
            for t, d, k, x in zip(a.time, a.device, a.kind, a.detail, strict=True)]


def test_duplicates_collapse_in_a_sliding_window() -> None:
    r = check_rfid(reads(["E1"] * 6, [0, 0, 0, 1, 0, 0], [0, 3, 7, 8, 9, 20]), RfidState(),
                   SITES)
    # 3 s and 7 s: same reader within 5 s of the previous read; 8 s another reader;
    # 9 s back at reader 0 (its previous read was at reader 1); 20 s: 11 s later
    assert r.first_in_window.tolist() == [True, False, False, True, True, True]


def test_impossible_travel_by_hand() -> None:
    r = check_rfid(reads(["AA", "AA"], [2, 0], [0, 30]), RfidState(), SITES)
    dist = 0.1 * M_PER_DEG                                   # 11,119.5 m
    implied = dist / (30 + 2)                                 # + 2 s clock slack
    assert found(r.anomalies) == [(30, 0, "impossible_travel", "AA")]
    assert r.anomalies.score[0] == pytest.approx(implied / (150 / 3.6), rel=1e-9)
    assert r.anomalies.score[0] == pytest.approx(8.34, abs=0.01)
    # enough time (10 min) for 11 km at 150 km/h: no anomaly
    assert len(check_rfid(reads(["AA", "AA"], [2, 0], [0, 600]), RfidState(),
                          SITES).anomalies) == 0


def test_near_readers_and_unknown_positions_never_travel() -> None:
    # 88 m apart within 1 s: under min_distance_m; the handheld has no position, so the
    # trip 2 -> 3 -> 0 is judged from reader 2 at 0 s to reader 0 at 900 s
    r = check_rfid(reads(["B1", "B1", "C1", "C1", "C1"], [0, 1, 2, 3, 0], [0, 1, 0, 1, 900]),
                   RfidState(), SITES, config=RfidConfig(max_speed_kmh=150))
    assert "impossible_travel" not in r.anomalies.kind.tolist()


def test_cold_chain_exit() -> None:
    st = RfidState()
    r = check_rfid(reads(["T1", "T1", "T1", "T1"], [0, 3, 4, 1], [0, 60, 120, 400]), st,
                   SITES)
    # cold zone 0 -> handheld (no zone) -> cold zone 2 (same kind) -> dock (ambient)
    assert found(r.anomalies) == [(400, 1, "cold_chain_exit", "T1")]
    detail = json.loads(r.anomalies.detail[0])
    assert (detail["from_zone"], detail["to_zone"]) == (2, 1)
    assert r.anomalies.score.tolist() == [1.0]
    # already out: later ambient reads do not exit again
    assert len(check_rfid(reads(["T1"], [1], [500]), st, SITES).anomalies) == 0


def test_state_carries_across_batches_and_tags_keep_their_index() -> None:
    st = RfidState()
    r1 = check_rfid(reads(["X9", "Y8"], [0, 2], [0, 0]), st, SITES)
    r2 = check_rfid(reads(["Y8", "X9", "X9"], [0, 0, 1], [20, 2, 100]), st, SITES)
    assert r1.tag.tolist() == [0, 1] and r2.tag.tolist() == [1, 0, 0]
    assert r2.first_in_window.tolist() == [True, False, True]
    assert found(r2.anomalies) == [(20, 0, "impossible_travel", "Y8"),
                                   (100, 1, "cold_chain_exit", "X9")]
    assert len(st) == 2


def test_interleaved_tags_in_any_order() -> None:
    rng = np.random.default_rng(8)
    epc = np.array(["A"] * 4 + ["B"] * 4, dtype=object)
    reader = np.array([0, 0, 1, 1, 2, 2, 0, 0])
    t = np.array([0, 1, 50, 51, 0, 1, 30, 31])
    perm = rng.permutation(8)
    r = check_rfid(reads(epc[perm], reader[perm], t[perm]), RfidState(), SITES)
    inv = np.argsort(perm)
    assert r.first_in_window[inv].tolist() == [True, False, True, False] * 2
    assert sorted(found(r.anomalies)) == [(30, 0, "impossible_travel", "B"),
                                          (50, 1, "cold_chain_exit", "A")]


def test_empty_batch() -> None:
    r = check_rfid(reads([], [], []), RfidState(), SITES)
    assert r.first_in_window.size == 0 and len(r.anomalies) == 0
