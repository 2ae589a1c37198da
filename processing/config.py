"""Configuration of the movement, GNSS integrity, sensor and RFID detectors.

Frozen dataclasses with every default in code. Scoring parameters (baselines, warm-up)
and deciding parameters (thresholds) are separate fields: a detector's score never
depends on a threshold, so a threshold can be changed without touching the scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from fnmatch import fnmatchcase
from math import inf, isnan


class DeviceKind(IntEnum):
    """Kind code of a tracked device (from ``devices.kind``); it selects the speed bound."""

    ROAD = 0
    VESSEL = 1
    RAIL = 2
    CRANE = 3


def _speed_bounds() -> dict[str, float]:
    return {"road": 250.0, "vessel": 60.0, "rail": 350.0, "crane": 30.0}


@dataclass(frozen=True, slots=True, kw_only=True)
class MovementConfig:
    """Plausibility checks of position fixes (see ``processing.movement``)."""

    #: Highest plausible speed per device kind name (a ``DeviceKind`` member, lower case).
    max_speed_kmh: Mapping[str, float] = field(default_factory=_speed_bounds)
    #: Speed bound of devices of no or an unknown kind.
    default_max_speed_kmh: float = 250.0
    #: Displacements up to this are never jumps, whatever the time between fixes (GNSS noise).
    min_jump_m: float = 50.0
    #: This many consecutive jumps, each consistent with the one before, relocate the device.
    relocate_after: int = 3
    #: |lat| and |lon| both below this (degrees) is a receiver's default position.
    null_island_deg: float = 1e-4
    #: Device time ahead of arrival by more than this is ``clock_future``.
    future_tolerance_s: float = 300.0
    #: HDOP above this (or fix quality 0) is a poor fix.
    max_hdop: float = 5.0
    #: Below this speed for ``stop_min_s`` the device is stopped.
    stop_speed_mps: float = 0.5
    stop_min_s: float = 60.0
    #: At or above this speed for ``move_min_s`` the device is moving.
    move_speed_mps: float = 2.0
    move_min_s: float = 10.0
    #: A device silent for longer than this is ``offline``.
    offline_silence_s: float = 300.0

    def __post_init__(self) -> None:
        names = {k.name.lower() for k in DeviceKind}
        unknown = sorted(set(self.max_speed_kmh) - names)
        if unknown:
            raise ValueError(f"max_speed_kmh: unknown device kind {unknown[0]!r}")
        if self.relocate_after < 2:
            raise ValueError("relocate_after must be >= 2")
        if not 0 <= self.stop_speed_mps <= self.move_speed_mps:
            raise ValueError("need 0 <= stop_speed_mps <= move_speed_mps")

    def speed_bounds_mps(self) -> list[float]:
        """Speed bound in m/s per ``DeviceKind`` code."""
        return [self.max_speed_kmh.get(k.name.lower(), self.default_max_speed_kmh) / 3.6
                for k in DeviceKind]


@dataclass(frozen=True, slots=True, kw_only=True)
class IntegrityConfig:
    """Jamming and spoofing heuristics (see ``processing.integrity``)."""

    #: EWMA weight of one fix in the per-device sky baseline (C/N0, satellites, spread).
    alpha: float = 0.01
    #: Fixes with sky data before a device's scores leave neutral 0.
    warmup_fixes: int = 30
    #: C/N0 assumed when satellites are in view but none is tracked (dB-Hz).
    lost_cn0_dbhz: float = 20.0
    #: Fixes more than this below the baseline C/N0 do not update the baselines (scoring
    #: robustness: a jammed sky must not become the normal one).
    learn_gate_db: float = 6.0
    #: Jamming: C/N0 drop at least this (dB-Hz) ...
    jam_cn0_drop_db: float = 6.0
    #: ... and at least this fraction of the tracked satellites lost, or a drop of at
    #: least ``jam_cn0_only_db`` whatever the satellites.
    jam_sat_drop: float = 0.3
    jam_cn0_only_db: float = 10.0
    #: A jamming episode ends when the C/N0 drop falls below this (dB-Hz).
    jam_clear_db: float = 3.0
    #: Spoofing: a JUMP fix whose C/N0 uniformity score reaches this (dB).
    spoof_min_db: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        if self.jam_clear_db > self.jam_cn0_drop_db:
            raise ValueError("jam_clear_db must be <= jam_cn0_drop_db")


#: Kinds a sensor rule's hold condition may report.
HOLD_KINDS: tuple[str, ...] = ("cold_chain_excursion", "door_open")


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorRule:
    """Checks of the metrics whose name matches ``pattern`` (``fnmatch``, case-sensitive).

    Infinite limits and zero windows disable a check.
    """

    pattern: str = "*"
    #: Hard limits: a value outside [min_value, max_value] is ``out_of_range``.
    min_value: float = -inf
    max_value: float = inf
    #: Largest plausible |change| per second between consecutive samples.
    max_rate_per_s: float = inf
    #: ``stuck``: the value unchanged (within ``stuck_eps``) for at least this many
    #: samples spanning at least ``stuck_s`` seconds (either 0 = that part not required).
    stuck_samples: int = 0
    stuck_s: float = 0.0
    stuck_eps: float = 0.0
    #: Statistical score: EWMA mean and noise variance with this weight per sample ...
    ewma_alpha: float = 0.05
    #: ... neutral 0 for the first ``warmup`` samples (>= 2), the noise std floored at
    #: ``min_std`` (the sensor's resolution, in its unit).
    warmup: int = 30
    min_std: float = 0.01
    #: Robust learning: readings scoring at least ``outlier_z`` move the mean with
    #: ``ewma_alpha * outlier_weight`` only, so an anomaly does not become the new normal
    #: at once (a lasting change is still learned, ``1 / outlier_weight`` times slower).
    outlier_z: float = 4.0
    outlier_weight: float = 0.1
    #: Deciding: an episode starts at score >= z_threshold and ends below z_clear.
    z_threshold: float = 6.0
    z_clear: float = 3.0
    #: Hold condition: the value outside [hold_low, hold_high] for ``hold_s`` seconds is
    #: reported once as ``hold_kind`` ("" disables).
    hold_kind: str = ""
    hold_low: float = -inf
    hold_high: float = inf
    hold_s: float = 0.0

    def __post_init__(self) -> None:
        if self.hold_kind and self.hold_kind not in HOLD_KINDS:
            raise ValueError(f"{self.pattern}: hold_kind must be one of {HOLD_KINDS}")
        if not 0 < self.ewma_alpha <= 1:
            raise ValueError(f"{self.pattern}: ewma_alpha must be in (0, 1]")
        if not 0 <= self.outlier_weight <= 1:
            raise ValueError(f"{self.pattern}: outlier_weight must be in [0, 1]")
        if self.warmup < 2:
            raise ValueError(f"{self.pattern}: warmup must be >= 2")
        if self.z_clear > self.z_threshold:
            raise ValueError(f"{self.pattern}: z_clear must be <= z_threshold")
        if any(isnan(v) for v in (self.min_value, self.max_value, self.max_rate_per_s)):
            raise ValueError(f"{self.pattern}: limits must not be NaN")

    @property
    def stuck_enabled(self) -> bool:
        """Whether the stuck check runs."""
        return self.stuck_samples > 0 or self.stuck_s > 0


def _default_rules() -> tuple[SensorRule, ...]:
    return (
        SensorRule(pattern="door_open", hold_kind="door_open", hold_low=0.0, hold_high=0.5,
                   hold_s=300.0, z_threshold=inf, z_clear=inf),
        # the reefer/cold-chain temperature: pharma band 2-8 degC, 30 min excursion
        SensorRule(pattern="temp_c", min_value=-60.0, max_value=80.0, max_rate_per_s=0.5,
                   stuck_samples=60, stuck_s=3600.0, hold_kind="cold_chain_excursion",
                   hold_low=2.0, hold_high=8.0, hold_s=1800.0),
        SensorRule(pattern="*temp_c", min_value=-60.0, max_value=150.0,
                   stuck_samples=60, stuck_s=3600.0),
        SensorRule(pattern="*"),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorConfig:
    """Sensor rules, first match by metric name wins; unmatched metrics use ``SensorRule()``."""

    rules: tuple[SensorRule, ...] = field(default_factory=_default_rules)

    def rule_index(self, name: str) -> int:
        """Index of the first rule matching ``name`` (``len(rules)`` for the built-in default)."""
        for i, rule in enumerate(self.rules):
            if fnmatchcase(name, rule.pattern):
                return i
        return len(self.rules)

    def all_rules(self) -> tuple[SensorRule, ...]:
        """The rules followed by the built-in default."""
        return (*self.rules, SensorRule())


@dataclass(frozen=True, slots=True, kw_only=True)
class RfidConfig:
    """RFID read checks (see ``processing.rfid_checks``)."""

    #: A read of a tag by the reader that read it last, within this many seconds of that
    #: read, is a duplicate (``first_in_window`` False): a tag in the field is one event.
    dedup_window_s: float = 5.0
    #: Highest plausible speed of a tag between readers.
    max_speed_kmh: float = 150.0
    #: Readers closer than this never make an impossible trip (survey error, overlap).
    min_distance_m: float = 100.0
    #: Allowed clock disagreement between readers, added to the elapsed time.
    time_slack_s: float = 2.0
