"""Sensor detectors: hand-worked checks per kind, state across batches, warm-up, NAB data."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from beiflow.processing.config import SensorConfig, SensorRule
from beiflow.processing.events import AnomalyBatch
from beiflow.processing.movement import US
from beiflow.processing.sensors import SensorState, check_sensors

LABELLED = Path(__file__).parent / "data" / "labelled"
OFF = {"z_threshold": math.inf, "z_clear": math.inf}


def readings(values, step_s: float = 60.0, dev=0, metric=0, t0_s: float = 0.0):
    v = np.asarray(values, np.float64)
    t = (t0_s + np.arange(v.size) * step_s) * US
    n = v.size
    return {"time": t.astype(np.int64), "received_at": t.astype(np.int64), "value": v,
            "device": np.broadcast_to(np.asarray(dev, np.int32), (n,)).copy(),
            "metric": np.broadcast_to(np.asarray(metric, np.int32), (n,)).copy()}


def one(rule: SensorRule, values, step_s: float = 60.0, names=("x",)):
    return check_sensors(readings(values, step_s), list(names), SensorState(),
                         config=SensorConfig(rules=(rule,)))


def found(a: AnomalyBatch) -> list[tuple[int, str]]:
    return [(int(t) // US, str(k)) for t, k in zip(a.time, a.kind, strict=True)]


def test_out_of_range_once_per_episode() -> None:
    r = one(SensorRule(min_value=0, max_value=10, **OFF), [5, 12, 13, 5, -1])
    assert found(r.anomalies) == [(60, "out_of_range"), (240, "out_of_range")]
    assert r.anomalies.score.tolist() == [2.0, 1.0]          # beyond the violated limit
    assert json.loads(r.anomalies.detail[0]) == {"metric": "x", "value": 12.0,
                                                 "min": 0.0, "max": 10.0}


def test_rate_of_change_per_second() -> None:
    r = one(SensorRule(max_rate_per_s=0.1, **OFF), [5, 5, 17, 17.5])
    assert found(r.anomalies) == [(120, "rate_of_change")]
    assert r.anomalies.score[0] == pytest.approx((12 / 60) / 0.1)        # 2.0


def test_stuck_value_once_per_run() -> None:
    rule = SensorRule(stuck_samples=3, stuck_s=120, **OFF)
    r = one(rule, [4, 4, 4, 4, 5, 5])
    assert found(r.anomalies) == [(120, "stuck")]
    assert r.anomalies.score[0] == 3.0                        # samples in the run
    # 3 samples but only 60 s apart in total: not yet stuck
    assert len(one(rule, [4, 4, 4], step_s=30).anomalies) == 0


def test_statistical_score_by_hand() -> None:
    rule = SensorRule(ewma_alpha=0.5, warmup=2, min_std=1e-9, z_threshold=3, z_clear=1)
    r = one(rule, [10, 12, 11, 20])
    # mean 10 -> 11 -> 11; noise EWMA of (dx^2)/2: 1.0 -> 0.75, bias-corrected by
    # 1 - 0.5^k: 2.0 before the third reading, 1.0 before the fourth: z = |20-11| / 1
    assert r.score.tolist() == pytest.approx([0.0, 0.0, 0.0, 9.0])
    assert found(r.anomalies) == [(180, "statistical")]
    assert r.anomalies.score[0] == pytest.approx(9.0)


def test_warm_up_is_neutral() -> None:
    rule = SensorRule(warmup=5, z_threshold=3, z_clear=1)
    r = one(rule, [1, 100, -50, 1e6, 3, 3.1, 2.9])
    assert (r.score[:5] == 0).all()
    assert all(t >= 300 for t, _ in found(r.anomalies))


def test_thresholds_do_not_change_scores() -> None:
    values = np.random.default_rng(2).normal(20, 1, 80)
    values[60] = 35
    lo = one(SensorRule(z_threshold=4, z_clear=2), values)
    hi = one(SensorRule(z_threshold=50, z_clear=2), values)
    np.testing.assert_array_equal(lo.score, hi.score)
    assert (3600, "statistical") in found(lo.anomalies)
    assert len(hi.anomalies) == 0


def test_cold_chain_excursion_once_after_hold_time() -> None:
    temps = [5, 9, 9, 9, 9, 9, 9, 9, 5, 9, 9, 5]               # every 5 minutes
    st = SensorState()
    r = check_sensors(readings(temps, 300), ["temp_c"], st)   # default rules
    assert found(r.anomalies) == [(2100, "cold_chain_excursion")]
    assert r.anomalies.score[0] == 1800.0
    detail = json.loads(r.anomalies.detail[0])
    assert detail["since"] == "1970-01-01T00:05:00.000Z"
    assert (detail["low"], detail["high"]) == (2.0, 8.0)


def test_door_open_too_long() -> None:
    r = check_sensors(readings([0, 1, 1, 1, 1, 0, 1, 1, 0], 100), ["door_open"],
                      SensorState())
    assert found(r.anomalies) == [(400, "door_open")]
    assert r.anomalies.score[0] == 300.0


def test_hold_and_stuck_carry_across_batches() -> None:
    temps = [5, 9, 9, 9, 9, 9, 9, 9, 5]
    st = SensorState()
    a = [check_sensors(readings(temps[s], 300, t0_s=300 * s.start), ["temp_c"], st).anomalies
         for s in (slice(0, 3), slice(3, 6), slice(6, 9))]
    assert found(AnomalyBatch.concat(a)) == [(2100, "cold_chain_excursion")]


def _batched_like_one_run(values: np.ndarray, name: str, cuts: list[int],
                          atol: float) -> AnomalyBatch:
    """Check that ``values`` cut into batches at ``cuts`` score and report exactly as one
    sequential run; the run's anomalies."""
    whole = check_sensors(readings(values), [name], SensorState())
    st = SensorState()
    parts = [check_sensors(readings(values[a:b], t0_s=60 * a), [name], st)
             for a, b in itertools.pairwise(cuts)]
    np.testing.assert_allclose(np.concatenate([p.score for p in parts]), whole.score,
                               rtol=1e-9, atol=atol)
    merged = AnomalyBatch.concat([p.anomalies for p in parts])
    assert sorted(found(merged)) == sorted(found(whole.anomalies))
    return whole.anomalies


