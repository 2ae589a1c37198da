"""GNSS integrity: likely jamming and likely spoofing from each fix's sky summary.

A position row carries, per constellation, the satellites in view (``sv_<c>``, from GSV)
and the mean C/N0 of the tracked ones (``cn0_<c>_dbhz``). Per fix this module derives

* tracked satellites: the satellites in view of the constellations that have a C/N0
  (a constellation listed in view without any C/N0 tracks nothing);
* mean C/N0: the mean of the constellation means, weighted by satellites in view; when
  satellites are in view but none is tracked, ``lost_cn0_dbhz`` (a typical tracking floor);
* spread: the highest minus the lowest constellation mean (defined with >= 2 tracked).

Each device has an EWMA baseline of these (weight ``alpha`` per fix, first fix
initialises it). It learns only from fixes that track satellites and are not more than
``learn_gate_db`` below it, so neither a total loss nor a long jamming episode drags it
down (which fixes those are is settled by a few vectorised passes to a fixed point).
Scores compare a fix with the baseline before it and are neutral 0 for the first
``warmup_fixes`` learning fixes of a device (River's contract: scores only; the
thresholds below decide separately).

* ``cn0_drop_db`` = baseline C/N0 - mean C/N0 (>= 0) and ``sat_drop`` = 1 - tracked /
  baseline tracked (0..1). A ``jamming`` anomaly (score: the C/N0 drop in dB-Hz) starts
  when the drop reaches ``jam_cn0_drop_db`` and ``sat_drop`` reaches ``jam_sat_drop``, or
  the drop alone reaches ``jam_cn0_only_db``; the episode lasts until the drop falls
  below ``jam_clear_db`` and is reported once.
* ``uniformity_db`` = max(0, mean C/N0 - baseline) + max(0, baseline spread - spread)
  (the second term only when both spreads are defined). A ``spoofing`` anomaly (score:
  uniformity_db) is a JUMP fix (``processing.movement``) with uniformity_db >=
  ``spoof_min_db``: a simulator transmits every PRN at about one power, often above the
  real sky, so constellation means converge and rise just as the position leaps.

Limits: blockage (tunnels, warehouses, container stacks) collapses C/N0 and satellites
like a jammer; without receiver AGC or per-satellite C/N0 the two cannot be told apart
here. A receiver tracking one constellation has no spread, so only the C/N0 rise counts.
A spoofer that drags the position slowly (no jump) is not caught, nor one that mimics the
real sky's power levels. Constellations partly tracked count all their satellites in view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from beiflow.processing.config import IntegrityConfig
from beiflow.processing.events import AnomalyBatch
from beiflow.processing.movement import (
    anomaly_rows,
    details,
    ewma_scan,
    group_starts,
    grown,
    last_of_group,
    latch,
    run_starts,
)
from beiflow.schemas.columns import CONSTELLATIONS, FixFlag

_SKIP = int(FixFlag.DUPLICATE | FixFlag.TIME_BACKWARDS)
#: At most this many passes to settle which fixes the baselines learn from.
_GATE_PASSES = 4

#: (name, dtype, fill) of each per-device state array.
_STATE_FIELDS: tuple[tuple[str, type, object], ...] = (
    ("n", np.int64, 0), ("cn0", np.float64, np.nan), ("sats", np.float64, np.nan),
    ("spread_n", np.int64, 0), ("spread", np.float64, np.nan), ("jam", np.bool_, False),
)

DEFAULT_CONFIG = IntegrityConfig()


class IntegrityState:
    """Per-device sky baselines (``n`` fixes seen, EWMA ``cn0``, ``sats``, ``spread``) and
    whether a jamming episode is in progress; arrays by dense device index, grown on demand."""

    __slots__ = tuple(f[0] for f in _STATE_FIELDS)
    n: np.ndarray
    cn0: np.ndarray
    sats: np.ndarray
    spread_n: np.ndarray
    spread: np.ndarray
    jam: np.ndarray

    def __init__(self) -> None:
        for name, dtype, _ in _STATE_FIELDS:
            setattr(self, name, np.empty(0, dtype=dtype))

    def __len__(self) -> int:
        return int(self.n.size)

    def reserve(self, devices: int) -> None:
        """Make room for device indexes below ``devices``."""
        if devices > len(self):
            for name, _, fill in _STATE_FIELDS:
                setattr(self, name, grown(getattr(self, name), devices, fill))


@dataclass(frozen=True, slots=True)
class IntegrityResult:
    """Per input row scores (0 where the row has no sky data or the device warms up)."""

    cn0_drop_db: np.ndarray
    sat_drop: np.ndarray
    uniformity_db: np.ndarray
    anomalies: AnomalyBatch


@dataclass(frozen=True, slots=True)
class Sky:
    """Per-fix sky summary: rows with sky data, tracked satellites, mean C/N0, spread."""

    present: np.ndarray
    tracked: np.ndarray
    cn0: np.ndarray
    spread: np.ndarray


def sky_summary(pos: dict[str, np.ndarray], lost_cn0_dbhz: float) -> Sky:
    """The sky summary of each row of a position batch (see the module docstring)."""
    sv = np.stack([pos[f"sv_{c}"] for c in CONSTELLATIONS], axis=1).astype(np.float64)
    cn0 = np.stack([pos[f"cn0_{c}_dbhz"] for c in CONSTELLATIONS], axis=1)
    listed = sv > 0
    tracked_c = listed & np.isfinite(cn0)
    present = (sv >= 0).any(axis=1) | np.isfinite(cn0).any(axis=1)
    weight = np.where(tracked_c, sv, 0.0)
    tracked = weight.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (weight * np.where(tracked_c, cn0, 0.0)).sum(axis=1) / tracked
    mean = np.where(tracked > 0, mean, np.where(present, lost_cn0_dbhz, np.nan))
    hi = np.where(tracked_c, cn0, -np.inf).max(axis=1)
    lo = np.where(tracked_c, cn0, np.inf).min(axis=1)
    spread = np.where(tracked_c.sum(axis=1) >= 2, hi - lo, np.nan)
    return Sky(present, tracked, mean, spread)


def check_integrity(pos: dict[str, np.ndarray], state: IntegrityState, *,
                    flags: np.ndarray | None = None,
                    config: IntegrityConfig | None = None) -> IntegrityResult:
    """Score jamming and spoofing per fix, report episodes, update ``state``.

    ``flags`` are the rows' flags after ``check_movement`` (JUMP, DUPLICATE,
    TIME_BACKWARDS); by default ``pos["flags"]``. Duplicate and late fixes are not scored.
    """
    cfg = config or DEFAULT_CONFIG
    n = pos["time"].size
    zeros = np.zeros(n)
    flags = pos["flags"] if flags is None else flags
    sky = sky_summary(pos, cfg.lost_cn0_dbhz)
    rows = np.flatnonzero(sky.present & ((flags & _SKIP) == 0))
    if not rows.size:
        return IntegrityResult(zeros, zeros.copy(), zeros.copy(), AnomalyBatch.empty())
    device = pos["device"].astype(np.intp)
    state.reserve(int(device.max()) + 1)
    rows = rows[np.lexsort((pos["time"][rows], device[rows]))]
    d, t = device[rows], pos["time"][rows]
    first = group_starts(d)
    cn0, tracked, spread = sky.cn0[rows], sky.tracked[rows], sky.spread[rows]
    live = tracked > 0
    a = cfg.alpha
    learn = live
    for _ in range(_GATE_PASSES):             # fixed point of the learning gate
        seen, base_cn0, cn0_after = ewma_scan(cn0, learn, first, a, state.n[d], state.cn0[d])
        gated = live & ~(base_cn0 - cn0 > cfg.learn_gate_db)
        if (gated == learn).all():
            break
        learn = gated
    _, base_sats, sats_after = ewma_scan(tracked, learn, first, a, state.n[d], state.sats[d])
    has_spread = learn & np.isfinite(spread)
    spread_seen, base_spread, spread_after = ewma_scan(
        spread, has_spread, first, a, state.spread_n[d], state.spread[d])

    warm = seen < cfg.warmup_fixes
    drop = np.where(warm, 0.0, np.maximum(base_cn0 - cn0, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        lost = np.clip(1.0 - tracked / base_sats, 0.0, 1.0)
    sat_drop = np.where(warm | ~(base_sats > 0), 0.0, lost)
    collapse = np.where(np.isfinite(spread) & (spread_seen > 0), base_spread - spread, 0.0)
    uniform = np.where(warm, 0.0, np.maximum(cn0 - base_cn0, 0.0) + np.maximum(collapse, 0.0))

    jam_on = ((drop >= cfg.jam_cn0_drop_db) & (sat_drop >= cfg.jam_sat_drop)
              | (drop >= cfg.jam_cn0_only_db))
    jam = latch(jam_on, drop < cfg.jam_clear_db, first, state.jam[d])
    start = np.flatnonzero(run_starts(jam, first, state.jam[d]))
    spoof = np.flatnonzero(((flags[rows] & int(FixFlag.JUMP)) != 0)
                           & (uniform >= cfg.spoof_min_db))

    last = last_of_group(first)
    dl = d[last]
    state.n[dl] = seen[last] + learn[last]
    state.cn0[dl], state.sats[dl] = cn0_after[last], sats_after[last]
    state.spread_n[dl] = spread_seen[last] + has_spread[last]
    state.spread[dl] = spread_after[last]
    state.jam[dl] = jam[last]

    parts = [
        anomaly_rows(t[start], d[start], "nmea", "jamming", drop[start],
                   details(cn0_dbhz=np.round(cn0[start], 2),
                           baseline_dbhz=np.round(base_cn0[start], 2),
                           tracked=tracked[start], baseline_tracked=np.round(base_sats[start], 2))),
        anomaly_rows(t[spoof], d[spoof], "nmea", "spoofing", uniform[spoof],
                   details(cn0_dbhz=np.round(cn0[spoof], 2),
                           baseline_dbhz=np.round(base_cn0[spoof], 2),
                           spread_db=np.round(spread[spoof], 2),
                           baseline_spread_db=np.round(base_spread[spoof], 2))),
    ]
    drop_out, sat_out, uniform_out = zeros, zeros.copy(), zeros.copy()
    drop_out[rows], sat_out[rows], uniform_out[rows] = drop, sat_drop, uniform
    return IntegrityResult(drop_out, sat_out, uniform_out, AnomalyBatch.concat(parts))
