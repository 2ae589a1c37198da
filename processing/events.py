"""Columnar outputs of the core: anomalies and geofence events, ready for the sink."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class AnomalyBatch:
    """One row per detected anomaly (table ``anomalies``).

    ``kind`` is a snake_case label (also the metric label), ``stream`` one of
    ``nmea``/``sensor``/``rfid``/``status``, ``score`` high = more anomalous (a detector's
    own scale, documented per kind), ``detail`` a JSON object text per row.
    """

    time: np.ndarray      # int64 us since the Unix epoch
    device: np.ndarray    # int32 dense device index
    stream: np.ndarray    # object array of str
    kind: np.ndarray      # object array of str
    score: np.ndarray     # float64
    detail: np.ndarray    # object array of str (JSON)

    def __len__(self) -> int:
        return int(self.time.size)

    @staticmethod
    def empty() -> AnomalyBatch:
        """No anomalies."""
        return AnomalyBatch(np.empty(0, np.int64), np.empty(0, np.int32),
                            np.empty(0, object), np.empty(0, object), np.empty(0, np.float64),
                            np.empty(0, object))

    @staticmethod
    def concat(parts: Sequence[AnomalyBatch]) -> AnomalyBatch:
        """All parts in order."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return AnomalyBatch.empty()
        return AnomalyBatch(*(np.concatenate([getattr(p, f) for p in parts])
                              for f in ("time", "device", "stream", "kind", "score", "detail")))


@dataclass(frozen=True, slots=True)
class GeofenceEventBatch:
    """One row per geofence event (table ``geofence_events``).

    ``event`` is ``enter``, ``exit``, ``dwell`` or ``overspeed``; ``fence`` indexes the
    fence set the events were computed against (the sink maps it to ``geofence_id``).
    """

    time: np.ndarray      # int64 us
    device: np.ndarray    # int32
    fence: np.ndarray     # int32
    event: np.ndarray     # object array of str
    detail: np.ndarray    # object array of str (JSON), "{}" when nothing to add

    def __len__(self) -> int:
        return int(self.time.size)

    @staticmethod
    def empty() -> GeofenceEventBatch:
        """No events."""
        return GeofenceEventBatch(np.empty(0, np.int64), np.empty(0, np.int32),
                                  np.empty(0, np.int32), np.empty(0, object),
                                  np.empty(0, object))
