"""NMEA 0183 sentence encoding, as Beidou/GNSS terminals emit it (2.3 to 4.11 field layouts).

Two layers: ``*_body`` functions build a sentence body (between ``$`` and ``*``) from
fields already formatted the way a receiver prints them (time of day, position), so a
simulator formats shared fields once per epoch; :func:`frame` adds the checksums of many
bodies at once. The datetime-based ``gga``/``rmc``/``gsa``/``gsv``/``zda`` wrappers make
single sentences (7-decimal minutes, NMEA 4.10 RMC).

For many sentences at once there are byte-matrix helpers: a sentence is one row of a
``uint8`` matrix, its fields blocks of columns (:func:`text_table` rows picked per
sentence, :func:`uint_cols` and :func:`fixed_cols` digits computed for every row at once)
joined by :func:`hstack`; NUL bytes are padding (a variable-width field is right- or
left-aligned in its block) that :func:`framed_rows` ignores in the checksum and
:func:`payloads` drops. Numbers print as ``f"{x:.Nf}"`` does, up to the last-bit rounding
of ``x * 10**N``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import reduce

import numpy as np

KNOTS_PER_MPS = 3600 / 1852
_HEX = tuple(f"{i:02X}" for i in range(256))


def checksum(body: str) -> str:
    """XOR of the bytes between ``$`` and ``*``, two upper-case hex digits."""
    return _HEX[reduce(operator.xor, body.encode("ascii"), 0)]


def sentence(body: str) -> str:
    """``$body*CS``."""
    return f"${body}*{checksum(body)}"


def frame(bodies: Sequence[str]) -> list[str]:
    """``$body*CS`` of every body, the checksums computed in one vectorised pass."""
    if not bodies:
        return []
    a = np.frombuffer("".join(bodies).encode("ascii"), dtype=np.uint8)
    lengths = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))
    if (lengths == 0).any():
        raise ValueError("empty sentence body")
    starts = np.zeros(lengths.size, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    sums = np.bitwise_xor.reduceat(a, starts).tolist()
    return [f"${b}*{_HEX[c]}" for b, c in zip(bodies, sums, strict=True)]


_POW10 = 10 ** np.arange(19, dtype=np.int64)
_HEX_COLS = np.frombuffer("".join(_HEX).encode("ascii"), np.uint8).reshape(256, 2)
_CRLF = np.frombuffer(b"\r\n", np.uint8)
_DOT = np.array([[ord(".")]], np.uint8)
#: Ends a payload in the matrix given to :func:`payloads`.
PAYLOAD_END = 1


def text_table(texts: Sequence[str], width: int | None = None) -> np.ndarray:
    """``(len(texts), width)`` bytes, each text left-aligned and NUL-padded: index it with a
    per-row choice (``table[codes]``) to get a field block."""
    raw = [t.encode("ascii") for t in texts]
    w = max(map(len, raw), default=0) if width is None else width
    out = np.zeros((len(raw), w), np.uint8)
    for k, b in enumerate(raw):
        out[k, :len(b)] = np.frombuffer(b, np.uint8)
    return out


def _digits_arith(v: np.ndarray, width: int, min_digits: int) -> np.ndarray:
    pw = _POW10[width - 1::-1]
    v = v[:, None]
    digits = (v // pw) % 10 + 48
    keep = (v >= pw) | (pw < 10**min_digits)
    return np.where(keep, digits, 0).astype(np.uint8)


#: 0..9999 as four right-aligned digit bytes (little-endian uint32 words), per minimum
#: number of digits 1..4: ``uint_cols`` by table lookup.
_DIGITS4 = [_digits_arith(np.arange(10_000), 4, k).view(np.uint32)[:, 0] for k in range(5)]


def uint_cols(v: np.ndarray, width: int, min_digits: int = 1) -> np.ndarray:
    """Decimal digits of non-negative integers (``f"{v:0{min_digits}d}"``), right-aligned
    in ``width`` columns behind NULs; ``v`` must have at most ``width`` digits."""
    v = np.asarray(v, np.int64)
    if v.size and (v.min() < 0 or (width < 19 and v.max() >= _POW10[width])):
        raise ValueError(f"values do not fit {width} digits")
    if width <= 4:
        return _DIGITS4[min(min_digits, 4)][v].view(np.uint8).reshape(v.size, 4)[:, 4 - width:]
    if min_digits >= width:  # fixed width: four digits at a time
        chunks = []
        for _ in range(0, width, 4):
            v, low = np.divmod(v, 10_000)
            chunks.append(_DIGITS4[4][low].view(np.uint8).reshape(v.size, 4))
        return np.concatenate(chunks[::-1], axis=1)[:, -width:]
    if not v.size or v.max() < 10_000:
        out = np.zeros((v.size, width), np.uint8)
        out[:, -4:] = _DIGITS4[min_digits][v].view(np.uint8).reshape(v.size, 4)
        return out
    return _digits_arith(v, width, min_digits)


def fixed_cols(x: np.ndarray, decimals: int | np.ndarray, int_width: int, *,
               signed: bool = False) -> np.ndarray:
    """``f"{x:.{decimals}f}"`` per row (``decimals`` scalar or per row, >= 1): integer part
    right-aligned in ``int_width`` columns (plus one for a sign), fraction left-aligned in
    ``max(decimals)`` columns. NaN prints as 0."""
    x = np.nan_to_num(np.asarray(x, np.float64))
    dec = np.broadcast_to(np.asarray(decimals, np.int64), x.shape)
    top = int(dec.max(initial=1))
    v = np.rint(np.abs(x) * (10.0 ** dec)).astype(np.int64)
    ip, fp = np.divmod(v, _POW10[dec])
    frac = uint_cols(fp * _POW10[top - dec], top, top)
    if top > 1 and dec.min() < top:
        frac = np.where(np.arange(top)[None, :] < dec[:, None], frac, 0).astype(np.uint8)
    parts = [uint_cols(ip, int_width), _DOT.repeat(x.size, 0), frac]
    if signed:
        parts.insert(0, np.where(np.signbit(x), ord("-"), 0).astype(np.uint8)[:, None])
    return np.concatenate(parts, axis=1)


def hstack(pieces: Sequence[np.ndarray], rows: int, width: int = 0) -> np.ndarray:
    """Column blocks side by side; a block of one row (a literal) is repeated on every row.
    NUL columns pad the matrix to ``width`` columns."""
    widths = [p.shape[1] for p in pieces]
    total = sum(widths)
    out = np.empty((rows, max(total, width)), np.uint8)
    out[:, total:] = 0
    at = 0
    for p, w in zip(pieces, widths, strict=True):
        out[:, at:at + w] = p
        at += w
    return out


def literal(text: str) -> np.ndarray:
    """A constant field block (one row, broadcast by :func:`hstack`)."""
    return text_table([text])


_DOLLAR = literal("$")


def framed_rows(pieces: Sequence[np.ndarray], rows: int, width: int = 0) -> np.ndarray:
    """``$body*CS\\r\\n`` per row, the body given as field blocks (as for :func:`hstack`;
    NULs are not part of it), NUL-padded to ``width`` columns (fastest a multiple of 8)."""
    w = sum(p.shape[1] for p in pieces) + 1
    out = hstack([_DOLLAR, *pieces], rows, max(w + 5, width))
    checksum = _xor_rows(out) ^ ord("$")
    out[:, w] = ord("*")
    out[:, w + 1:w + 3] = _HEX_COLS[checksum]
    out[:, w + 3:w + 5] = _CRLF
    return out


def _xor_rows(bodies: np.ndarray) -> np.ndarray:
    """XOR of every row's bytes (eight at a time when the rows allow it)."""
    if bodies.shape[1] % 8 or not bodies.flags.c_contiguous or not bodies.size:
        return np.bitwise_xor.reduce(bodies, axis=1)
    words = bodies.view(np.uint64)
    x = words[:, 0].copy()
    for k in range(1, words.shape[1]):
        x ^= words[:, k]
    for shift in (32, 16, 8):
        x ^= x >> np.uint64(shift)
    return (x & np.uint64(0xFF)).astype(np.uint8)


