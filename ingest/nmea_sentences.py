"""Field values of each decoded sentence type, for all sentences of a batch at once.

All numeric fields of a batch go through one
:func:`~beiflow.ingest.nmea_fields.parse_numbers` call per field form (time, latitude,
longitude, integer, decimal); the per-type code below only picks fields, converts units
and decides which sentences carry a bad field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from beiflow.ingest import nmea_fields as nf
from beiflow.ingest.nmea_scan import (
    BAD_FIELD,
    GGA,
    GLL,
    GNS,
    GSA,
    GSV,
    RMC,
    TALKERS,
    TRUNCATED,
    TYPES,
    VTG,
    ZDA,
    Framed,
)
from beiflow.schemas.columns import CONSTELLATIONS, TALKER_CONSTELLATION

#: Fields (after the address) a sentence must have for us to read it.
MIN_FIELDS: dict[int, int] = {RMC: 9, GGA: 9, GNS: 9, GLL: 6, VTG: 8, GSA: 17, GSV: 3, ZDA: 4}
#: Numeric fields read per type: (field index after the address, form).
_NUMERIC: dict[int, tuple[tuple[int, str], ...]] = {
    RMC: ((0, nf.HHMMSS), (2, nf.DDMM), (4, nf.DDDMM), (6, nf.DEC), (7, nf.DEC),
          (8, nf.INT)),  # time, lat, lon, speed kn, course, ddmmyy
    GGA: ((0, nf.HHMMSS), (1, nf.DDMM), (3, nf.DDDMM), (5, nf.INT), (6, nf.INT), (7, nf.DEC),
          (8, nf.DEC)),  # time, lat, lon, quality, sats, hdop, alt
    GNS: ((0, nf.HHMMSS), (1, nf.DDMM), (3, nf.DDDMM), (6, nf.INT), (7, nf.DEC),
          (8, nf.DEC)),  # time, lat, lon, sats, hdop, alt
    GLL: ((0, nf.DDMM), (2, nf.DDDMM), (4, nf.HHMMSS)),  # lat, lon, time
    VTG: ((0, nf.DEC), (4, nf.DEC), (6, nf.DEC)),  # course true, speed kn, speed km/h
    GSA: ((14, nf.DEC), (15, nf.DEC), (16, nf.DEC)),  # pdop, hdop, vdop
    GSV: ((2, nf.INT), (6, nf.INT), (10, nf.INT), (14, nf.INT),
          (18, nf.INT)),  # in view, C/N0 of up to four satellites
    ZDA: ((0, nf.HHMMSS), (1, nf.INT), (2, nf.INT), (3, nf.INT)),  # time, day, month, year
}
#: One-character fields read per type.
_CHARS: dict[int, tuple[int, ...]] = {
    RMC: (1, 3, 5, 11),  # status, N/S, E/W, mode (2.3+)
    GGA: (2, 4),
    GNS: (2, 4),
    GLL: (1, 3, 5, 6),  # N/S, E/W, status, mode (2.3+)
    VTG: (8,),  # mode (2.3+)
    GSA: (),
    GSV: (),
    ZDA: (),
}
KNOT_MPS_NUM, KNOT_MPS_DEN = 1852.0, 3600.0

# GNS mode letters: rank for "best over constellations", and the GGA quality each maps to.
_GNS_ORDER = b"NSMEADPFR"
_GNS_RANK = np.full(256, -1, dtype=np.int8)
for _r, _c in enumerate(_GNS_ORDER):
    _GNS_RANK[_c] = _r
_GNS_QUALITY = np.array([b"NADPRFEMS".index(c) for c in _GNS_ORDER], dtype=np.int64)
_GNS_WIDTH = 8
# Talker -> constellation column (-1: GN, resolved per sentence from the 4.11 system id).
_TALKER_CONST = np.array([CONSTELLATIONS.index(TALKER_CONSTELLATION[t])
                          if t in TALKER_CONSTELLATION else -1 for t in TALKERS], dtype=np.int8)
# NMEA 4.11 GNSS system id -> constellation column.
_SYSTEM_CONST = np.full(256, -1, dtype=np.int8)
for _sid, _name in ((b"1", "gps"), (b"2", "glo"), (b"3", "gal"), (b"4", "bds"), (b"5", "qzss")):
    _SYSTEM_CONST[_sid[0]] = CONSTELLATIONS.index(_name)


@dataclass(slots=True)
class Decoded:
    """Values of one sentence type; row i belongs to Framed sentence ``rows[i]``."""

    rows: np.ndarray
    tod: np.ndarray  # microseconds of day, -1 when the sentence carries no time
    cols: dict[str, np.ndarray] = field(default_factory=dict)


def status_code(c: np.ndarray) -> np.ndarray:
    """A -> 1, V -> 0, anything else -1."""
    return np.where(c == 65, 1, np.where(c == 86, 0, -1)).astype(np.int16)


def mode_code(c: np.ndarray) -> np.ndarray:
    """A mode letter as its ASCII code, -1 when absent or not a capital letter."""
    return np.where((c >= 65) & (c <= 90), c, -1).astype(np.int16)


def decode_sentences(fr: Framed) -> tuple[dict[int, Decoded], np.ndarray]:
    """Values per type present in the batch, and a mask of sentences decoded without fault."""
    a = fr.a
    order = np.argsort(fr.kind, kind="stable")
    offsets = np.searchsorted(fr.kind[order], np.arange(len(TYPES) + 1))
    good = np.zeros(fr.pos.size, dtype=bool)
    rows: dict[int, np.ndarray] = {}
    for t in range(len(TYPES)):
        r = order[offsets[t]:offsets[t + 1]]
        short = fr.nf[r] < MIN_FIELDS[t]
        fr.rejects.add(fr.msg[r[short]], TRUNCATED, fr.pos[r[short]], fr.end[r[short]])
        if (~short).any():
            rows[t] = r[~short]

    # One parse per field form for every numeric field of the batch.
    requests: dict[str, list[tuple[int, int, np.ndarray, np.ndarray]]] = {}
    char_spans: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for t in rows:
        numeric = _NUMERIC[t]
        ks = tuple(k for k, _ in numeric) + _CHARS[t]
        start, end = nf.bounds(fr, rows[t], ks, MIN_FIELDS[t])
        for i, (_, form) in enumerate(numeric):
            requests.setdefault(form, []).append((t, i, start[i], end[i]))
        char_spans[t] = start[len(numeric):], end[len(numeric):]
    parsed: dict[tuple[int, int], nf.Numbers] = {}
    for form, reqs in requests.items():
        nums = nf.parse_numbers(a, np.concatenate([s for _, _, s, _ in reqs]),
                                np.concatenate([e for _, _, _, e in reqs]), form)
        at = 0
        for t, i, s, _ in reqs:
            parsed[t, i] = nums.take(slice(at, at + s.size))
            at += s.size
    out: dict[int, Decoded] = {}
    for t, r in rows.items():
        ch = nf.chars(a, *char_spans[t])
        fields = [parsed[t, i] for i in range(len(_NUMERIC[t]))]
        dec, bad = _DECODERS[t](fr, r, fields, ch)
        fr.rejects.add(fr.msg[r[bad]], BAD_FIELD, fr.pos[r[bad]], fr.end[r[bad]])
        keep = ~bad
        dec.rows = r[keep]
        dec.tod = dec.tod[keep]
        dec.cols = {name: v[keep] for name, v in dec.cols.items()}
        good[dec.rows] = True
        out[t] = dec
    return out, good


def _position(f: list[nf.Numbers], ch: np.ndarray, i_lat: int, i_ns: int,
              i_ew: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lat, bad_lat = nf.to_degrees(f[i_lat], ch[i_ns], 78, 83, 90)  # N, S
    lon, bad_lon = nf.to_degrees(f[i_lat + 1], ch[i_ew], 69, 87, 180)  # E, W
    missing = np.isnan(lat) | np.isnan(lon)
    return np.where(missing, np.nan, lat), np.where(missing, np.nan, lon), bad_lat | bad_lon


def _speed(x: nf.Numbers, per_unit: float) -> tuple[np.ndarray, np.ndarray]:
    """Speed in m/s from a value in a unit worth ``per_unit / 3600`` m/s (one rounding)."""
    v = x.mant * per_unit / (KNOT_MPS_DEN * nf.P10[x.frac])
    v = np.where(x.neg, -v, v)
    return np.where(x.status == nf.OK, v, np.nan), x.status == nf.BAD


def _rmc(fr: Framed, r: np.ndarray, f: list[nf.Numbers],
         ch: np.ndarray) -> tuple[Decoded, np.ndarray]:
    tod, b0 = nf.to_tod(f[0])
    lat, lon, b1 = _position(f, ch, 1, 1, 2)
    speed, b2 = _speed(f[3], KNOT_MPS_NUM)
    course, b3 = nf.to_float(f[4])
    date, b4 = nf.to_ddmmyy(f[5])
    cols = {"lat": lat, "lon": lon, "speed": speed, "course": course, "date": date,
            "status": status_code(ch[0]), "mode": mode_code(ch[3])}
    return Decoded(r, tod, cols), b0 | b1 | b2 | b3 | b4


def _gga(fr: Framed, r: np.ndarray, f: list[nf.Numbers],
         ch: np.ndarray) -> tuple[Decoded, np.ndarray]:
    tod, b0 = nf.to_tod(f[0])
    lat, lon, b1 = _position(f, ch, 1, 0, 1)
    quality, b2 = nf.to_int(f[3])
    sats, b3 = nf.to_int(f[4])
    hdop, b4 = nf.to_float(f[5])
    alt, b5 = nf.to_float(f[6])
    cols = {"lat": lat, "lon": lon, "quality": quality, "sats": sats, "hdop": hdop, "alt": alt}
    return Decoded(r, tod, cols), b0 | b1 | b2 | b3 | b4 | b5


def _gns(fr: Framed, r: np.ndarray, f: list[nf.Numbers],
         ch: np.ndarray) -> tuple[Decoded, np.ndarray]:
    tod, b0 = nf.to_tod(f[0])
    lat, lon, b1 = _position(f, ch, 1, 0, 1)
    sats, b2 = nf.to_int(f[3])
    hdop, b3 = nf.to_float(f[4])
    alt, b4 = nf.to_float(f[5])
    start, end = nf.bounds(fr, r, (5,), MIN_FIELDS[GNS])
    cols = np.arange(_GNS_WIDTH)[:, None]
    letters = fr.a[start[0][None, :] + cols]
    rank = np.where(cols < (end - start), _GNS_RANK[letters], -1).max(axis=0, initial=-1)
    best = np.maximum(rank, 0)
    quality = np.where(rank >= 0, _GNS_QUALITY[best], -1)
    mode = np.where(rank >= 0, np.frombuffer(_GNS_ORDER, np.uint8)[best], -1)
    out = {"lat": lat, "lon": lon, "quality": quality, "sats": sats, "hdop": hdop, "alt": alt,
           "mode": mode.astype(np.int16)}
    return Decoded(r, tod, out), b0 | b1 | b2 | b3 | b4


def _gll(fr: Framed, r: np.ndarray, f: list[nf.Numbers],
         ch: np.ndarray) -> tuple[Decoded, np.ndarray]:
    lat, lon, b0 = _position(f, ch, 0, 0, 1)
    tod, b1 = nf.to_tod(f[2])
    cols = {"lat": lat, "lon": lon, "status": status_code(ch[2]), "mode": mode_code(ch[3])}
    return Decoded(r, tod, cols), b0 | b1


def _vtg(fr: Framed, r: np.ndarray, f: list[nf.Numbers],
         ch: np.ndarray) -> tuple[Decoded, np.ndarray]:
    course, b0 = nf.to_float(f[0])
    knots, b1 = _speed(f[1], KNOT_MPS_NUM)
    kmh, b2 = _speed(f[2], 1000.0)
    cols = {"speed": np.where(np.isnan(knots), kmh, knots), "course": course,
            "mode": mode_code(ch[0])}
    return Decoded(r, np.full(r.size, -1, np.int64), cols), b0 | b1 | b2


def _gsa(fr: Framed, r: np.ndarray, f: list[nf.Numbers],
         ch: np.ndarray) -> tuple[Decoded, np.ndarray]:
    pdop, b0 = nf.to_float(f[0])
    hdop, b1 = nf.to_float(f[1])
    vdop, b2 = nf.to_float(f[2])
    cols = {"pdop": pdop, "hdop": hdop, "vdop": vdop}
    return Decoded(r, np.full(r.size, -1, np.int64), cols), b0 | b1 | b2


def _gsv(fr: Framed, r: np.ndarray, f: list[nf.Numbers],
         ch: np.ndarray) -> tuple[Decoded, np.ndarray]:
    inview, bad = nf.to_int(f[0])
    snr_sum = np.zeros(r.size)
    snr_n = np.zeros(r.size, dtype=np.int64)
    for x in f[1:]:
        v, b = nf.to_int(x)
        bad |= b
        snr_sum += np.maximum(v, 0)
        snr_n += v >= 0
    const = _TALKER_CONST[fr.talker[r]]
    n_fields = fr.nf[r]
    # NMEA 4.10+: one field after the satellite blocks (signal id; a system id on GN).
    has_id = (n_fields - 3) % 4 == 1
    last = fr.commas[np.minimum(fr.c0[r] + n_fields - 1, fr.commas.size - 1)] + 1
    ident = np.where(has_id & (fr.body_end[r] - last == 1), fr.a[last], 0)
    const = np.where(const >= 0, const, _SYSTEM_CONST[ident])
    cols = {"const": const, "inview": inview, "snr_sum": snr_sum, "snr_n": snr_n}
    return Decoded(r, np.full(r.size, -1, np.int64), cols), bad


def _zda(fr: Framed, r: np.ndarray, f: list[nf.Numbers],
         ch: np.ndarray) -> tuple[Decoded, np.ndarray]:
    tod, b0 = nf.to_tod(f[0])
    day, b1 = nf.to_int(f[1])
    month, b2 = nf.to_int(f[2])
    year, b3 = nf.to_int(f[3])
    present = (day >= 0) & (month >= 0) & (year >= 0)
    ok = present & nf.valid_date(year, month, day) & (year >= 1980)
    date = np.where(ok, nf.days_from_civil(year, month, day), -1)
    return Decoded(r, tod, {"date": date}), b0 | b1 | b2 | b3 | (present & ~ok)


_DECODERS = {RMC: _rmc, GGA: _gga, GNS: _gns, GLL: _gll, VTG: _vtg, GSA: _gsa, GSV: _gsv,
             ZDA: _zda}
