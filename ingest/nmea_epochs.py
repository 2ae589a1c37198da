"""Vectorised epoch assembly and dating.

An epoch is identified by (device, time of day) of its time-bearing sentences (RMC, GGA,
GNS, GLL, ZDA). Per device and in payload order, a time-bearing sentence with a new time
of day opens a new epoch; GSA, GSV and VTG attach to the device's open epoch. Everything
is computed with sorts, cumulative sums and running maxima over the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from beiflow.ingest.nmea_scan import GGA, GLL, GNS, GSA, GSV, RMC, VTG, ZDA, Framed
from beiflow.ingest.nmea_sentences import Decoded
from beiflow.schemas.columns import CONSTELLATIONS, DateSource

US_PER_DAY = 86_400_000_000
HALF_DAY_US = US_PER_DAY // 2


@dataclass(slots=True)
class Assembly:
    """Epochs of a batch, numbered in (device, payload) order."""

    first: np.ndarray  # Framed index of each epoch's first time-bearing sentence
    dev: np.ndarray  # device of each epoch
    tod: np.ndarray  # time of day of each epoch, microseconds
    kind_sorted: np.ndarray  # kind of each attached sentence, in (device, payload) order
    frame_sorted: np.ndarray  # its Framed index
    ep_sorted: np.ndarray  # its epoch (-1: none open)

    @property
    def n(self) -> int:
        """Number of epochs."""
        return int(self.first.size)


def assemble(fr: Framed, device_of_msg: np.ndarray, good: np.ndarray,
             tod: np.ndarray) -> Assembly:
    """Assign every decoded sentence to its device's epoch (``tod`` per Framed sentence)."""
    ev = np.flatnonzero(good)
    dev = device_of_msg[fr.msg[ev]]
    order = np.argsort(dev, kind="stable")
    ev, dev = ev[order], dev[order]
    t = tod[ev]
    n = ev.size
    i = np.arange(n)
    seg_start = np.ones(n, dtype=bool)
    seg_start[1:] = dev[1:] != dev[:-1]
    dev_first = np.maximum.accumulate(np.where(seg_start, i, 0)) if n else i
    timed = t >= 0
    last_timed = np.maximum.accumulate(np.where(timed, i, -1)) if n else i
    prev_timed = np.empty_like(last_timed)
    prev_timed[:1] = -1
    prev_timed[1:] = last_timed[:-1]
    has_prev = prev_timed >= dev_first
    new = timed & (~has_prev | (t[prev_timed] != t))
    ep = np.where(last_timed >= dev_first, np.cumsum(new) - 1, -1)
    return Assembly(first=ev[new], dev=dev[new], tod=t[new], kind_sorted=fr.kind[ev],
                    frame_sorted=ev, ep_sorted=ep)