def payloads(matrix: np.ndarray) -> list[bytes]:
    """The bytes of a matrix of framed rows without NULs, cut after each
    :data:`PAYLOAD_END` byte (which is dropped; put one after each payload's last row)."""
    return matrix.tobytes().translate(None, b"\0").split(bytes([PAYLOAD_END]))[:-1]


def hms(t: float, decimals: int = 2) -> str:
    """Time of day ``hhmmss.ss`` of Unix time ``t`` (UTC), fraction truncated as receivers do."""
    us = round(t * 1_000_000) % 86_400_000_000
    s, frac = divmod(us, 1_000_000)
    h, rest = divmod(s, 3600)
    head = f"{h:02d}{rest // 60:02d}{rest % 60:02d}"
    if decimals <= 0:
        return head
    return f"{head}.{frac // 10 ** (6 - decimals):0{decimals}d}"


def position_fields(lat: np.ndarray, lon: np.ndarray, decimals: int = 7) -> list[str]:
    """``ddmm.mmmm,N,dddmm.mmmm,E`` per fix (``decimals`` digits of a minute), vectorised."""
    la = np.asarray(lat, dtype=np.float64)
    lo = np.asarray(lon, dtype=np.float64)
    unit = 10**decimals
    out = []
    for deg_width, values, hemis in ((2, la, "NS"), (3, lo, "EW")):
        # integer arithmetic: no "60.0000" minutes from rounding
        total = np.rint(np.abs(values) * 60 * unit).astype(np.int64)
        deg, rest = np.divmod(total, 60 * unit)
        minutes, frac = np.divmod(rest, unit)
        hemi = np.where(values >= 0, hemis[0], hemis[1]).tolist()
        out.append([f"{d:0{deg_width}d}{m:02d}.{f:0{decimals}d},{h}" for d, m, f, h
                    in zip(deg.tolist(), minutes.tolist(), frac.tolist(), hemi, strict=True)])
    return [f"{a},{b}" for a, b in zip(*out, strict=True)]


