"""RFID read checks: duplicate collapsing, impossible travel, cold-chain exits.

A read batch has the ``RFID_COLUMNS`` plus ``device`` (the reader's dense index) and
``epc`` (object array of upper-case hex text). Tags get a dense index on first sight
(``RfidState``: one dict lookup per distinct EPC of the batch, never per read); per-tag
state is in arrays. Within a batch a tag's reads are taken in time order.

* ``first_in_window`` (per read): False when the same reader read the same tag less than
  ``dedup_window_s`` before (a sliding window: a tag sitting in a reader's field is one
  event). Raw reads are all kept by the caller; events use the first ones.
* ``impossible_travel``: the tag's previous read with a known reader position is further
  away than ``max_speed_kmh`` allows in the elapsed time (plus ``time_slack_s``), and more
  than ``min_distance_m``. Score: implied speed / max speed. Reported per read (cloned
  tags read at two places keep producing it).
* ``cold_chain_exit``: the tag's latest zoned read was in a cold zone and this read is in a
  zone of another kind. Score 1.0. Readers without a zone neither enter nor leave a zone.

Anomaly rows have stream ``rfid`` and the reader as device; the EPC is in the detail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from beiflow.processing.config import RfidConfig
from beiflow.processing.events import AnomalyBatch
from beiflow.processing.movement import (
    NO_TIME,
    US,
    anomaly_rows,
    details,
    ffill_index,
    group_starts,
    grown,
    haversine_m,
    last_of_group,
    prev_in_group,
)

DEFAULT_CONFIG = RfidConfig()


@dataclass(frozen=True, slots=True)
class RfidSites:
    """Where readers are: per reader index ``lat``/``lon`` (NaN unknown) and ``zone``
    (-1 none); per zone ``zone_kind`` (a code), and per kind code ``cold_kind``."""

    lat: np.ndarray
    lon: np.ndarray
    zone: np.ndarray
    zone_kind: np.ndarray
    cold_kind: np.ndarray

    def at(self, reader: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Latitude, longitude and zone of each reader index (unknown beyond the arrays)."""
        def pick(arr: np.ndarray, fill: object) -> np.ndarray:
            out = np.full(reader.size, fill, dtype=arr.dtype)
            inside = reader < arr.size
            out[inside] = arr[reader[inside]]
            return out
        return pick(self.lat, np.nan), pick(self.lon, np.nan), pick(self.zone, -1)

    def kind_of(self, zone: np.ndarray) -> np.ndarray:
        """Kind code of each zone id (-1 for none)."""
        ok = (zone >= 0) & (zone < self.zone_kind.size)
        if not ok.any():
            return np.full(zone.shape, -1, dtype=np.int64)
        return np.where(ok, self.zone_kind[np.where(ok, zone, 0)], -1)

    def is_cold(self, kind: np.ndarray) -> np.ndarray:
        """Whether each kind code is a cold kind."""
        ok = (kind >= 0) & (kind < self.cold_kind.size)
        if not ok.any():
            return ok
        return ok & self.cold_kind[np.where(ok, kind, 0)]


#: (name, dtype, fill) of each per-tag state array.
_STATE_FIELDS: tuple[tuple[str, type, object], ...] = (
    ("last_t", np.int64, NO_TIME), ("last_reader", np.int64, -1),
    ("pos_t", np.int64, NO_TIME), ("pos_lat", np.float64, np.nan),
    ("pos_lon", np.float64, np.nan), ("zone", np.int64, -1),
)


class RfidState:
    """Per-tag state: EPC -> dense tag index, and arrays by tag index (grown on demand):
    the last read (time, reader), the last read with a known position, the last zone."""

    __slots__ = ("index", *(f[0] for f in _STATE_FIELDS))
    last_t: np.ndarray
    last_reader: np.ndarray
    pos_t: np.ndarray
    pos_lat: np.ndarray
    pos_lon: np.ndarray
    zone: np.ndarray

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        for name, dtype, _ in _STATE_FIELDS:
            setattr(self, name, np.empty(0, dtype=dtype))

    def __len__(self) -> int:
        return len(self.index)

    def tags(self, epc: np.ndarray) -> np.ndarray:
        """Dense tag index of each read's EPC, registering new tags."""
        text = np.asarray(epc, dtype=str)
        uniq, inverse = np.unique(text, return_inverse=True)
        index = self.index
        ids = np.fromiter((index.setdefault(e, len(index)) for e in uniq.tolist()),
                          dtype=np.int64, count=uniq.size)
        for name, _, fill in _STATE_FIELDS:
            setattr(self, name, grown(getattr(self, name), len(index), fill))
        return ids[inverse.reshape(-1)]


