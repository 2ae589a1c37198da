"""A bank of simulated GNSS/Beidou receivers: truth positions in, NMEA epochs out.

:class:`ReceiverBank` turns the scenario's truth (position, speed, course) of many devices
into the bytes their receivers would publish, one payload per device and epoch, and
labels the events a receiver causes by itself that the pipeline should detect. Arrays
are handled for all devices of an epoch at once; only the final text formatting loops
over devices.

Model:

* Sky: circular orbits shared by every receiver (one almanac): GPS (30 MEO, 6 planes,
  55 deg), GLONASS (24, 64.8 deg, PRN 65-88), Galileo (24, 56 deg), BDS (5 GEO over
  58.75-160 E, 7 IGSO crossing 118 E, 24 MEO) under a rotating Earth, so elevation and
  azimuth drift as real passes do. A receiver sees the constellations its talker allows
  (BD/GB: BDS; GP: GPS; GN: all four) above the horizon and uses those above 5 deg.
* C/N0: 33 + 15 sin(elevation) dB-Hz plus per-satellite, per-antenna offsets and 0.7 dB
  noise; tracked at >= 27 dB-Hz. DOPs come from the geometry of the tracked satellites
  (one receiver clock, no inter-system bias).
* Position error: per-axis Gauss-Markov (tau 45 s) scaled by ``uere_m`` x HDOP (east,
  north, each ``/sqrt 2``) and ``uere_m`` x VDOP (altitude), the DOPs smoothed over
  10 s as a navigation filter does (no leaps when a satellite comes or goes); no fix
  above PDOP 20 (the receivers' DOP mask); velocity noise about
  0.05 m/s x HDOP. Below 0.5 m/s u-blox style talkers (GN, GP) leave the course empty,
  the Chinese BDS receivers (BD, GB) hold the last one. Some GN/GP receivers use SBAS
  (quality 2, mode D) while the sky is mostly open.
* Cold start: no fix for ``cold_start_s`` (+-20 % per device) after a device's first
  epoch while satellites are acquired one by one (GSV lists them without elevation and
  azimuth, as receivers without an almanac do). A fix needs 4 tracked satellites;
  after a loss it returns 2 s after 4 are tracked again.
* ``sky`` (0..1): below 0.2 every satellite is blocked (tunnel: no fix, GSV lists the
  sky without C/N0); in between, satellites are blocked with a probability growing
  with ``1 - sky`` and towards the horizon (set redrawn every 30 s) and the rest lose
  ``6 (1 - sky)`` dB (under a crane: fewer satellites, lower C/N0, higher HDOP).
* ``jam_db`` lowers every C/N0 (satellites fall below the tracking threshold, the fix is
  lost below 4); ``spoof`` puts every satellite in view at one strong C/N0 (the
  device's spoofer level, 48-52 dB-Hz, +-0.3 dB) whatever sky and jamming, and the
  position at truth + offset. ``offset_n_m``/``offset_e_m`` shift the position (teleport,
  spoofer drag).
* Multipath: single-epoch position spikes at ``multipath_per_hour`` (x ``1 + 4 (1 - sky)``),
  C/N0 3 dB down on that epoch. Half are small (clearly below the pipeline's jump bound,
  and so is the return), half large (clearly above). A large one is labelled ``jump``
  (details ``injected: multipath``, ``offset_m``) when, computed as the pipeline does
  (``processing.movement``: farther than ``min_jump_m`` and faster than the device
  kind's bound from the previous fix), it is a jump.
* Fix-quality episodes: every start of a run of epochs without a fix or with HDOP above
  ``max_hdop`` is labelled ``poor_fix`` (details ``injected``: ``cold_start``,
  ``jamming``, ``sky`` or ``geometry``), as the pipeline reports them once per episode.

Layouts follow real captures (tests/data/nmea): GN is a u-blox ZED-F9P in NMEA 4.11
(GNRMC with navigational status, GNGGA with at most 12 satellites, one GNGSA per
constellation with the system id, GSV under each constellation's talker GP/GL/GA/GB
with the signal id); GP a u-blox 6 in NMEA 2.3 (GP only, no ids); GB a NMEA 4.11 BDS-only
receiver (7-decimal minutes, GBGSA system id 4, GBGSV signal id 1); BD an older Chinese
BDS-only module (NMEA 3.0 layout, times with milliseconds, 1-decimal HDOP).

Limits: a spherical Earth and Keplerian circles, no almanac of the real day; no
ionosphere, clock or inter-system biases; blockage and jamming look alike in the sky
summary (so a tunnel, or sky below about 0.3, can make the pipeline's integrity check
report ``jamming``, which is not labelled here); multipath spikes happen only after at
least four steady epochs with a fix (no offset or spoofing change), so the pipeline's
reference is the previous fix; labels assume the pipeline's default jump rule (no
relocation in progress).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from beiflow.devices.simulators.labels import Label
from beiflow.devices.simulators.nmea_encode import (
    KNOTS_PER_MPS,
    frame,
    gga_body,
    gsa_body,
    gsv_bodies,
    hms,
    position_fields,
    rmc_body,
    vtg_body,
)
from beiflow.processing.config import MovementConfig

#: Constellation codes (indexes into ``beiflow.schemas.columns.CONSTELLATIONS``).
GPS, BDS, GLO, GAL = 0, 1, 2, 3
TALKERS: tuple[str, ...] = ("GN", "GB", "BD", "GP")
EXTRAS: frozenset[str] = frozenset({"GSA", "GSV", "VTG", "ZDA"})

EARTH_RADIUS_M = 6_371_008.8
_MU = 3.986004418e14
_OMEGA_E = 7.2921151467e-5
_TWO_PI = 2 * math.pi

MASK_DEG = 5.0
_SIN_MASK = math.sin(math.radians(MASK_DEG))
TRACK_DBHZ = 27.0
_CN0_BASE, _CN0_SLOPE, _CN0_NOISE = 33.0, 15.0, 0.7
_TUNNEL_SKY = 0.2
_SKY_LOSS_DB = 6.0
_BLOCK_PERIOD_S = 30.0
_HOT_S = 2.0
_ERR_TAU_S = 45.0
_DOP_TAU_S = 10.0
PDOP_MASK = 20.0
_VEL_NOISE = 0.05
COURSE_MIN_MPS = 0.5
_SBAS_SKY = 0.6
_MULTIPATH_DB = 3.0
_STEADY_EPOCHS = 4
_MARGIN_M = 10.0


@dataclass(frozen=True, slots=True)
class _Dialect:
    """How one kind of receiver prints its epoch."""

    systems: tuple[int, ...]           # constellations, in GSA/GSV output order
    gsv_talkers: dict[int, str]
    time_decimals: int
    minute_decimals: int
    hdop_decimals: int
    speed_decimals: int
    nmea_411: bool                     # RMC nav status, GSA system id, GSV signal id
    gga_max_sats: int                  # GGA satellites-used cap
    hold_course: bool                  # else empty course when nearly stopped
    ublox_order: bool                  # RMC VTG GGA GSA GSV ZDA, else GGA GSA GSV RMC VTG ZDA
    sbas: bool


_DIALECTS: dict[str, _Dialect] = {
    "GN": _Dialect((GPS, GLO, GAL, BDS), {GPS: "GP", GLO: "GL", GAL: "GA", BDS: "GB"},
                   2, 5, 2, 3, True, 12, False, True, True),
    "GB": _Dialect((BDS,), {BDS: "GB"}, 2, 7, 2, 3, True, 99, True, False, False),
    "BD": _Dialect((BDS,), {BDS: "BD"}, 3, 5, 1, 2, False, 99, True, False, False),
    "GP": _Dialect((GPS,), {GPS: "GP"}, 2, 5, 2, 3, False, 12, False, True, True),
}
#: NMEA 4.11 GNSS system id and GSV signal id (L1 C/A, B1I, L1OF, E1) per constellation.
_SYSTEM_ID = {GPS: 1, GLO: 2, GAL: 3, BDS: 4}
_SIGNAL_ID = {GPS: "1", GLO: "1", GAL: "7", BDS: "1"}


@dataclass(frozen=True, slots=True)
class ReceiverSpec:
    """One receiver model: talker, optional sentences, output rate and ranging error.

    ``uere_m`` is the user range error: the horizontal 2-D rms error is ``uere_m`` x HDOP.
    """

    talker: str = "GN"
    extras: frozenset[str] = frozenset()
    rate_hz: float = 1.0
    uere_m: float = 2.0

    def __post_init__(self) -> None:
        if self.talker not in _DIALECTS:
            raise ValueError(f"talker must be one of {TALKERS}, not {self.talker!r}")
        if not self.extras <= EXTRAS:
            raise ValueError(f"extras must be a subset of {sorted(EXTRAS)}")
        if not 0 < self.rate_hz <= 10:
            raise ValueError("rate_hz must be in (0, 10]")
        if self.uere_m <= 0:
            raise ValueError("uere_m must be > 0")


@dataclass(frozen=True, slots=True)
class _Almanac:
    """Circular orbits of every satellite, sorted by (constellation, PRN)."""

    const: np.ndarray
    prn: np.ndarray
    a: np.ndarray
    cos_i: np.ndarray
    sin_i: np.ndarray
    raan: np.ndarray
    m0: np.ndarray
    n: np.ndarray
    cn0_offset: np.ndarray

    def ecef(self, t: float) -> np.ndarray:
        """Earth-fixed positions (metres, shape (satellites, 3)) at Unix time ``t``."""
        u = self.m0 + np.mod(self.n * t, _TWO_PI)
        om = self.raan - math.fmod(_OMEGA_E * t, _TWO_PI)
        xo, yo = self.a * np.cos(u), self.a * np.sin(u)
        co, so = np.cos(om), np.sin(om)
        return np.stack([xo * co - yo * self.cos_i * so, xo * so + yo * self.cos_i * co,
                         yo * self.sin_i], axis=1)


def _almanac() -> _Almanac:
    rows: list[tuple[int, int, float, float, float, float, float, float]] = []

    def walker(const: int, prns: Sequence[int], a_m: float, inc: float, planes: int,
               cn0: float) -> None:
        n = math.sqrt(_MU / a_m**3)
        for k, prn in enumerate(prns):
            plane, slot = k % planes, k // planes
            m0 = _TWO_PI * (slot / (len(prns) // planes) + plane / len(prns))
            rows.append((const, prn, a_m, inc, _TWO_PI * plane / planes, m0, n, cn0))

    walker(GPS, [p for p in range(1, 33) if p not in (4, 18)], 26_559_700.0, 55.0, 6, 0.0)
    walker(GLO, range(65, 89), 25_508_200.0, 64.8, 3, -2.0)
    walker(GAL, (2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 19, 21, 24, 25, 26, 27, 30, 31,
                 33, 34, 36), 29_599_800.0, 56.0, 3, -1.0)
    walker(BDS, (11, 12, 14, *range(19, 31), *range(32, 38), 41, 42, 43), 27_906_100.0,
           55.0, 3, -0.5)
    geo_a = (_MU / _OMEGA_E**2) ** (1 / 3)  # geosynchronous: the ground track stays put
    for prn, lon in zip(range(1, 6), (140.0, 80.0, 110.5, 160.0, 58.75), strict=True):
        rows.append((BDS, prn, geo_a, 0.5, 0.0, math.radians(lon), _OMEGA_E, 1.0))
    for prn, phase in zip((6, 7, 8, 9, 10, 13, 16), (0, 120, 240, 40, 160, 280, 80),
                          strict=True):
        m0 = math.radians(phase)
        rows.append((BDS, prn, geo_a, 55.0, math.radians(118.0) - m0, m0, _OMEGA_E, 0.0))
    rows.sort(key=lambda r: (r[0], r[1]))
    cols = list(zip(*rows, strict=True))
    inc = np.radians(np.array(cols[3]))
    jitter = np.random.default_rng(20240601).normal(0.0, 0.8, len(rows))
    return _Almanac(const=np.array(cols[0], np.int64), prn=np.array(cols[1], np.int64),
                    a=np.array(cols[2]), cos_i=np.cos(inc), sin_i=np.sin(inc),
                    raan=np.array(cols[4]), m0=np.array(cols[5]), n=np.array(cols[6]),
                    cn0_offset=np.array(cols[7]) + jitter)


ALMANAC = _almanac()
_SAT_INDEX = np.arange(ALMANAC.prn.size, dtype=np.uint64)
#: Satellites of each constellation code, in code order.
_CONST_MASKS = [ALMANAC.const == c for c in (GPS, BDS, GLO, GAL)]
#: Which satellites each talker's receivers use: shape (talkers, satellites).
_ALLOWED = np.array([np.isin(ALMANAC.const, _DIALECTS[t].systems) for t in TALKERS])


def _unit_hash(dev: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic uniforms in [0, 1) per (device, satellite): shape (devices, satellites)."""
    x = (dev.astype(np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15)
         ^ (_SAT_INDEX[None, :] + np.uint64(salt)) * np.uint64(0xD1B54A32D192ED03))
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _column(value: np.ndarray | None, m: int, fill: float | bool) -> np.ndarray:
    if value is None:
        return np.full(m, fill)
    arr = np.asarray(value)
    if arr.shape != (m,):
        raise ValueError("per-device arrays must align with idx")
    return arr