def gga_body(talker: str, time: str, position: str | None, quality: int, sats: int,
             hdop: str, alt_m: float, geoid_sep_m: float = 9.5) -> str:
    """Fix data; empty position fields, quality 0 and HDOP 99.99 without a fix."""
    if position is None or quality == 0:
        return f"{talker}GGA,{time},,,,,0,{sats:02d},99.99,,,,,,"
    return (f"{talker}GGA,{time},{position},{quality},{sats:02d},{hdop},{alt_m:.1f},M,"
            f"{geoid_sep_m:.1f},M,,")


def rmc_body(talker: str, time: str, position: str | None, speed: str, course: str,
             ddmmyy: str, mode: str = "A", nav_status: bool = True) -> str:
    """Recommended minimum data with the 2.3 mode indicator; ``nav_status`` adds the 4.10
    navigational status field (``V``: no navigational status)."""
    tail = ",V" if nav_status else ""
    if position is None:
        return f"{talker}RMC,{time},V,,,,,,,{ddmmyy},,,N{tail}"
    return f"{talker}RMC,{time},A,{position},{speed},{course},{ddmmyy},,,{mode}{tail}"


def vtg_body(talker: str, course: str, speed_mps: float | None, mode: str = "A",
             decimals: int = 3) -> str:
    """Course and speed over ground (knots and km/h); empty fields without a fix."""
    if speed_mps is None:
        return f"{talker}VTG,,T,,M,,N,,K,N"
    return (f"{talker}VTG,{course},T,,M,{speed_mps * KNOTS_PER_MPS:.{decimals}f},N,"
            f"{speed_mps * 3.6:.{decimals}f},K,{mode}")


