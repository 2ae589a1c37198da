"""A bank of simulated GNSS/Beidou receivers: truth positions in, NMEA epochs out.

:class:`ReceiverBank` turns the scenario's truth (position, speed, course) of many devices
into the bytes their receivers would publish, one payload per device and epoch, and
labels the events a receiver causes by itself that the pipeline should detect. Arrays
are handled for all devices of an epoch at once, the text formatting included.

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

Cost (one core, 5000 devices per epoch): about 2 us per RMC+GGA payload and 6 us per
payload of the scenario's mix (most with GSA+GSV), against 13 and 23 us when every device's
geometry was recomputed and its sentences formatted in Python. What makes it cheap:

* Cached sky geometry: per device and satellite the line of sight, who is in view and
  above the mask, the C/N0 before losses and noise, and the GSV ``,prn,el,az,`` text are
  recomputed every ``_GEO_PERIOD_S`` (30 s, staggered over the devices so every epoch
  costs the same) or when the device moved more than ``_GEO_MOVE_DEG`` (0.01 deg, about
  1 km) since. Satellites move at most about 0.5 deg/min in the sky, so elevation and
  azimuth lag the orbits by at most about 0.25 deg (printed values step 1 deg a little
  late, risings and settings come up to 30 s late); a vehicle inside 1 km tilts its
  horizon by < 0.01 deg. Memory: about 35 bytes per device and satellite (3.7 kB per
  device). Per epoch, and so at once: C/N0 noise, sky loss and blockage, jamming,
  spoofing, cold-start acquisition and multipath, and the tracked set.
* C/N0 noise comes from a random window into a pool of normal draws (2 Mi values drawn
  once from the seeded generator): independent in practice, reproducible per seed.
* DOPs are recomputed only for devices whose tracked set or geometry changed (the same
  values as recomputing them).
* Formatting: every sentence of an epoch is a row of one byte matrix built column block
  by column block for all devices at once (digits by table lookup, fields picked per
  row), checksummed by row, and cut into payloads by one ``bytes.translate``/``split``;
  the text is the same as formatting each device with the ``*_body`` functions of
  ``nmea_encode`` (up to the last-bit rounding of a decimal field).

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
    PAYLOAD_END,
    fixed_cols,
    framed_rows,
    hms,
    hstack,
    literal,
    payloads,
    text_table,
    uint_cols,
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
_GEO_PERIOD_S = 30.0
_GEO_MOVE_DEG = 0.01
_GOLDEN = 0.6180339887498949
_NOISE_POOL = 1 << 21


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
    """Per row and satellite of one epoch: C/N0 (dB-Hz), who is tracked, and the cached
    geometry the receiver reports (in view, GSV blocks without C/N0; read only)."""

    cn0: np.ndarray
    tracked: np.ndarray
    in_view: np.ndarray
    blocks: np.ndarray


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
        self._extras = np.array([[x in s.extras for x in _EXTRA_ORDER] for s in specs],
                                dtype=bool).reshape(n, len(_EXTRA_ORDER))
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
        # cached sky geometry per device and satellite, refreshed every _GEO_PERIOD_S
        # (staggered across devices) or after a move of _GEO_MOVE_DEG
        n_sat = ALMANAC.prn.size
        self._all = np.arange(n)
        self._geo_phase = (np.arange(n) * _GOLDEN) % 1.0
        self._geo_bucket = np.full(n, -1, dtype=np.int64)
        self._geo_lat = np.zeros(n)
        self._geo_lon = np.zeros(n)
        self._los_e = np.zeros((n, n_sat), np.float32)   # line of sight (east, north, up)
        self._los_n = np.zeros((n, n_sat), np.float32)
        self._los_u = np.zeros((n, n_sat), np.float32)
        self._cn0_base = np.zeros((n, n_sat), np.float32)  # C/N0 before losses and noise
        self._in_view = np.zeros((n, n_sat), dtype=bool)
        self._above = np.zeros((n, n_sat), dtype=bool)    # in view above the mask
        self._blocks = np.zeros((n, n_sat), dtype=_BLOCK)  # GSV ",prn,el,az," texts
        self._dop_used = np.zeros((n, n_sat), dtype=bool)  # the set the DOPs are of
        self._dops = np.full((n, 3), np.nan)               # PDOP, HDOP, VDOP of that set
        self._noise = np.zeros(0, np.float32)
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
        # every device in order (the usual call): per-satellite caches are used in place
        rows: np.ndarray | slice = (slice(None) if m == len(self) and (idx == self._all).all()
                                    else idx)
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
        refreshed = self._refresh(t, idx, lat, lon)
        s = self._sky(t, idx, rows, sky_v, jam, spf, elapsed)
        n_tracked = s.tracked.sum(axis=1)
        # DOPs change only with the tracked set or the geometry
        changed = refreshed | (s.tracked != self._dop_used[rows]).any(axis=1)
        if changed.any():
            c = idx[changed]
            used = s.tracked[changed]
            self._dop_used[c] = used
            self._dops[c] = np.stack(
                _dops(self._los_e[c], self._los_n[c], self._los_u[c], used), axis=1)
        pdop, hdop, vdop = self._dops[idx].T

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
        rep_lat, rep_lon = offset_position(lat, lon, north, east)

        tc = self._talker[idx]
        tdec = _TIME_DEC[tc]
        t_printed = np.floor(round(t * 1e6) / 10.0 ** (6 - tdec)) / 10.0**tdec
        rep_lat, rep_lon, labels, spiked = self._multipath(
            t, idx, fix, rep_lat, rep_lon, t_printed, sky_v, spf, off)
        s.cn0[spiked] -= _MULTIPATH_DB

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
        hdop_printed = np.where(_HDOP_DEC[tc] == 1, np.round(hdop, 1), np.round(hdop, 2))
        labels += self._poor_fix(t, idx, fix, hdop_printed, cold, jam, sky_v)

        self._last_t[idx] = t
        self.usable = fix & ~spiked & (hdop_printed <= self._max_hdop)
        payloads = _format(t, tc, self._extras[idx], s, fix, sbas, rep_lat, rep_lon, alt,
                           speed, held, slow, n_tracked, pdop, hdop, vdop, ~had_fix)
        return payloads, labels

    def _refresh(self, t: float, idx: np.ndarray, lat: np.ndarray,
                 lon: np.ndarray) -> np.ndarray:
        """Recompute the cached geometry of the devices whose period is over or that moved;
        returns which rows were refreshed."""
        bucket = np.floor(t / _GEO_PERIOD_S + self._geo_phase[idx]).astype(np.int64)
        due = ((bucket != self._geo_bucket[idx])
               | (np.abs(lat - self._geo_lat[idx]) + np.abs(lon - self._geo_lon[idx])
                  > _GEO_MOVE_DEG))
        if not due.any():
            return due
        d = idx[due]
        la, lo = lat[due], lon[due]
        self._geo_bucket[d] = bucket[due]
        self._geo_lat[d] = la
        self._geo_lon[d] = lo
        sats = ALMANAC.ecef(t)
        la, lo = np.radians(la), np.radians(lo)
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
        in_view = _ALLOWED[self._talker[d]] & (sin_el > 0)
        self._los_e[d] = r_e
        self._los_n[d] = r_n
        self._los_u[d] = sin_el
        self._in_view[d] = in_view
        self._above[d] = in_view & (sin_el >= _SIN_MASK)
        self._cn0_base[d] = (_CN0_BASE + _CN0_SLOPE * np.maximum(sin_el, 0.0)
                             + ALMANAC.cn0_offset + self._antenna_db[d][:, None])
        gsv = self._extras[d, _EXTRA_ORDER.index("GSV")]
        if gsv.any():
            el = np.rint(np.degrees(np.arcsin(np.clip(sin_el[gsv], 0.0, 1.0))))
            az = np.mod(np.rint(np.degrees(np.arctan2(r_e[gsv], r_n[gsv]))), 360.0)
            self._blocks[d[gsv]] = _gsv_blocks(
                np.where(in_view[gsv], el * 360 + az, 0).astype(np.int64))
        return due

    def _noise_block(self, size: int) -> np.ndarray:
        """``size`` C/N0 noise values (dB): a random window of a pool drawn once."""
        if self._noise.size < 4 * size:
            self._noise = (_CN0_NOISE * self._rng.standard_normal(
                max(_NOISE_POOL, 8 * size), dtype=np.float32))
        at = int(self._rng.integers(self._noise.size - size + 1))
        return self._noise[at:at + size]

    def _sky(self, t: float, idx: np.ndarray, rows: np.ndarray | slice, sky: np.ndarray,
             jam: np.ndarray, spoof: np.ndarray, elapsed: np.ndarray) -> _Sky:
        base = self._cn0_base[rows]
        m, n_sat = base.shape
        cn0 = base + self._noise_block(m * n_sat).reshape(m, n_sat)
        cn0 -= (_SKY_LOSS_DB * (1.0 - sky) + jam).astype(np.float32)[:, None]
        if spoof.any():
            cn0[spoof] = (self._spoof_dbhz[idx[spoof]][:, None]
                          + self._rng.normal(0.0, 0.3, (int(spoof.sum()), n_sat)))
        tracked = cn0 >= TRACK_DBHZ
        tracked &= self._above[rows]
        # a spoofer is seen whatever the sky
        partial = (sky < 1.0) & (sky >= _TUNNEL_SKY) & ~spoof
        if partial.any():
            bucket = int(t // _BLOCK_PERIOD_S)
            p_block = ((1.0 - sky[partial])[:, None]
                       * (1.6 - 1.2 * self._los_u[idx[partial]]))
            tracked[partial] &= (_unit_hash(idx[partial], self._salt ^ (bucket * 0x2545F491))
                                 >= p_block)
        tracked[(sky < _TUNNEL_SKY) & ~spoof] = False
        cold = elapsed < self._cold_s[idx]
        if cold.any():
            tracked[cold] &= elapsed[cold][:, None] >= self._cold_s[idx[cold]][:, None] * (
                0.3 + 0.7 * _unit_hash(idx[cold], self._salt ^ 0x5DEECE66D))
        return _Sky(cn0, tracked, self._in_view[rows], self._blocks[rows])

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
        jump = np.zeros(m, dtype=bool)
        size = np.zeros(m)
        sp = np.flatnonzero(spike)
        if sp.size:
            thr = np.maximum(self._min_jump_m, self._bound_mps[idx[sp]] * dt[sp])
            moved = _haversine(ref_lat[sp], ref_lon[sp], lat[sp], lon[sp])
            small_max = np.minimum(40.0, thr - moved - _MARGIN_M)
            large = (u_class[sp] < 0.5) | (small_max < 5.0)
            size[sp] = np.where(large, thr + moved + _MARGIN_M + 60.0 * u_size[sp],
                                5.0 + (small_max - 5.0) * u_size[sp])
            ang = _TWO_PI * u_dir[sp]
            lat, lon = lat.copy(), lon.copy()
            lat[sp], lon[sp] = offset_position(lat[sp], lon[sp], size[sp] * np.cos(ang),
                                               size[sp] * np.sin(ang))
            jump[sp] = _haversine(ref_lat[sp], ref_lon[sp], lat[sp], lon[sp]) > thr
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


def offset_position(lat: np.ndarray, lon: np.ndarray, north_m: np.ndarray,
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


def _dops(east: np.ndarray, north: np.ndarray, up: np.ndarray,
          used: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(PDOP, HDOP, VDOP) per row from the used satellites' geometry (NaN below 4)."""
    w = used.astype(np.float64)
    up = up.astype(np.float64)
    g = (east.astype(np.float64), north.astype(np.float64), up,
         -np.ones_like(up))  # the sign does not change the DOPs
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