def test_batches_equal_one_run() -> None:
    rng = np.random.default_rng(5)
    values = rng.normal(4, 0.3, 300)
    values[150:160] += 5
    values[200:270] = values[199]
    whole = _batched_like_one_run(values, "temp_c", [0, 1, 37, 150, 151, 299, 300], 1e-12)
    assert {"statistical", "stuck"} <= set(whole.kind)


def test_batches_equal_one_run_after_a_level_shift() -> None:
    """A lasting shift makes a long run of outliers for the robust mean: however the
    readings are batched, scores and anomalies are those of one sequential run."""
    rng = np.random.default_rng(5)
    for _ in range(6):
        values = rng.normal(230, 0.5, 2000)
        values[300:] += rng.uniform(2, 8)
        _batched_like_one_run(values, "voltage_v", [0, 100, 290, 305, 700, 1500, 2000], 1e-9)


def test_interleaved_pairs_match_separate_runs() -> None:
    rng = np.random.default_rng(6)
    names = ["temp_c", "humidity_pct"]
    series = {(d, m): rng.normal(5 + 20 * m, 0.5, 60) for d in (0, 7) for m in (0, 1)}
    series[(7, 1)][40] += 20
    alone = {k: check_sensors(readings(v, dev=k[0], metric=k[1]), names, SensorState())
             for k, v in series.items()}
    batch = [readings(v, dev=k[0], metric=k[1]) for k, v in series.items()]
    cols = {c: np.concatenate([b[c] for b in batch]) for c in batch[0]}
    perm = rng.permutation(cols["value"].size)
    mixed = check_sensors({c: v[perm] for c, v in cols.items()}, names, SensorState())
    inv = np.argsort(perm)
    np.testing.assert_allclose(mixed.score[inv],
                               np.concatenate([r.score for r in alone.values()]))
    expect = sorted((int(d), t, k) for (d, _), r in alone.items()
                    for (t, k), d in zip(found(r.anomalies), r.anomalies.device, strict=True))
    got = sorted((int(d), t, k) for (t, k), d in zip(found(mixed.anomalies),
                                                     mixed.anomalies.device, strict=True))
    assert got == expect and (7, 2400, "statistical") in got


def test_nan_values_are_skipped() -> None:
    rule = SensorRule(ewma_alpha=0.5, warmup=2, min_std=1e-9, z_threshold=3, z_clear=1)
    r = one(rule, [10, np.nan, 12, 11, np.nan, 20])
    assert r.score.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.0, 9.0])


def test_rules_first_match_wins() -> None:
    cfg = SensorConfig()
    assert [cfg.rule_index(n) for n in ("door_open", "temp_c", "oil_temp_c", "load_kw")] == [
        0, 1, 2, 3]
    custom = SensorConfig(rules=(SensorRule(pattern="load_*", max_value=5.0),))
    assert custom.rule_index("volts") == 1                    # the built-in default
    r = check_sensors(readings([1, 9], metric=[0, 1]), ["load_kw", "volts"], SensorState(),
                      config=custom)
    assert len(r.anomalies) == 0                               # volts: no limits
    r = check_sensors(readings([1, 9], metric=0), ["load_kw"], SensorState(), config=custom)
    assert found(r.anomalies) == [(60, "out_of_range")]


def test_many_pairs_register_and_grow() -> None:
    st = SensorState()
    dev = np.arange(5000, dtype=np.int32)
    check_sensors(readings(np.ones(5000), dev=dev), ["x"], st)
    check_sensors(readings(np.ones(5000), dev=dev[::-1] + 2500, t0_s=60), ["x"], st)
    assert len(st) == 7500
    assert st.n.sum() == 10_000


def test_nab_machine_temperature_window_is_found() -> None:
    """Public labelled data: every statistical alarm falls in NAB's labelled window."""
    rows = [line.split(",") for line in
            (LABELLED / "nab_machine_temperature_excerpt.csv").read_text().splitlines()[1:]]
    t = np.array([np.datetime64(r[0].replace(" ", "T"), "us").astype(np.int64) for r in rows])
    v = np.array([float(r[1]) for r in rows])
    labels = json.loads((LABELLED / "nab_machine_temperature_labels.json").read_text())
    (start, end), = labels["windows"]
    lo, hi = (np.datetime64(x.replace(" ", "T"), "us").astype(np.int64) for x in (start, end))
    st, found_t = SensorState(), []
    for i in range(0, v.size, 100):
        batch = readings(v[i:i + 100])
        batch["time"] = batch["received_at"] = t[i:i + 100]
        found_t += check_sensors(batch, ["temp"], st).anomalies.time.tolist()
    assert found_t and all(lo <= x <= hi for x in found_t)
