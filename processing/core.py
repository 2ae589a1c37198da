"""The processing core: every decoded batch passes through here between decode and sink.

Pure and synchronous. It owns the per-device state of every detector (arrays indexed
by the process's dense device index) and the current fence set, and turns batches of
fixes, readings and tag reads into flags, anomalies and geofence events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from beiflow.processing.config import (
    IntegrityConfig,
    MovementConfig,
    RfidConfig,
    SensorConfig,
)
from beiflow.processing.events import AnomalyBatch, GeofenceEventBatch
from beiflow.processing.geofence import (
    IGNORED_FLAGS,
    FenceDef,
    FenceSet,
    GeofenceState,
    geofence_events,
)
from beiflow.processing.integrity import IntegrityState, check_integrity
from beiflow.processing.movement import MovementState, check_movement, check_offline
from beiflow.processing.rfid_checks import RfidSites, RfidState, check_rfid
from beiflow.processing.sensors import SensorState, check_sensors
from beiflow.schemas.columns import FixFlag


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Configuration of every detector family."""

    movement: MovementConfig = field(default_factory=MovementConfig)
    integrity: IntegrityConfig = field(default_factory=IntegrityConfig)
    sensors: SensorConfig = field(default_factory=SensorConfig)
    rfid: RfidConfig = field(default_factory=RfidConfig)
    #: Consecutive fixes on the new side of a fence boundary before a transition.
    geofence_debounce: int = 3


@dataclass(frozen=True, slots=True)
class PositionsOut:
    """What the core found in a batch of fixes."""

    flags: np.ndarray
    anomalies: AnomalyBatch
    events: GeofenceEventBatch


def _no_sites() -> RfidSites:
    empty_f = np.empty(0, np.float64)
    empty_i = np.empty(0, np.int64)
    return RfidSites(empty_f, empty_f, empty_i, empty_i, np.empty(0, bool))


class Core:
    """Detector state and fences of one collector process."""

    def __init__(self, config: CoreConfig | None = None) -> None:
        self.config = config or CoreConfig()
        self.movement = MovementState()
        self.integrity = IntegrityState()
        self.sensors = SensorState()
        self.rfid = RfidState()
        self.geofence = GeofenceState()
        self.fences = FenceSet.build([])
        self.fence_ids: list[str] = []
        self.sites = _no_sites()
        #: Device index -> DeviceKind code (-1 unknown), set by the caller.
        self.device_kind = np.empty(0, dtype=np.int64)

    def set_fences(self, defs: Sequence[FenceDef]) -> int:
        """Switch to a new fence set, keeping memberships of fences that survive by id;
        returns how many memberships were dropped with their fences."""
        new_ids = [d.geofence_id for d in defs]
        dropped = self.geofence.remap_fences(self.fence_ids, new_ids)
        self.fences = FenceSet.build(defs)
        self.fence_ids = new_ids
        return dropped

    def positions(self, pos: dict[str, np.ndarray]) -> PositionsOut:
        """Movement and integrity checks, then geofence events on the checked flags."""
        kinds = self.device_kind if self.device_kind.size else None
        mv = check_movement(pos, self.movement, device_kind=kinds,
                            config=self.config.movement)
        it = check_integrity(pos, self.integrity, flags=mv.flags, config=self.config.integrity)
        events = GeofenceEventBatch.empty()
        if len(self.fences):
            # a fix from a clock running ahead must not move the device's time forward,
            # or its later, correct fixes would look out of order
            events = geofence_events(self.fences, self.geofence, pos["device"], pos["time"],
                                     pos["lon"], pos["lat"], pos["speed_mps"], mv.flags,
                                     debounce=self.config.geofence_debounce,
                                     ignore_flags=IGNORED_FLAGS | FixFlag.CLOCK_FUTURE)
        return PositionsOut(mv.flags, AnomalyBatch.concat([mv.anomalies, it.anomalies]),
                            events)

    def readings(self, readings: dict[str, np.ndarray], names: Sequence[str]) -> AnomalyBatch:
        """Sensor checks; the devices count as seen."""
        self.movement.touch(readings["device"], readings["received_at"])
        return check_sensors(readings, names, self.sensors, config=self.config.sensors).anomalies

    def reads(self, reads: dict[str, np.ndarray]) -> AnomalyBatch:
        """RFID checks; the readers count as seen."""
        self.movement.touch(reads["device"], reads["received_at"])
        return check_rfid(reads, self.rfid, self.sites, config=self.config.rfid).anomalies

    def seen(self, device: np.ndarray, received_at: np.ndarray) -> None:
        """Devices heard from on any stream (ends an offline episode)."""
        self.movement.touch(device, received_at)

    def offline(self, now_us: int, status_offline: np.ndarray | None = None) -> AnomalyBatch:
        """Devices silent too long or reported offline by their status topic."""
        return check_offline(self.movement, now_us,
                             silence_s=self.config.movement.offline_silence_s,
                             status_offline=status_offline)