def gsa_body(talker: str, prns: Sequence[str], dops: str, fix_type: int = 3,
             system_id: int | None = None) -> str:
    """DOP and active satellites (12 slots of PRN texts); ``dops`` is ``"p,h,v"``; NMEA 4.11
    appends the GNSS system id."""
    slots = [*prns[:12], *[""] * (12 - min(len(prns), 12))]
    tail = f",{system_id}" if system_id is not None else ""
    return f"{talker}GSA,A,{fix_type},{','.join(slots)},{dops}{tail}"


def gsv_bodies(talker: str, blocks: Sequence[str], signal_id: str | None = None) -> list[str]:
    """Satellites in view, four blocks (``,prn,el,az,cn0``) per sentence; NMEA 4.10+ appends
    the signal id. No satellites: one sentence with none."""
    groups = [blocks[i:i + 4] for i in range(0, len(blocks), 4)] or [[]]
    tail = f",{signal_id}" if signal_id is not None else ""
    return [f"{talker}GSV,{len(groups)},{n},{len(blocks):02d}{''.join(group)}{tail}"
            for n, group in enumerate(groups, 1)]


def _hms(t: datetime) -> str:
    return f"{t:%H%M%S}.{t.microsecond // 10_000:02d}"


def _position(lat: float | None, lon: float | None) -> str | None:
    if lat is None or lon is None:
        return None
    return position_fields(np.array([lat]), np.array([lon]))[0]


@dataclass(frozen=True, slots=True)
class Satellite:
    """One satellite as GSV reports it (``None``: empty field, e.g. C/N0 when not tracked,
    elevation and azimuth before the receiver has an almanac)."""

    prn: int
    elevation_deg: int | None
    azimuth_deg: int | None
    cn0_dbhz: int | None

    def block(self) -> str:
        """The satellite's four GSV fields with their leading commas."""
        el = "" if self.elevation_deg is None else f"{self.elevation_deg:02d}"
        az = "" if self.azimuth_deg is None else f"{self.azimuth_deg:03d}"
        cn = "" if self.cn0_dbhz is None else f"{self.cn0_dbhz:02d}"
        return f",{self.prn:02d},{el},{az},{cn}"


def gga(talker: str, t: datetime, lat: float | None, lon: float | None, quality: int,
        sats: int, hdop: float, alt_m: float, geoid_sep_m: float = 9.5) -> str:
    """Fix data; empty position fields when there is no fix."""
    return sentence(gga_body(talker, _hms(t), _position(lat, lon), quality, sats,
                             f"{hdop:.2f}", alt_m, geoid_sep_m))


def rmc(talker: str, t: datetime, lat: float | None, lon: float | None, speed_mps: float,
        course_deg: float | None) -> str:
    """Recommended minimum data, NMEA 4.10 (mode indicator and navigational status)."""
    course = "" if course_deg is None else f"{course_deg:.2f}"
    return sentence(rmc_body(talker, _hms(t), _position(lat, lon),
                             f"{speed_mps * KNOTS_PER_MPS:.3f}", course, f"{t:%d%m%y}"))


def gsa(talker: str, prns: list[int], pdop: float, hdop: float, vdop: float,
        system_id: int | None = None) -> str:
    """DOP and active satellites (12 slots); NMEA 4.11 appends the GNSS system id."""
    return sentence(gsa_body(talker, [f"{p:02d}" for p in prns],
                             f"{pdop:.2f},{hdop:.2f},{vdop:.2f}", 3, system_id))


def gsv(talker: str, sats: list[Satellite], signal_id: str | None = None) -> list[str]:
    """Satellites in view, four per sentence; NMEA 4.10 appends the signal id."""
    return [sentence(b) for b in gsv_bodies(talker, [s.block() for s in sats], signal_id)]


def zda(talker: str, t: datetime) -> str:
    """UTC date and time."""
    return sentence(f"{talker}ZDA,{_hms(t)},{t:%d},{t:%m},{t:%Y},00,00")
