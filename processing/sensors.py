"""Sensor detectors: per (device, metric) checks, online and vectorised over a batch.

A reading batch has the ``SENSOR_COLUMNS`` plus ``device`` and ``metric`` (a code into
the metric-name table ``names``). Each metric follows the first ``SensorRule`` whose
pattern matches its name (``SensorConfig``). State lives per (device, metric) pair in
``SensorState``: a sorted registry of int64 keys ``device << 32 | metric`` maps a pair to a
dense slot (looked up with ``np.searchsorted`` for the batch's distinct pairs only), and
per-slot arrays hold the running values. Readings without a value (NaN) are skipped.
Within a batch a pair's readings are taken in time order.

Anomaly kinds (stream ``sensor``), scores, and how often they are reported:

* ``out_of_range``: distance beyond the violated hard limit, in the metric's unit; once
  per episode of consecutive out-of-range readings.
* ``rate_of_change``: |change| per second / ``max_rate_per_s``; every offending reading.
* ``stuck``: samples in the unchanged run when it reaches both ``stuck_samples`` and
  ``stuck_s``; once per run.
* ``statistical``: the z-score |x - mean| / noise std, both from before the reading: the
  EWMA mean (``ewma_alpha`` per sample) and the EWMA of half the squared change between
  consecutive samples (same weight, bias-corrected; std floored at ``min_std``, the
  sensor's resolution). Measuring noise on successive changes keeps a lagging mean from
  inflating it, so ramps and level shifts score high until the mean catches up, as spikes
  do. Learning is robust: readings out of range or changing too fast (known bad) teach
  neither estimate, so a glitch does not blind the detector for hours; readings scoring
  ``outlier_z`` teach the mean ``outlier_weight`` times as fast (a vectorised fixed point,
  iterated until it equals the sequential result, so batching changes nothing), so the
  end of an anomaly is not a second one. The score is
  returned for every reading and is neutral 0 during the first
  ``warmup`` samples; deciding is separate: an episode starts at ``z_threshold`` and ends
  below ``z_clear``, reported once at its start.
* ``cold_chain_excursion`` / ``door_open`` (a rule's ``hold_kind``): seconds outside
  [hold_low, hold_high] when that reaches ``hold_s``; once per excursion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from beiflow.processing.config import SensorConfig
from beiflow.processing.events import AnomalyBatch
from beiflow.processing.movement import (
    NO_TIME,
    US,
    affine_scan,
    anomaly_rows,
    count_before,
    details,
    ewma_scan,
    ffill_index,
    group_starts,
    grown,
    iso_times,
    last_of_group,
    latch,
    prev_in_group,
    rank_in_group,
    run_starts,
)

DEFAULT_CONFIG = SensorConfig()

#: (name, dtype, fill) of each per-slot state array.
_STATE_FIELDS: tuple[tuple[str, type, object], ...] = (
    ("last_t", np.int64, NO_TIME), ("last_v", np.float64, np.nan), ("n", np.int64, 0),
    ("mean", np.float64, np.nan), ("noise", np.float64, 0.0), ("steps", np.int64, 0),
    ("last_ok", np.bool_, False), ("z_on", np.bool_, False),
    ("range_on", np.bool_, False), ("run_n", np.int64, 0), ("run_since", np.int64, NO_TIME),
    ("run_sent", np.bool_, False), ("hold_since", np.int64, NO_TIME),
    ("hold_sent", np.bool_, False),
)


class SensorState:
    """Per (device, metric) state: the key registry and per-slot arrays (grown on demand).

    ``rule_of_metric`` caches the rule index of each metric code for ``rules_for``, and
    ``table`` its rule parameters as arrays.
    """

    __slots__ = ("keys", "rule_of_metric", "rules_for", "size", "slot_of", "table",
                 *(f[0] for f in _STATE_FIELDS))
    last_t: np.ndarray
    last_v: np.ndarray
    n: np.ndarray
    mean: np.ndarray
    noise: np.ndarray
    steps: np.ndarray
    last_ok: np.ndarray
    z_on: np.ndarray
    range_on: np.ndarray
    run_n: np.ndarray
    run_since: np.ndarray
    run_sent: np.ndarray
    hold_since: np.ndarray
    hold_sent: np.ndarray

    def __init__(self) -> None:
        self.keys = np.empty(0, np.int64)
        self.slot_of = np.empty(0, np.int64)
        self.size = 0
        self.rule_of_metric = np.empty(0, np.int64)
        self.rules_for: SensorConfig | None = None
        self.table: _Table | None = None
        for name, dtype, _ in _STATE_FIELDS:
            setattr(self, name, np.empty(0, dtype=dtype))

    def __len__(self) -> int:
        return self.size

    def slots(self, keys: np.ndarray) -> np.ndarray:
        """Slot of each of the sorted distinct ``keys``, registering new pairs."""
        pos = np.searchsorted(self.keys, keys)
        found = pos < self.keys.size
        found[found] = self.keys[pos[found]] == keys[found]
        if not found.all():
            new = keys[~found]
            self.keys = np.insert(self.keys, pos[~found], new)
            self.slot_of = np.insert(self.slot_of, pos[~found],
                                     np.arange(self.size, self.size + new.size))
            self.size += new.size
            for name, _, fill in _STATE_FIELDS:
                setattr(self, name, grown(getattr(self, name), self.size, fill))
            pos = np.searchsorted(self.keys, keys)
        return self.slot_of[pos]

    def rules(self, metric: np.ndarray, names: Sequence[str],
              config: SensorConfig) -> tuple[np.ndarray, _Table]:
        """Rule index of each metric code (names resolved once per code and config), and
        the rule parameters."""
        if self.table is None or self.rules_for is not config:
            self.rules_for, self.rule_of_metric = config, np.empty(0, np.int64)
            self.table = _table(config)
        have = self.rule_of_metric.size
        need = int(metric.max()) + 1 if metric.size else 0
        if need > have:
            extra = [config.rule_index(names[i]) for i in range(have, need)]
            self.rule_of_metric = np.concatenate([self.rule_of_metric, extra]).astype(np.int64)
        return self.rule_of_metric[metric], self.table


@dataclass(frozen=True, slots=True)
class SensorResult:
    """Per input row the statistical score (0 in warm-up and for NaN values); anomalies."""

    score: np.ndarray
    anomalies: AnomalyBatch


@dataclass(frozen=True, slots=True)
class _Table:
    """Rule parameters as arrays indexed by rule index."""

    min_value: np.ndarray
    max_value: np.ndarray
    max_rate: np.ndarray
    stuck_on: np.ndarray
    stuck_n: np.ndarray
    stuck_us: np.ndarray
    stuck_eps: np.ndarray
    alpha: np.ndarray
    warmup: np.ndarray
    min_std: np.ndarray
    z_on: np.ndarray
    z_off: np.ndarray
    hold_on: np.ndarray
    hold_low: np.ndarray
    hold_high: np.ndarray
    hold_us: np.ndarray
    hold_kind: np.ndarray
    outlier_z: np.ndarray
    outlier_weight: np.ndarray


#: At most this many passes to settle which readings are outliers for the mean.
#: Readings beyond this magnitude (no physical quantity in any unit we take) never feed
#: the statistical baselines: squared steps would overflow and poison them for good.
_LEARN_MAX = 1e150


def _table(config: SensorConfig) -> _Table:
    r = config.all_rules()

    def col(f: str, dtype: type = np.float64) -> np.ndarray:
        return np.array([getattr(x, f) for x in r], dtype=dtype)

    return _Table(
        col("min_value"), col("max_value"), col("max_rate_per_s"),
        np.array([x.stuck_enabled for x in r]), np.maximum(col("stuck_samples", np.int64), 2),
        col("stuck_s") * US, col("stuck_eps"), col("ewma_alpha"), col("warmup", np.int64),
        col("min_std"), col("z_threshold"), col("z_clear"),
        np.array([bool(x.hold_kind) for x in r]), col("hold_low"), col("hold_high"),
        col("hold_s") * US, col("hold_kind", object), col("outlier_z"), col("outlier_weight"))


def check_sensors(readings: dict[str, np.ndarray], names: Sequence[str], state: SensorState, *,
                  config: SensorConfig | None = None) -> SensorResult:
    """Score and check a reading batch, update ``state``; the input is not modified."""
    cfg = config or DEFAULT_CONFIG
    value = readings["value"]
    score_out = np.zeros(value.size)
    idx = np.flatnonzero(np.isfinite(value))
    if not idx.size:
        return SensorResult(score_out, AnomalyBatch.empty())
    keys = (readings["device"][idx].astype(np.int64) << 32) | readings["metric"][idx].astype(
        np.int64)
    perm = np.lexsort((readings["time"][idx], keys))
    idx, sk = idx[perm], keys[perm]
    first = group_starts(sk)
    slot = state.slots(sk[first])[np.cumsum(first) - 1]
    metric = readings["metric"][idx]
    rule, tab = state.rules(metric, names, cfg)
    t, v = readings["time"][idx], value[idx]
    dev = readings["device"][idx]
    last = last_of_group(first)
    ls = slot[last]
    name_of = np.asarray(list(names), dtype=object)

    def emit(kind: str | np.ndarray, rows: np.ndarray, score: np.ndarray,
             **extra: np.ndarray) -> AnomalyBatch:
        return anomaly_rows(t[rows], dev[rows], "sensor", kind, score[rows],
                            details(metric=name_of[metric[rows]], value=v[rows], **extra))

    parts = []
    # hard limits
    lo, hi = tab.min_value[rule], tab.max_value[rule]
    out = (v < lo) | (v > hi)
    start = np.flatnonzero(run_starts(out, first, state.range_on[slot]))
    if start.size:
        excess = np.maximum(lo - v, v - hi)
        parts.append(emit("out_of_range", start, excess, min=lo[start], max=hi[start]))
    state.range_on[ls] = out[last]

    # rate of change
    pv = prev_in_group(v, first, state.last_v[slot])
    pt = prev_in_group(t, first, state.last_t[slot])
    dt = np.where(pt == NO_TIME, 0, t - pt) / US
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        rate = np.abs(v - pv) / dt
        ratio = rate / tab.max_rate[rule]
    fast_row = (dt > 0) & (ratio > 1.0)
    fast = np.flatnonzero(fast_row)
    if fast.size:
        parts.append(emit("rate_of_change", fast, ratio, rate_per_s=rate[fast]))

    # stuck value
    with np.errstate(over="ignore"):
        same = tab.stuck_on[rule] & (np.abs(v - pv) <= tab.stuck_eps[rule])
    marker = first | ~same
    m = ffill_index(marker)
    base_n = np.where(same, state.run_n[slot] + 1, 1)
    base_since = np.where(same, state.run_since[slot], t)
    run_n = base_n[m] + (np.arange(v.size) - m)
    since = base_since[m]
    stuck = same & (run_n >= tab.stuck_n[rule]) & (t - since >= tab.stuck_us[rule])
    was = np.where(marker & ~same, False, prev_in_group(stuck, first, state.run_sent[slot]))
    hit = np.flatnonzero(stuck & ~was)
    if hit.size:
        parts.append(emit("stuck", hit, run_n.astype(np.float64), since=iso_times(since[hit])))
    state.run_n[ls], state.run_since[ls] = run_n[last], since[last]
    state.run_sent[ls] = stuck[last]

    # hold condition (cold chain band, door open)
    outside = tab.hold_on[rule] & ((v < tab.hold_low[rule]) | (v > tab.hold_high[rule]))
    begin = run_starts(outside, first, state.hold_since[slot] != NO_TIME)
    hold_since = np.where(begin, t, state.hold_since[slot])[ffill_index(begin | first)]
    held = outside & (t - hold_since >= tab.hold_us[rule])
    was = np.where(begin, False, prev_in_group(held, first, state.hold_sent[slot]))
    hit = np.flatnonzero(held & ~was)
    if hit.size:
        secs = (t - hold_since) / US
        parts.append(emit(tab.hold_kind[rule[hit]], hit, secs, since=iso_times(hold_since[hit]),
                          low=tab.hold_low[rule[hit]], high=tab.hold_high[rule[hit]]))
    state.hold_since[ls] = np.where(outside[last], hold_since[last], NO_TIME)
    state.hold_sent[ls] = held[last]

    # statistical score (EWMA mean and variance), then the separate threshold step
    learn = ~out & ~fast_row & (np.abs(v) <= _LEARN_MAX)
    score = _zscore(v, pv, learn, first, slot, rule, tab, state, last)
    on = latch(score >= tab.z_on[rule], score < tab.z_off[rule], first, state.z_on[slot])
    start = np.flatnonzero(run_starts(on, first, state.z_on[slot]))
    if start.size:
        parts.append(emit("statistical", start, score))
    state.z_on[ls] = on[last]
    state.last_t[ls], state.last_v[ls] = t[last], v[last]
    score_out[idx] = score
    return SensorResult(score_out, AnomalyBatch.concat(parts))


def _zscore(v: np.ndarray, pv: np.ndarray, learn: np.ndarray, first: np.ndarray,
            slot: np.ndarray, rule: np.ndarray, tab: _Table, state: SensorState,
            last: np.ndarray) -> np.ndarray:
    """|x - mean| / noise std before each reading; 0 during warm-up. Updates the state.

    Only ``learn`` readings (and steps between two of them) update the baselines; which
    of them are outliers for the mean is a fixed point, iterated to the sequential result.
    """
    alpha = tab.alpha[rule]
    rank = rank_in_group(first)
    seen = state.n[slot] + count_before(learn, first)
    step = learn & (seen > 0) & prev_in_group(learn, first, state.last_ok[slot])
    a = np.where(step, 1.0 - alpha, 1.0)
    with np.errstate(over="ignore"):  # only in rows that are no step
        b = np.where(step, alpha * 0.5 * (v - pv) ** 2, 0.0)
    big_a, big_b = affine_scan(a, b, rank)
    noise_after = big_a * state.noise[slot] + big_b
    noise_before = prev_in_group(noise_after, first, state.noise[slot])
    steps = state.steps[slot] + count_before(step, first)
    with np.errstate(invalid="ignore", divide="ignore"):
        # bias correction of an EWMA started at 0 after ``steps`` updates
        std = np.sqrt(noise_before / (1.0 - (1.0 - alpha) ** steps))
    std = np.maximum(np.nan_to_num(std), tab.min_std[rule])
    warm = (seen < tab.warmup[rule]) | (steps == 0)
    outlier = np.zeros(v.size, dtype=bool)
    # each pass settles at least the next reading of every pair, so the fixed point (the
    # sequential result, whatever the batching) comes after at most rank.max() + 1 passes;
    # a few in practice, a dozen after a level shift
    for _ in range(int(rank.max(initial=0)) + 2):
        weight = np.where(outlier, alpha * tab.outlier_weight[rule], alpha)
        _, mean_before, mean_after = ewma_scan(v, learn, first, weight, state.n[slot],
                                               state.mean[slot])
        with np.errstate(over="ignore"):  # a reading near the double's limit: z is inf
            z = np.where(warm, 0.0, np.abs(v - mean_before) / std)
        again = learn & (z >= tab.outlier_z[rule])
        if (again == outlier).all():
            break
        outlier = again
    ls = slot[last]
    state.n[ls], state.mean[ls] = seen[last] + learn[last], mean_after[last]
    state.noise[ls], state.steps[ls] = noise_after[last], steps[last] + step[last]
    state.last_ok[ls] = learn[last]
    return z