@dataclass(frozen=True, slots=True)
class RfidResult:
    """Per input row: ``first_in_window`` and the dense ``tag`` index; the anomalies."""

    first_in_window: np.ndarray
    tag: np.ndarray
    anomalies: AnomalyBatch


def check_rfid(reads: dict[str, np.ndarray], state: RfidState, sites: RfidSites, *,
               config: RfidConfig | None = None) -> RfidResult:
    """Collapse duplicate reads and check travel and cold-chain zones; update ``state``."""
    cfg = config or DEFAULT_CONFIG
    n = reads["time"].size
    if n == 0:
        return RfidResult(np.empty(0, bool), np.empty(0, np.int64), AnomalyBatch.empty())
    tag_in = state.tags(reads["epc"])
    order = np.lexsort((reads["time"], tag_in))
    tag, t = tag_in[order], reads["time"][order]
    reader = reads["device"][order].astype(np.int64)
    first = group_starts(tag)
    last = last_of_group(first)
    lt = tag[last]

    prev_t = prev_in_group(t, first, state.last_t[tag])
    prev_reader = prev_in_group(reader, first, state.last_reader[tag])
    window = cfg.dedup_window_s * US
    fresh = ~((prev_reader == reader) & (prev_t != NO_TIME) & (t - prev_t < window))

    lat, lon, zone = sites.at(reader)
    located = np.isfinite(lat) & np.isfinite(lon)
    # the tag's latest located read before each read
    src = ffill_index(located | first)
    had = np.where(located[src], src, -1)
    prev_had = prev_in_group(had, first, np.full(n, -1))
    carry = prev_had < 0
    p = np.maximum(prev_had, 0)
    pt = np.where(carry, state.pos_t[tag], t[p])
    plat = np.where(carry, state.pos_lat[tag], lat[p])
    plon = np.where(carry, state.pos_lon[tag], lon[p])
    dist = haversine_m(plat, plon, lat, lon)
    elapsed = np.where(pt == NO_TIME, 0, t - pt) / US + cfg.time_slack_s
    implied = dist / elapsed
    limit = cfg.max_speed_kmh / 3.6
    trip = np.flatnonzero(located & (pt != NO_TIME) & (dist > cfg.min_distance_m)
                          & (implied > limit))

    zoned = zone >= 0
    zsrc = ffill_index(zoned | first)
    zone_upto = np.where(zoned[zsrc], zone[zsrc], state.zone[tag][zsrc])
    prev_zone = prev_in_group(zone_upto, first, state.zone[tag])
    kind, prev_kind = sites.kind_of(zone), sites.kind_of(prev_zone)
    exit_ = np.flatnonzero(zoned & sites.is_cold(prev_kind) & (kind != prev_kind))

    state.last_t[lt], state.last_reader[lt] = t[last], reader[last]
    upd = last & (had >= 0)
    rows = had[upd]
    state.pos_t[tag[upd]], state.pos_lat[tag[upd]] = t[rows], lat[rows]
    state.pos_lon[tag[upd]] = lon[rows]
    state.zone[lt] = zone_upto[last]

    epc = np.asarray(reads["epc"], dtype=object)[order]
    parts = []
    if trip.size:
        parts.append(anomaly_rows(
            t[trip], reader[trip], "rfid", "impossible_travel", implied[trip] / limit,
            details(epc=epc[trip], distance_m=np.round(dist[trip], 1),
                    elapsed_s=(t[trip] - pt[trip]) / US)))
    if exit_.size:
        parts.append(anomaly_rows(
            t[exit_], reader[exit_], "rfid", "cold_chain_exit", np.ones(exit_.size),
            details(epc=epc[exit_], from_zone=prev_zone[exit_], to_zone=zone[exit_])))
    out_fresh = np.empty(n, bool)
    out_fresh[order] = fresh
    return RfidResult(out_fresh, tag_in, AnomalyBatch.concat(parts))