@dataclass(slots=True)
class _Sky:
    """Per row and satellite: line-of-sight unit vector (east, north, up), C/N0 and who is
    in view/tracked."""

    east: np.ndarray
    north: np.ndarray
    up: np.ndarray
    cn0: np.ndarray
    in_view: np.ndarray
    tracked: np.ndarray


class ReceiverBank:
    """Receivers of many devices, stepped epoch by epoch from truth positions.

    ``kinds`` (per device, optional) names the device kind the pipeline applies (road,
    vessel, rail, crane; ``None``: default bound), ``movement`` the pipeline's movement
    thresholds: together they decide which multipath spikes are labelled ``jump`` and
    which fix episodes ``poor_fix``. Everything random derives from ``seed``: the same
    seed and call sequence give the same bytes.
    """

    def __init__(self, device_ids: Sequence[str], specs: Sequence[ReceiverSpec], *,
                 seed: int, cold_start_s: float = 35.0, multipath_per_hour: float = 2.0,
                 kinds: Sequence[str | None] | None = None,
                 movement: MovementConfig | None = None) -> None:
        n = len(device_ids)
        if len(specs) != n or (kinds is not None and len(kinds) != n):
            raise ValueError("device_ids, specs and kinds must have one entry per device")
        if cold_start_s < 0 or multipath_per_hour < 0:
            raise ValueError("cold_start_s and multipath_per_hour must be >= 0")
        cfg = movement or MovementConfig()
        self.device_ids = list(device_ids)
        self.specs = list(specs)
        self.multipath_per_hour = multipath_per_hour
        self._min_jump_m = cfg.min_jump_m
        self._max_hdop = cfg.max_hdop
        kinds = kinds if kinds is not None else [None] * n
        self._bound_mps = np.array(
            [cfg.max_speed_kmh.get(k, cfg.default_max_speed_kmh) / 3.6 if k
             else cfg.default_max_speed_kmh / 3.6 for k in kinds])
        #: Output rate of each device (the caller schedules epochs).
        self.rate_hz = np.array([s.rate_hz for s in specs], dtype=np.float64)
        self._talker = np.array([TALKERS.index(s.talker) for s in specs], dtype=np.int64)
        self._uere = np.array([s.uere_m for s in specs])
        self._rng = np.random.default_rng(seed)
        rng = self._rng
        self._salt = int(rng.integers(1 << 62))
        self._cold_s = cold_start_s * rng.uniform(0.8, 1.2, n)
        self._antenna_db = np.clip(rng.normal(0.0, 1.5, n), -3.0, 3.0)
        self._spoof_dbhz = rng.uniform(48.0, 52.0, n)
        sbas_ok = np.array([_DIALECTS[s.talker].sbas for s in specs], dtype=bool)
        self._sbas = sbas_ok & (rng.random(n) < 0.3)
        # state
        self._first_t = np.full(n, np.nan)
        self._last_t = np.full(n, np.nan)
        self._run_start = np.full(n, np.nan)     # since when >= 4 satellites are tracked
        self._had_fix = np.zeros(n, dtype=bool)
        self._fixed = np.zeros(n, dtype=bool)      # the previous epoch had a fix
        self._err = rng.standard_normal((n, 3))  # unit Gauss-Markov errors (e, n, u)
        self._dop = np.full((n, 2), np.nan)      # smoothed HDOP, VDOP scaling them
        self._course = np.zeros(n)
        self._poor = np.zeros(n, dtype=bool)
        self._ref_lat = np.full(n, np.nan)       # previous epoch's fix (NaN: none)
        self._ref_lon = np.full(n, np.nan)
        self._ref_t = np.full(n, np.nan)         # its time as printed
        self._spiked = np.zeros(n, dtype=bool)
        self._steady = np.zeros(n, dtype=np.int64)
        self._offset = np.zeros((n, 2))
        self._spoofed = np.zeros(n, dtype=bool)
        #: Per device of the latest ``epoch``: a fix the pipeline uses for geofences (a
        #: fix, HDOP within the limit, no multipath spike).
        self.usable = np.zeros(0, dtype=bool)

    def __len__(self) -> int:
        return len(self.device_ids)

    def epoch(self, t: float, idx: np.ndarray, lat: np.ndarray, lon: np.ndarray,
              alt_m: np.ndarray, speed_mps: np.ndarray, course_deg: np.ndarray, *,
              sky: np.ndarray | None = None, jam_db: np.ndarray | None = None,
              spoof: np.ndarray | None = None, offset_n_m: np.ndarray | None = None,
              offset_e_m: np.ndarray | None = None) -> tuple[list[bytes], list[Label]]:
        """One epoch at Unix time ``t`` (UTC) of the devices ``idx`` (distinct indexes).

        The truth arrays and the optional conditions are aligned with ``idx``: ``sky``
        visibility 0..1 (default 1), ``jam_db`` C/N0 reduction (default 0), ``spoof``
        (default False), ``offset_n_m``/``offset_e_m`` position offset (default 0).
        Returns each device's payload (its epoch's sentences, CRLF-terminated) and the
        labels of the events its receiver caused.
        """
        idx = np.asarray(idx, dtype=np.int64)
        m = idx.size
        if m == 0:
            return [], []
        lat = np.asarray(lat, np.float64)
        lon = np.asarray(lon, np.float64)
        sky_v = np.clip(_column(sky, m, 1.0).astype(np.float64), 0.0, 1.0)
        jam = _column(jam_db, m, 0.0).astype(np.float64)
        spf = _column(spoof, m, False).astype(bool)
        off = np.stack([_column(offset_n_m, m, 0.0), _column(offset_e_m, m, 0.0)], axis=1)
        rng = self._rng

        self._first_t[idx] = np.where(np.isnan(self._first_t[idx]), t, self._first_t[idx])
        elapsed = t - self._first_t[idx]
        cold = elapsed < self._cold_s[idx]
        s = self._sky(t, idx, lat, lon, sky_v, jam, spf, elapsed)
        n_tracked = s.tracked.sum(axis=1)
        pdop, hdop, vdop = _dops(s, s.tracked)

        enough = (n_tracked >= 4) & (pdop <= PDOP_MASK)
        run = self._run_start[idx]
        run = np.where(enough, np.where(np.isnan(run), t, run), np.nan)
        self._run_start[idx] = run
        had = self._had_fix[idx]
        fix = enough & ~cold & (~had | self._fixed[idx] | (t - run >= _HOT_S))
        self._fixed[idx] = fix
        had_fix = had | fix
        self._had_fix[idx] = had_fix

        # correlated position error, scaled by the geometry as the navigation filter
        # smooths it (a satellite more or less does not make the fix leap)
        dt = np.nan_to_num(t - self._last_t[idx], nan=np.inf)
        phi = np.exp(-dt / _ERR_TAU_S)
        err = (phi[:, None] * self._err[idx]
               + np.sqrt(1 - phi**2)[:, None] * rng.standard_normal((m, 3)))
        self._err[idx] = err
        keep = np.exp(-dt / _DOP_TAU_S)[:, None]
        prev = self._dop[idx]
        dop = np.stack([hdop, vdop], axis=1)
        dop = np.where(np.isnan(prev), dop, keep * prev + (1 - keep) * dop)
        self._dop[idx] = np.where(fix[:, None], dop, prev)
        sigma = self._uere[idx][:, None] * np.where(fix[:, None], dop, 0.0)
        north = off[:, 0] + err[:, 1] * sigma[:, 0] / math.sqrt(2)
        east = off[:, 1] + err[:, 0] * sigma[:, 0] / math.sqrt(2)
        alt = np.asarray(alt_m, np.float64) + err[:, 2] * sigma[:, 1]
        rep_lat, rep_lon = _moved(lat, lon, north, east)

        dialects = [_DIALECTS[TALKERS[c]] for c in self._talker[idx].tolist()]
        tdec = np.array([d.time_decimals for d in dialects])
        t_printed = np.floor(round(t * 1e6) / 10.0 ** (6 - tdec)) / 10.0**tdec
        rep_lat, rep_lon, labels, spiked = self._multipath(
            t, idx, fix, rep_lat, rep_lon, t_printed, sky_v, spf, off)
        s.cn0 = np.where(spiked[:, None], s.cn0 - _MULTIPATH_DB, s.cn0)

        # reported velocity: Doppler noise, course held or blank when nearly stopped
        sp = np.asarray(speed_mps, np.float64)
        crs = np.radians(np.asarray(course_deg, np.float64))
        vn_sigma = _VEL_NOISE * np.maximum(hdop, 1.0)
        ve = sp * np.sin(crs) + rng.standard_normal(m) * vn_sigma
        vn = sp * np.cos(crs) + rng.standard_normal(m) * vn_sigma
        speed = np.hypot(ve, vn)
        course = np.mod(np.degrees(np.arctan2(ve, vn)), 360.0)
        slow = speed < COURSE_MIN_MPS
        held = np.where(slow, self._course[idx], course)
        self._course[idx] = np.where(fix, held, self._course[idx])

        sbas = self._sbas[idx] & (sky_v >= _SBAS_SKY) & ~spf & fix
        one_decimal = np.array([d.hdop_decimals == 1 for d in dialects])
        hdop_printed = np.where(one_decimal, np.round(hdop, 1), np.round(hdop, 2))
        labels += self._poor_fix(t, idx, fix, hdop_printed, cold, jam, sky_v)

        self._last_t[idx] = t
        self.usable = fix & ~spiked & (hdop_printed <= self._max_hdop)
        payloads = _format(t, dialects, [self.specs[i] for i in idx.tolist()], s, fix,
                           sbas, rep_lat, rep_lon, alt, speed, held, slow, n_tracked,
                           pdop, hdop, vdop, ~had_fix)
        return payloads, labels

    def _sky(self, t: float, idx: np.ndarray, lat: np.ndarray, lon: np.ndarray,
             sky: np.ndarray, jam: np.ndarray, spoof: np.ndarray,
             elapsed: np.ndarray) -> _Sky:
        sats = ALMANAC.ecef(t)
        la, lo = np.radians(lat), np.radians(lon)
        cl, sl, co, so = np.cos(la), np.sin(la), np.cos(lo), np.sin(lo)
        up = np.stack([cl * co, cl * so, sl], axis=1)
        east = np.stack([-so, co, np.zeros_like(so)], axis=1)
        north = np.stack([-sl * co, -sl * so, cl], axis=1)
        # line of sight in ENU (explicit products: no BLAS threads for 3-vectors)
        r_up = _dot3(up, sats) - EARTH_RADIUS_M
        r_e, r_n = _dot3(east, sats), _dot3(north, sats)
        inv = 1.0 / np.sqrt(r_e**2 + r_n**2 + r_up**2)
        r_e *= inv
        r_n *= inv
        sin_el = r_up * inv
        m, n_sat = sin_el.shape
        in_view = _ALLOWED[self._talker[idx]] & (sin_el > 0)

        cn0 = (_CN0_BASE + _CN0_SLOPE * np.maximum(sin_el, 0.0)
               + ALMANAC.cn0_offset + self._antenna_db[idx][:, None]
               + self._rng.normal(0.0, _CN0_NOISE, (m, n_sat)))
        cn0 -= (_SKY_LOSS_DB * (1.0 - sky) + jam)[:, None]
        usable = in_view & (sin_el >= _SIN_MASK)
        partial = (sky < 1.0) & (sky >= _TUNNEL_SKY)
        if partial.any():
            bucket = int(t // _BLOCK_PERIOD_S)
            p_block = (1.0 - sky[partial])[:, None] * (1.6 - 1.2 * sin_el[partial])
            usable[partial] &= (_unit_hash(idx[partial], self._salt ^ (bucket * 0x2545F491))
                                >= p_block)
        usable[sky < _TUNNEL_SKY] = False
        if spoof.any():
            cn0[spoof] = (self._spoof_dbhz[idx[spoof]][:, None]
                          + self._rng.normal(0.0, 0.3, (int(spoof.sum()), n_sat)))
            usable[spoof] = in_view[spoof] & (sin_el[spoof] >= _SIN_MASK)
        cold = elapsed < self._cold_s[idx]
        if cold.any():
            usable[cold] &= elapsed[cold][:, None] >= self._cold_s[idx[cold]][:, None] * (
                0.3 + 0.7 * _unit_hash(idx[cold], self._salt ^ 0x5DEECE66D))
        tracked = usable & (cn0 >= TRACK_DBHZ)
        return _Sky(r_e, r_n, sin_el, cn0, in_view, tracked)

    def _multipath(self, t: float, idx: np.ndarray, fix: np.ndarray, lat: np.ndarray,
                   lon: np.ndarray, t_printed: np.ndarray, sky: np.ndarray,
                   spoof: np.ndarray, off: np.ndarray,
                   ) -> tuple[np.ndarray, np.ndarray, list[Label], np.ndarray]:
        """Add single-epoch spikes; label those the pipeline will call a ``jump``."""
        rng = self._rng
        m = idx.size
        u_event, u_class, u_size, u_dir = rng.random((4, m))
        changed = (spoof != self._spoofed[idx]) | (off != self._offset[idx]).any(axis=1)
        steady = np.where(changed, 0, self._steady[idx] + 1)
        self._steady[idx] = steady
        self._spoofed[idx] = spoof
        self._offset[idx] = off
        ref_lat, ref_lon, ref_t = self._ref_lat[idx], self._ref_lon[idx], self._ref_t[idx]
        dt = t_printed - ref_t
        eligible = (fix & ~np.isnan(ref_lat) & ~self._spiked[idx] & ~spoof
                    & (steady >= _STEADY_EPOCHS) & (dt > 0))
        rate = self.multipath_per_hour / 3600 * np.nan_to_num(dt) * (1 + 4 * (1 - sky))
        spike = eligible & (u_event < rate)
        if spike.any():
            thr = np.maximum(self._min_jump_m, self._bound_mps[idx] * np.nan_to_num(dt))
            moved = _haversine(ref_lat, ref_lon, lat, lon)
            small_max = np.minimum(40.0, thr - moved - _MARGIN_M)
            large = (u_class < 0.5) | (small_max < 5.0)
            size = np.where(large, thr + moved + _MARGIN_M + 60.0 * u_size,
                            5.0 + (small_max - 5.0) * u_size)
            size = np.where(spike, size, 0.0)
            ang = _TWO_PI * u_dir
            lat, lon = _moved(lat, lon, size * np.cos(ang), size * np.sin(ang))
            dist = _haversine(ref_lat, ref_lon, lat, lon)
            jump = spike & (dist > thr)
        else:
            jump = spike
            size = np.zeros(m)
        labels = [Label(t, self.device_ids[i], "jump",
                        {"injected": "multipath", "offset_m": round(float(o), 1)})
                  for i, o in zip(idx[jump].tolist(), size[jump].tolist(), strict=True)]
        # the pipeline's reference: the previous fix unless it was a jump
        self._ref_lat[idx] = np.where(fix & ~jump, lat, np.where(fix, self._ref_lat[idx],
                                                                 np.nan))
        self._ref_lon[idx] = np.where(fix & ~jump, lon, np.where(fix, self._ref_lon[idx],
                                                                 np.nan))
        self._ref_t[idx] = np.where(fix & ~jump, t_printed, self._ref_t[idx])
        self._spiked[idx] = spike
        return lat, lon, labels, spike

    def _poor_fix(self, t: float, idx: np.ndarray, fix: np.ndarray, hdop: np.ndarray,
                  cold: np.ndarray, jam: np.ndarray, sky: np.ndarray) -> list[Label]:
        """``poor_fix`` at the start of each run without a fix or with HDOP over the limit."""
        poor = ~fix | (hdop > self._max_hdop)
        start = poor & ~self._poor[idx]
        self._poor[idx] = poor
        cause = np.where(cold, "cold_start", np.where(
            jam > 0, "jamming", np.where(sky < 1.0, "sky", "geometry")))
        return [Label(t, self.device_ids[i], "poor_fix", {"injected": str(c)})
                for i, c in zip(idx[start].tolist(), cause[start].tolist(), strict=True)]


def _dot3(rows: np.ndarray, sats: np.ndarray) -> np.ndarray:
    """Dot products of every row vector (m, 3) with every satellite vector (s, 3)."""
    return (rows[:, 0:1] * sats[:, 0] + rows[:, 1:2] * sats[:, 1]
            + rows[:, 2:3] * sats[:, 2])


def _moved(lat: np.ndarray, lon: np.ndarray, north_m: np.ndarray,
           east_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position shifted by local north/east metres (small offsets)."""
    dlat = np.degrees(north_m / EARTH_RADIUS_M)
    dlon = np.degrees(east_m / (EARTH_RADIUS_M * np.cos(np.radians(lat))))
    return lat + dlat, lon + dlon


def _haversine(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray,
               lon2: np.ndarray) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = (np.sin((p2 - p1) / 2) ** 2
         + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


def _dops(s: _Sky, used: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(PDOP, HDOP, VDOP) per row from the used satellites' geometry (NaN below 4)."""
    w = used.astype(np.float64)
    g = (s.east, s.north, s.up, -np.ones_like(s.up))  # the sign does not change the DOPs
    normal = np.empty((w.shape[0], 4, 4))
    for i in range(4):
        wg = w * g[i]
        for j in range(i, 4):
            normal[:, i, j] = normal[:, j, i] = (wg * g[j]).sum(axis=1)
    ok = used.sum(axis=1) >= 4
    normal[~ok] = np.eye(4)
    q = np.linalg.inv(normal)
    h2 = q[:, 0, 0] + q[:, 1, 1]
    v2 = q[:, 2, 2]
    nan = np.where(ok, 1.0, np.nan)
    return np.sqrt(h2 + v2) * nan, np.sqrt(h2) * nan, np.sqrt(v2) * nan


def _format(t: float, dialects: list[_Dialect], specs: list[ReceiverSpec], s: _Sky,
            fix: np.ndarray, sbas: np.ndarray, lat: np.ndarray, lon: np.ndarray,
            alt: np.ndarray, speed: np.ndarray, course: np.ndarray, slow: np.ndarray,
            n_tracked: np.ndarray, pdop: np.ndarray, hdop: np.ndarray, vdop: np.ndarray,
            no_almanac: np.ndarray) -> list[bytes]:
    """The epoch's sentences of every row, framed and CRLF-joined per row."""
    m = fix.size
    day = datetime.fromtimestamp(t, UTC)
    ddmmyy = f"{day:%d%m%y}"
    zda_date = f"{day:%d},{day:%m},{day:%Y},00,00"
    times = {dec: hms(t, dec) for dec in {d.time_decimals for d in dialects}}
    positions: list[str] = [""] * m
    for dec in {d.minute_decimals for d in dialects}:
        rows = [j for j, d in enumerate(dialects) if d.minute_decimals == dec]
        for j, p in zip(rows, position_fields(lat[rows], lon[rows], dec), strict=True):
            positions[j] = p

    # GSV blocks of listed satellites, row by row in almanac (constellation, PRN) order;
    # before its first fix a receiver lists only what it tracks, without elevation/azimuth
    gsv_rows = np.array(["GSV" in spec.extras for spec in specs], dtype=bool)
    listed = np.where(no_almanac[:, None], s.tracked, s.in_view) & gsv_rows[:, None]
    rows, cols = np.nonzero(listed)
    cn = np.where(s.tracked[rows, cols], np.clip(np.rint(s.cn0[rows, cols]), 0, 99),
                  _NO_CN0).astype(np.int64)
    el = np.rint(np.degrees(np.arcsin(s.up[rows, cols]))).astype(np.int64)
    az = np.rint(np.degrees(np.arctan2(s.east[rows, cols], s.north[rows, cols]))
                 ).astype(np.int64) % 360
    el_az = np.where(no_almanac[rows], _NO_EL_AZ, el * 360 + az)
    blocks = [_PRN_TXT[c] + _EL_AZ_TXT[k] + _CN0_TXT[x] for c, k, x
              in zip(cols.tolist(), el_az.tolist(), cn.tolist(), strict=True)]
    gsv_at = _group_offsets(listed)
    gsa_rows = np.array(["GSA" in spec.extras for spec in specs], dtype=bool)
    used = s.tracked & (fix & gsa_rows)[:, None]
    used_prns = [_PRN_TXT[c][1:] for c in np.nonzero(used)[1].tolist()]
    used_at = _group_offsets(used)

    fix_l, sbas_l = fix.tolist(), sbas.tolist()
    alt_l = alt.tolist()
    sp_l, crs_l, slow_l = speed.tolist(), course.tolist(), slow.tolist()
    nt_l = n_tracked.tolist()
    pd_l, hd_l, vd_l = pdop.tolist(), hdop.tolist(), vdop.tolist()
    bodies: list[str] = []
    counts: list[int] = []
    for j in range(m):
        d, spec = dialects[j], specs[j]
        talker = spec.talker
        tm = times[d.time_decimals]
        has_fix = fix_l[j]
        pos = positions[j] if has_fix else None
        mode = "D" if sbas_l[j] else "A"
        course_s = ("" if slow_l[j] and not d.hold_course else f"{crs_l[j]:.2f}")
        rmc = rmc_body(talker, tm, pos, f"{sp_l[j] * KNOTS_PER_MPS:.{d.speed_decimals}f}",
                       course_s, ddmmyy, mode, d.nmea_411)
        gga = gga_body(talker, tm, pos, 2 if sbas_l[j] else 1,
                       min(nt_l[j], d.gga_max_sats) if has_fix else 0,
                       f"{hd_l[j]:.{d.hdop_decimals}f}" if has_fix else "", alt_l[j])
        out = [rmc] if d.ublox_order else [gga]
        if "VTG" in spec.extras and d.ublox_order:
            out.append(vtg_body(talker, course_s, sp_l[j] if has_fix else None, mode,
                                d.speed_decimals))
        if d.ublox_order:
            out.append(gga)
        if "GSA" in spec.extras:
            dops = (f"{pd_l[j]:.2f},{hd_l[j]:.2f},{vd_l[j]:.2f}" if has_fix
                    else "99.99,99.99,99.99")
            gsa_talker = "GN" if len(d.systems) > 1 else talker
            for c in d.systems:
                lo, hi = used_at[j, c], used_at[j, c + 1]
                out.append(gsa_body(gsa_talker, used_prns[lo:hi], dops, 3 if has_fix else 1,
                                    _SYSTEM_ID[c] if d.nmea_411 else None))
        if "GSV" in spec.extras:
            for c in d.systems:
                lo, hi = gsv_at[j, c], gsv_at[j, c + 1]
                out += gsv_bodies(d.gsv_talkers[c], blocks[lo:hi],
                                  _SIGNAL_ID[c] if d.nmea_411 else None)
        if not d.ublox_order:
            out.append(rmc)
            if "VTG" in spec.extras:
                out.append(vtg_body(talker, course_s, sp_l[j] if has_fix else None, mode,
                                    d.speed_decimals))
        if "ZDA" in spec.extras:
            out.append(f"{talker}ZDA,{tm},{zda_date}")
        bodies += out
        counts.append(len(out))
    framed = frame(bodies)
    payloads = []
    at = 0
    for c in counts:
        payloads.append(("\r\n".join(framed[at:at + c]) + "\r\n").encode("ascii"))
        at += c
    return payloads


# GSV field texts by table lookup: ",prn" per satellite, ",el,az," (the last: unknown),
# C/N0 0-99 (the last: not tracked)
_PRN_TXT = [f",{p:02d}" for p in ALMANAC.prn.tolist()]
_EL_AZ_TXT = [f",{e:02d},{a:03d}," for e in range(91) for a in range(360)] + [",,,"]
_NO_EL_AZ = len(_EL_AZ_TXT) - 1
_CN0_TXT = [f"{c:02d}" for c in range(100)] + [""]
_NO_CN0 = 100


def _group_offsets(mask: np.ndarray) -> np.ndarray:
    """Start of each (row, constellation) run in ``np.nonzero(mask)`` order: shape
    (rows, constellations + 1), with ``[r, c]..[r, c + 1]`` the run of constellation c."""
    per = np.stack([mask[:, sel].sum(axis=1) for sel in _CONST_MASKS], axis=1)
    flat = np.concatenate([[0], np.cumsum(per.ravel())])
    m = mask.shape[0]
    starts = flat[:-1].reshape(m, 4)
    return np.concatenate([starts, (starts[:, -1] + per[:, -1])[:, None]], axis=1)