class Columns:
    """Per-epoch values filled from sentence types in priority order (first value wins)."""

    def __init__(self, asm: Assembly, decoded: dict[int, Decoded], n_framed: int) -> None:
        self.asm = asm
        self.decoded = decoded
        self._row = np.empty(n_framed, dtype=np.int64)
        for dec in decoded.values():
            self._row[dec.rows] = np.arange(dec.rows.size)
        self._first: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def attached(self, kind: int) -> tuple[np.ndarray, np.ndarray]:
        """(epoch, row in the type's arrays) of every sentence of ``kind`` in an epoch."""
        if kind not in self.decoded:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        asm = self.asm
        sel = (asm.kind_sorted == kind) & (asm.ep_sorted >= 0)
        return asm.ep_sorted[sel], self._row[asm.frame_sorted[sel]]

    def first(self, kind: int) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`attached`, but only the first sentence of the type per epoch."""
        if kind not in self._first:
            ep, row = self.attached(kind)
            keep = np.ones(ep.size, dtype=bool)
            keep[1:] = ep[1:] != ep[:-1]
            self._first[kind] = ep[keep], row[keep]
        return self._first[kind]

    def fill(self, out: np.ndarray, name: str, kinds: tuple[int, ...]) -> np.ndarray:
        """Fill missing entries of ``out`` from column ``name`` of ``kinds``, in order."""
        missing_is_nan = out.dtype.kind == "f"
        for kind in kinds:
            if kind not in self.decoded:
                continue
            ep, row = self.first(kind)
            v = self.decoded[kind].cols[name][row]
            cur = out[ep]
            take = np.isnan(cur) & ~np.isnan(v) if missing_is_nan else (cur < 0) & (v >= 0)
            out[ep[take]] = v[take]
        return out

    def fill_position(self, lat: np.ndarray, lon: np.ndarray, kinds: tuple[int, ...]) -> None:
        """Latitude and longitude together, from the first type that has both."""
        for kind in kinds:
            if kind not in self.decoded:
                continue
            ep, row = self.first(kind)
            cols = self.decoded[kind].cols
            la, lo = cols["lat"][row], cols["lon"][row]
            take = np.isnan(lat[ep]) & ~np.isnan(la)
            lat[ep[take]] = la[take]
            lon[ep[take]] = lo[take]

    def dates(self) -> tuple[np.ndarray, np.ndarray]:
        """(days since the epoch or -1, DateSource) of epochs that carry their own date."""
        days = np.full(self.asm.n, -1, dtype=np.int64)
        source = np.zeros(self.asm.n, dtype=np.int16)
        for kind, code in ((RMC, DateSource.RMC), (ZDA, DateSource.ZDA)):
            before = days < 0
            self.fill(days, "date", (kind,))
            source[before & (days >= 0)] = code
        return days, source

    def satellites(self) -> tuple[np.ndarray, np.ndarray]:
        """(satellites in view, mean C/N0) per epoch and constellation, shape (n, 5)."""
        n, k = self.asm.n, len(CONSTELLATIONS)
        if GSV not in self.decoded:
            return np.full((n, k), -1, dtype=np.int64), np.full((n, k), np.nan)
        ep, row = self.attached(GSV)
        cols = self.decoded[GSV].cols
        const = cols["const"][row]
        ok = const >= 0
        key = ep[ok] * k + const[ok]
        inview = np.full(n * k, -1, dtype=np.int64)
        np.maximum.at(inview, key, cols["inview"][row][ok])
        total = np.bincount(key, weights=cols["snr_sum"][row][ok], minlength=n * k)
        count = np.bincount(key, weights=cols["snr_n"][row][ok], minlength=n * k)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / count, np.nan)
        return inview.reshape(n, k), mean.reshape(n, k)


def resolve_dates(asm: Assembly, own_days: np.ndarray, own_source: np.ndarray,
                  state_days: np.ndarray, state_tod: np.ndarray,
                  received_at: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(days since the Unix epoch or -1, DateSource) of every epoch.

    Without a date of its own, an epoch takes the latest dated epoch of its device (from
    this batch or ``state_*``), plus a day for each time-of-day step back of more than
    12 h on the way (minus one for a step forward of more than 12 h: a late epoch from
    before midnight). Failing that, the UTC day of ``received_at`` closest to the epoch.
    """
    n = asm.n
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int16)
    dev, tod = asm.dev, asm.tod
    i = np.arange(n)
    seg_start = np.ones(n, dtype=bool)
    seg_start[1:] = dev[1:] != dev[:-1]
    seg_first = np.maximum.accumulate(np.where(seg_start, i, 0))
    st_days, st_tod = state_days[dev], state_tod[dev]
    ref_tod = np.where(seg_start, st_tod, np.roll(tod, 1))
    has_ref = ~seg_start | (st_days >= 0)
    delta = tod - ref_tod
    roll = np.where(delta < -HALF_DAY_US, 1, np.where(delta > HALF_DAY_US, -1, 0)) * has_ref
    c = np.cumsum(roll)
    anchor = np.maximum.accumulate(np.where(own_days >= 0, i, -1))
    anchored = anchor >= seg_first
    safe_anchor = np.maximum(anchor, 0)
    base = np.where(anchored, own_days[safe_anchor], st_days)
    base_c = np.where(anchored, c[safe_anchor], c[seg_first] - roll[seg_first])
    chained = anchored | (st_days >= 0)
    days = np.where(own_days >= 0, own_days, np.where(chained, base + c - base_c, -1))
    source = np.where(own_days >= 0, own_source,
                      np.where(chained, DateSource.PREVIOUS, DateSource.UNKNOWN))
    if received_at is not None:
        rday = np.floor_divide(received_at, US_PER_DAY)
        diff = rday * US_PER_DAY + tod - received_at
        rday = rday - (diff > HALF_DAY_US) + (diff < -HALF_DAY_US)
        use = days < 0
        days = np.where(use, rday, days)
        source = np.where(use, DateSource.RECEIVE, source)
    return days.astype(np.int64), source.astype(np.int16)


KINDS_POSITION = (RMC, GGA, GNS, GLL)
KINDS_FIX = (GGA, GNS)
KINDS_HDOP = (GGA, GNS, GSA)
KINDS_MOTION = (RMC, VTG)
KINDS_STATUS = (RMC, GLL)
KINDS_MODE = (RMC, GLL, VTG, GNS)
KINDS_DOP = (GSA,)
