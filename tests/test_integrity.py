"""GNSS integrity: jamming and spoofing scores and episodes, worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from beiflow.processing.config import IntegrityConfig
from beiflow.processing.events import AnomalyBatch
from beiflow.processing.integrity import IntegrityState, check_integrity, sky_summary
from beiflow.processing.movement import US
from beiflow.schemas.columns import CONSTELLATIONS, POSITION_COLUMNS, FixFlag, empty_columns

# A steady sky: 8 GPS at 44 dB-Hz and 8 BDS at 40 dB-Hz -> mean 42, spread 4, 16 tracked.
GPS, BDS = 44.0, 40.0


def sky(n: int, dev: int = 0, t0: int = 0) -> dict[str, np.ndarray]:
    c = empty_columns(POSITION_COLUMNS, n)
    c["device"] = np.full(n, dev, np.int32)
    c["time"] = (t0 + np.arange(n)) * US
    c["received_at"] = c["time"].copy()
    c["sv_gps"][:] = 8
    c["sv_bds"][:] = 8
    c["cn0_gps_dbhz"][:] = GPS
    c["cn0_bds_dbhz"][:] = BDS
    return c


def found(a: AnomalyBatch) -> list[tuple[int, str]]:
    return [(int(t) // US, str(k)) for t, k in zip(a.time, a.kind, strict=True)]


def test_sky_summary_by_hand() -> None:
    c = sky(3)
    c["cn0_bds_dbhz"][1] = np.nan          # BDS listed in view but not tracked
    c["sv_gps"][2], c["cn0_gps_dbhz"][2] = 8, np.nan
    c["cn0_bds_dbhz"][2] = np.nan           # nothing tracked: the lost-signal floor
    s = sky_summary(c, 20.0)
    assert s.tracked.tolist() == [16, 8, 0]
    assert s.cn0.tolist() == [42.0, 44.0, 20.0]
    assert s.spread[0] == 4.0 and np.isnan(s.spread[1:]).all()
    assert s.present.all()
    assert not sky_summary(empty_columns(POSITION_COLUMNS, 1), 20.0).present[0]


def test_jamming_score_and_episodes() -> None:
    c = sky(60)
    c["cn0_gps_dbhz"][40:45] = 34.0         # C/N0 down 10 dB on GPS ...
    c["cn0_bds_dbhz"][40:45] = np.nan       # ... and BDS lost
    c["cn0_gps_dbhz"][50:52] = 34.0
    c["cn0_bds_dbhz"][50:52] = np.nan
    r = check_integrity(c, IntegrityState())
    # baseline 42 dB-Hz / 16 satellites; jammed fix: 34 dB-Hz / 8 satellites
    assert r.cn0_drop_db[40] == pytest.approx(8.0)
    assert r.sat_drop[40] == pytest.approx(0.5)
    # 8 dB below the baseline is past the learning gate (6 dB): the baseline holds
    assert r.cn0_drop_db[41:45].tolist() == pytest.approx([8.0] * 4)
    assert found(r.anomalies) == [(40, "jamming"), (50, "jamming")]
    assert r.anomalies.score[0] == pytest.approx(8.0)
    assert (r.cn0_drop_db[45:50] == 0).all()


def test_total_loss_does_not_drag_the_baseline() -> None:
    c = sky(50)
    c["cn0_gps_dbhz"][35:] = np.nan
    c["cn0_bds_dbhz"][35:] = np.nan
    r = check_integrity(c, IntegrityState())
    assert found(r.anomalies) == [(35, "jamming")]
    np.testing.assert_allclose(r.cn0_drop_db[35:], 22.0)      # 42 - the 20 dB-Hz floor
    assert r.sat_drop[35:].tolist() == [1.0] * 15


def test_baseline_learns_below_the_gate() -> None:
    c = sky(40)
    c["cn0_gps_dbhz"][35:] = 40.0           # mean 40: 2 dB down, within the 6 dB gate
    r = check_integrity(c, IntegrityState())
    # each fix moves the baseline by alpha = 0.01 towards 40
    assert r.cn0_drop_db[35:38].tolist() == pytest.approx(
        [2.0, 0.99 * 42 + 0.01 * 40 - 40, 0.99**2 * 42 + (1 - 0.99**2) * 40 - 40])
    assert len(r.anomalies) == 0


def test_large_drop_alone_is_jamming() -> None:
    c = sky(40)
    c["cn0_gps_dbhz"][35:] = GPS - 11
    c["cn0_bds_dbhz"][35:] = BDS - 11       # all satellites still tracked
    r = check_integrity(c, IntegrityState())
    assert r.sat_drop[35] == 0.0
    assert found(r.anomalies) == [(35, "jamming")]
    assert r.anomalies.score[0] == pytest.approx(11.0)


def test_warm_up_is_neutral() -> None:
    c = sky(40)
    c["cn0_gps_dbhz"][5:30] = 30.0
    c["cn0_bds_dbhz"][5:30] = np.nan
    c["flags"][10] = FixFlag.JUMP
    r = check_integrity(c, IntegrityState())
    assert (r.cn0_drop_db[:30] == 0).all() and (r.uniformity_db[:30] == 0).all()
    assert (r.sat_drop[:30] == 0).all()
    assert len(r.anomalies) == 0


def test_spoofing_needs_a_jump_and_a_uniform_sky() -> None:
    c = sky(44)
    c["cn0_gps_dbhz"][[40, 41]] = 45.0      # every constellation at one power, above the sky
    c["cn0_bds_dbhz"][[40, 41]] = 45.0
    c["flags"][[40, 42]] = FixFlag.JUMP     # fix 42: a jump under a normal sky
    r = check_integrity(c, IntegrityState())
    # (45 - 42) rise + (4 - 0) spread collapse
    assert r.uniformity_db[40] == pytest.approx(7.0)
    assert r.uniformity_db[42] == 0.0
    assert found(r.anomalies) == [(40, "spoofing")]
    assert r.anomalies.score[0] == pytest.approx(7.0)


def test_state_carries_across_batches() -> None:
    c = sky(60)
    c["cn0_gps_dbhz"][40:45] = 34.0
    c["cn0_bds_dbhz"][40:45] = np.nan
    whole = check_integrity(c, IntegrityState())
    st = IntegrityState()
    parts = [check_integrity({k: v[s] for k, v in c.items()}, st)
             for s in (slice(0, 42), slice(42, 60))]
    np.testing.assert_allclose(np.concatenate([p.cn0_drop_db for p in parts]),
                               whole.cn0_drop_db)
    assert found(AnomalyBatch.concat([p.anomalies for p in parts])) == [(40, "jamming")]


def test_interleaved_devices_and_skipped_rows() -> None:
    a, b = sky(50, dev=0), sky(50, dev=1)
    b["cn0_gps_dbhz"][45:] = 30.0
    b["cn0_bds_dbhz"][45:] = np.nan
    a["flags"][44] = FixFlag.DUPLICATE
    a["cn0_gps_dbhz"][44] = 10.0             # a duplicate is not scored
    both = {k: np.concatenate([a[k], b[k]]) for k in a}
    perm = np.random.default_rng(3).permutation(100)
    r = check_integrity({k: v[perm] for k, v in both.items()}, IntegrityState())
    assert [(int(d), int(t) // US) for d, t in zip(r.anomalies.device, r.anomalies.time,
                                                   strict=True)] == [(1, 45)]
    inv = np.argsort(perm)
    assert r.cn0_drop_db[inv][44] == 0.0
    assert r.cn0_drop_db[inv][95] == pytest.approx(12.0)


def test_thresholds_are_separate_from_scores() -> None:
    c = sky(40)
    c["cn0_gps_dbhz"][35] = 34.0
    c["cn0_bds_dbhz"][35] = np.nan
    strict = check_integrity(c, IntegrityState(), config=IntegrityConfig(jam_cn0_drop_db=9.0))
    loose = check_integrity(c, IntegrityState())
    np.testing.assert_array_equal(strict.cn0_drop_db, loose.cn0_drop_db)
    assert len(strict.anomalies) == 0 and len(loose.anomalies) == 1


def test_no_sky_data_scores_zero() -> None:
    c = empty_columns(POSITION_COLUMNS, 3)
    c["device"] = np.zeros(3, np.int32)
    c["time"] = np.arange(3) * US
    r = check_integrity(c, IntegrityState())
    assert r.cn0_drop_db.tolist() == [0.0] * 3 and len(r.anomalies) == 0


def test_constellation_columns_cover_all() -> None:
    assert {f"sv_{c}" for c in CONSTELLATIONS} <= set(sky(1))