# -- formatting: every sentence of an epoch is a row of one byte matrix ----------------

_EXTRA_ORDER = ("GSA", "GSV", "VTG", "ZDA")
_BY_TALKER = [_DIALECTS[t] for t in TALKERS]
_TIME_DEC = np.array([d.time_decimals for d in _BY_TALKER])
_MIN_DEC = np.array([d.minute_decimals for d in _BY_TALKER])
_HDOP_DEC = np.array([d.hdop_decimals for d in _BY_TALKER])
_SPEED_DEC = np.array([d.speed_decimals for d in _BY_TALKER])
_GGA_MAX = np.array([d.gga_max_sats for d in _BY_TALKER])
_HOLD = np.array([d.hold_course for d in _BY_TALKER])
_UBLOX = np.array([d.ublox_order for d in _BY_TALKER])
#: GSA/GSV output order of the constellations (each dialect's systems follow it).
_SYS_ORDER = [GPS, GLO, GAL, BDS]
assert all(list(d.systems) == [c for c in _SYS_ORDER if c in d.systems] for d in _BY_TALKER)
#: (talker, constellation code): the talker's receivers print that constellation.
_HAS_SYS = np.array([[c in d.systems for c in range(4)] for d in _BY_TALKER])
_SAT_CONST = ALMANAC.const
# field texts indexed by talker code x 4 + constellation code
_GSV_HEAD = text_table([f"{d.gsv_talkers.get(c, '')}GSV," for d in _BY_TALKER
                        for c in range(4)])
_GSV_TAIL = text_table([f",{_SIGNAL_ID[c]}" if d.nmea_411 else "" for d in _BY_TALKER
                        for c in range(4)])
_GSA_TAIL = text_table([f",{_SYSTEM_ID[c]}" if d.nmea_411 else "" for d in _BY_TALKER
                        for c in range(4)])
_GSA_HEAD = text_table([f"{t}GSA,A," for t in TALKERS])
_VTG_HEAD = text_table([f"{t}VTG," for t in TALKERS])
_RMC_TAIL = text_table([",V" if d.nmea_411 else "" for d in _BY_TALKER])
_FIX_TYPE = text_table(["1,", "3,"])
_STATUS = text_table(["A,", "V,"])
_MODE = text_table(["A", "D", "N"])
_QUALITY = text_table(["0,", "1,", "2,"])
_GGA_TAIL = text_table([",,,,,", ",M,9.5,M,,"])
_HEMI = (text_table(["N", "S"]), text_table(["E", "W"]))
_COMMA = literal(",")
_DOT = literal(".")
# GSV and GSA fields by table lookup: ",prn" per satellite, ",el,az," per el * 360 + az,
# C/N0 0-99 (the last: not tracked, empty) as uint16 words, "prn," per satellite (the
# last: empty slot) as uint32 words
_PRN_COLS = text_table([f",{p:02d}" for p in ALMANAC.prn.tolist()])
_EA = np.arange(91 * 360)
_EL_AZ_WORDS = np.concatenate([
    _COMMA.repeat(_EA.size, 0), uint_cols(_EA // 360, 2, 2), _COMMA.repeat(_EA.size, 0),
    uint_cols(_EA % 360, 3, 3), _COMMA.repeat(_EA.size, 0)], axis=1).view(np.uint64)[:, 0]
del _EA
_CN0_WORDS = text_table([f"{c:02d}" for c in range(100)] + [""], 2).view(np.uint16)[:, 0]
_NO_CN0 = 100
_SLOT_WORDS = text_table([f"{p:02d}," for p in ALMANAC.prn.tolist()] + [","], 4).view(
    np.uint32)[:, 0]
#: A GSV satellite block as one 16-byte item: 3 NULs, ",prn,el,az," (11 bytes) and the
#: C/N0 digits (the last two bytes, a uint16 word), so blocks move as single items.
_BLOCK = np.dtype((np.void, 16))
_NO_ALMANAC_BLOCKS = text_table([f"\0\0\0,{p:02d},,," for p in ALMANAC.prn.tolist()],
                                16).view(_BLOCK)[:, 0]


def _gsv_blocks(el_az: np.ndarray) -> np.ndarray:
    """The GSV blocks (C/N0 left empty) of every (row, satellite) from el * 360 + az."""
    k, n_sat = el_az.shape
    out = np.zeros((k, n_sat, 16), np.uint8)
    out[:, :, 3:6] = _PRN_COLS
    out[:, :, 6:14] = _EL_AZ_WORDS[el_az].view(np.uint8).reshape(k, n_sat, 8)
    return out.view(_BLOCK)[..., 0]


def _exclusive_cumsum(counts: np.ndarray) -> np.ndarray:
    out = np.zeros_like(counts)
    np.cumsum(counts[:-1], out=out[1:])
    return out


def _ranks(group: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal, contiguous ``group`` ids."""
    at = np.arange(group.size)
    first = np.ones(group.size, dtype=bool)
    first[1:] = group[1:] != group[:-1]
    return at - np.maximum.accumulate(np.where(first, at, 0))


def _in_order(per: np.ndarray) -> np.ndarray:
    """Offsets of (row, constellation) counts when each row prints them in _SYS_ORDER."""
    out = np.empty(per.shape, np.int64)
    ordered = per[:, _SYS_ORDER].astype(np.int64)
    out[:, _SYS_ORDER] = np.cumsum(ordered, axis=1) - ordered
    return out


def _blank_or(keep: np.ndarray, cols: np.ndarray, text: str) -> np.ndarray:
    return np.where(keep[:, None], cols, text_table([text], cols.shape[1]))


def _position_cols(lat: np.ndarray, lon: np.ndarray, dec: np.ndarray,
                   fix: np.ndarray) -> np.ndarray:
    """``ddmm.mmmmm,N,dddmm.mmmmm,E,`` (``dec`` decimals of a minute per row), the
    numbers blank without a fix; integer arithmetic: no "60.0000" minutes from rounding."""
    unit = 10 ** dec
    top = int(dec.max())
    shown = fix.astype(np.uint8)[:, None]
    parts: list[np.ndarray] = []
    for deg_width, values, hemis in ((2, lat, _HEMI[0]), (3, lon, _HEMI[1])):
        total = np.rint(np.abs(values) * 60 * unit.astype(np.float64)).astype(np.int64)
        deg, rest = np.divmod(total, 60 * unit)
        minutes, frac = np.divmod(rest, unit)
        frac_cols = uint_cols(frac * 10 ** (top - dec), top, top)
        frac_cols[np.arange(top)[None, :] >= dec[:, None]] = 0
        number = np.concatenate([uint_cols(deg, deg_width, deg_width),
                                 uint_cols(minutes, 2, 2), _DOT.repeat(values.size, 0),
                                 frac_cols], axis=1)
        parts += [number * shown, _COMMA, hemis[(~(values >= 0)).astype(np.int64)] * shown,
                  _COMMA]
    return hstack(parts, lat.size)


def _format(t: float, tc: np.ndarray, extras: np.ndarray, s: _Sky, fix: np.ndarray,
            sbas: np.ndarray, lat: np.ndarray, lon: np.ndarray, alt: np.ndarray,
            speed: np.ndarray, course: np.ndarray, slow: np.ndarray, n_tracked: np.ndarray,
            pdop: np.ndarray, hdop: np.ndarray, vdop: np.ndarray,
            no_almanac: np.ndarray) -> list[bytes]:
    """The epoch's sentences of every row (talker code ``tc``, ``extras`` flags in
    _EXTRA_ORDER), framed and CRLF-joined per row, built as one byte matrix."""
    m = tc.size
    has_gsa, has_gsv, has_vtg, has_zda = extras.T
    pdop, hdop, vdop = (np.where(fix, x, 0.0) for x in (pdop, hdop, vdop))  # printed with a fix
    day = datetime.fromtimestamp(t, UTC)
    times = [hms(t, d.time_decimals) for d in _BY_TALKER]
    mode = np.where(fix, sbas.astype(np.int64), 2)  # A, D or N
    shown = fix.astype(np.uint8)[:, None]
    pos = _position_cols(lat, lon, _MIN_DEC[tc], fix)
    sdec = _SPEED_DEC[tc]
    # rows without a fix print no speed: their Doppler noise (scaled by a DOP that may be
    # unbounded with under four satellites) is not formatted
    knots = np.where(fix & np.isfinite(speed), np.minimum(speed * KNOTS_PER_MPS, 99_999.0),
                     0.0)
    knots = fixed_cols(knots, sdec, 5) * shown
    course_cols = fixed_cols(course, 2, 3) * (fix & ~(slow & ~_HOLD[tc])).astype(
        np.uint8)[:, None]
    gsa_sys = has_gsa[:, None] & _HAS_SYS[tc]  # GSA sentences per (row, constellation)
    gsa = _gsa(tc, s, fix, gsa_sys, pdop, hdop, vdop) if has_gsa.any() else None
    n_gsv, gsv = (_gsv(tc, s, has_gsv, no_almanac) if has_gsv.any()
                  else (np.zeros((m, 4), np.int64), None))

    # sentence order per row: u-blox RMC VTG GGA GSA GSV ZDA, else GGA GSA GSV RMC VTG ZDA
    n_gsa_row, n_gsv_row = gsa_sys.sum(axis=1), n_gsv.sum(axis=1)
    count = 2 + has_vtg + n_gsa_row + n_gsv_row + has_zda
    base = _exclusive_cumsum(count)
    ublox = _UBLOX[tc]
    at_rmc = base + np.where(ublox, 0, 1 + n_gsa_row + n_gsv_row)
    at_gga = base + np.where(ublox, 1 + has_vtg, 0)
    bodies: list[tuple[np.ndarray, list[np.ndarray]]] = []  # (output rows, body fields)
    bodies.append((at_rmc, [
        text_table([f"{tk}RMC,{tm}," for tk, tm in zip(TALKERS, times, strict=True)])[tc],
        _STATUS[(~fix).astype(np.int64)], pos, knots, _COMMA, course_cols,
        literal(f",{day:%d%m%y},,,"), _MODE[mode], _RMC_TAIL[tc]]))
    sats = np.where(fix, np.minimum(n_tracked, _GGA_MAX[tc]), 0)
    bodies.append((at_gga, [
        text_table([f"{tk}GGA,{tm}," for tk, tm in zip(TALKERS, times, strict=True)])[tc],
        pos, _QUALITY[np.where(fix, 1 + sbas, 0)], uint_cols(sats, 3, 2), _COMMA,
        _blank_or(fix, fixed_cols(hdop, _HDOP_DEC[tc], 3), "99.99"), _COMMA,
        fixed_cols(alt, 1, 6, signed=True) * shown, _GGA_TAIL[fix.astype(np.int64)]]))
    v = np.flatnonzero(has_vtg)
    if v.size:
        bodies.append((at_rmc[v] + 1, [
            _VTG_HEAD[tc[v]], course_cols[v], literal(",T,,M,"), knots[v], literal(",N,"),
            fixed_cols(speed[v] * 3.6, sdec[v], 5) * shown[v], literal(",K,"),
            _MODE[mode[v]]]))
    if gsa is not None:
        gj, gc, fields = gsa
        bodies.append((at_gga[gj] + 1 + _in_order(gsa_sys)[gj, gc], fields))
    if gsv is not None:
        sj, sc, k, fields = gsv
        at_gsv = at_gga + 1 + n_gsa_row
        bodies.append((at_gsv[sj] + _in_order(n_gsv)[sj, sc] + k, fields))
    z = np.flatnonzero(has_zda)
    if z.size:
        zda = text_table([f"{tk}ZDA,{tm},{day:%d},{day:%m},{day:%Y},00,00"
                          for tk, tm in zip(TALKERS, times, strict=True)])
        bodies.append((base[z] + count[z] - 1, [zda[tc[z]]]))

    # framed rows, NUL-padded to one width, a byte left for the payload end marker
    width = -(-(max(sum(p.shape[1] for p in b) for _, b in bodies) + 8) // 8) * 8
    out = np.zeros((int(count.sum()), width), np.uint8)
    row = np.dtype((np.void, width))  # whole rows move as single items
    out_rows = out.view(row)[:, 0]
    for at, body in bodies:
        out_rows[at] = framed_rows(body, at.size, width).view(row)[:, 0]
    out[base + count - 1, -1] = PAYLOAD_END
    return payloads(out)


def _gsa(tc: np.ndarray, s: _Sky, fix: np.ndarray, gsa_sys: np.ndarray, pdop: np.ndarray,
         hdop: np.ndarray, vdop: np.ndarray,
         ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """GSA sentences (row, constellation code, body fields): per printed constellation
    the first 12 used satellites in PRN order."""
    m, n_sat = s.tracked.shape
    flat = np.flatnonzero(s.tracked & (fix & gsa_sys.any(axis=1))[:, None])
    r = flat // n_sat
    c = flat - r * n_sat
    group = r * 4 + _SAT_CONST[c]
    rank = _ranks(group)
    first12 = rank < 12
    slots = np.full((m * 4, 12), _SLOT_WORDS.size - 1, dtype=np.int64)
    slots[group[first12], rank[first12]] = c[first12]
    gj, gc = np.nonzero(gsa_sys)
    rows = np.unique(gj)
    dops = np.zeros((m, 20), np.uint8)
    dops[rows] = _blank_or(fix[rows], hstack(
        [fixed_cols(pdop[rows], 2, 3), _COMMA, fixed_cols(hdop[rows], 2, 3), _COMMA,
         fixed_cols(vdop[rows], 2, 3)], rows.size), "99.99,99.99,99.99")
    return gj, gc, [
        _GSA_HEAD[tc[gj]], _FIX_TYPE[fix[gj].astype(np.int64)],
        _SLOT_WORDS[slots[gj * 4 + gc]].view(np.uint8).reshape(gj.size, 48), dops[gj],
        _GSA_TAIL[tc[gj] * 4 + gc]]


def _gsv(tc: np.ndarray, s: _Sky, has_gsv: np.ndarray, no_almanac: np.ndarray,
         ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]]:
    """GSV sentences per (row, constellation), and per sentence (row, constellation code,
    number - 1, body fields): the listed satellites of each printed constellation, four
    per sentence; before its first fix a receiver lists only what it tracks, without
    elevation and azimuth."""
    m, n_sat = s.tracked.shape
    listed = np.where(no_almanac[:, None], s.tracked, s.in_view)
    listed &= has_gsv[:, None]
    flat = np.flatnonzero(listed)
    r = flat // n_sat
    c = flat - r * n_sat
    group = r * 4 + _SAT_CONST[c]
    per = np.bincount(group, minlength=m * 4).reshape(m, 4)
    n_sent = np.where(has_gsv[:, None] & _HAS_SYS[tc], np.maximum(1, (per + 3) // 4), 0)
    pj, pc = np.nonzero(n_sent)
    pair_sent = n_sent[pj, pc]
    pair_first = _exclusive_cumsum(pair_sent)
    pair_id = np.zeros(m * 4, dtype=np.int64)
    pair_id[pj * 4 + pc] = np.arange(pj.size)
    of_pair = np.repeat(np.arange(pj.size), pair_sent)
    sj, sc = pj[of_pair], pc[of_pair]
    k = np.arange(of_pair.size) - pair_first[of_pair]
    slot = pair_first[pair_id[group]] * 4 + _ranks(group)  # four blocks per sentence
    blocks = np.zeros(of_pair.size * 4, _BLOCK)
    blocks[slot] = s.blocks.reshape(-1)[flat]
    unknown = no_almanac[r]
    if unknown.any():
        blocks[slot[unknown]] = _NO_ALMANAC_BLOCKS[c[unknown]]
    cn = np.where(s.tracked.reshape(-1)[flat],
                  np.clip(np.rint(s.cn0.reshape(-1)[flat]), 0, 99), _NO_CN0)
    blocks.view(np.uint16)[slot * 8 + 7] = _CN0_WORDS[cn.astype(np.int64)]
    return n_sent, (sj, sc, k, [
        _GSV_HEAD[tc[sj] * 4 + sc], uint_cols(pair_sent[of_pair], 2), _COMMA,
        uint_cols(k + 1, 2), _COMMA, uint_cols(per[sj, sc], 3, 2),
        blocks.view(np.uint8).reshape(of_pair.size, 64), _GSV_TAIL[tc[sj] * 4 + sc]])
