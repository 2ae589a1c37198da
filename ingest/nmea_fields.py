"""Vectorised NMEA field parsing: decimal text to exact integers, times, dates, degrees.

Each field is loaded as one or two unaligned little-endian uint64 words ending at its last
byte (a strided view of the batch buffer), bytes before the field are replaced by '0',
and eight ASCII digits per word are converted with three multiplies (SWAR). Every step is
a NumPy operation over all fields of the batch at once. The result is an exact integer
mantissa plus the number of decimals; times, dates and ddmm.mmmm angles are derived
from it with integer-valued float arithmetic, so ``hhmmss.sss`` and ``ddmm.mmmmmmm`` are
converted exactly, never through a binary float of the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from beiflow.ingest.nmea_scan import Framed

EMPTY, OK, BAD = 0, 1, 2
P10 = 10.0 ** np.arange(23)
_NUMBER = re.compile(rb"([+-]?)(\d*)(?:\.(\d*))?")
_MAX_DIGITS = 18
_MONTH_DAYS = np.array([0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


@dataclass(slots=True)
class Numbers:
    """Decimal fields as exact parts: value = (-1 if neg) * mant / 10**frac."""

    mant: np.ndarray  # float64 holding an exact integer
    frac: np.ndarray  # int64 digits after the dot
    nint: np.ndarray  # int64 digits before the dot
    neg: np.ndarray  # bool
    status: np.ndarray  # int8: EMPTY, OK or BAD

    def take(self, sl: slice) -> Numbers:
        """The rows of one contiguous request."""
        return Numbers(self.mant[sl], self.frac[sl], self.nint[sl], self.neg[sl],
                       self.status[sl])


#: Field forms for :func:`parse_numbers`: digits before a mandatory dot, or free decimal.
INT, DEC, HHMMSS, DDMM, DDDMM = "int", "dec", "hhmmss", "ddmm", "dddmm"
_ANCHOR = {HHMMSS: 6, DDMM: 4, DDDMM: 5}


def parse_numbers(a: np.ndarray, starts: np.ndarray, ends: np.ndarray, form: str) -> Numbers:
    """Parse the decimal fields ``a[starts[i]:ends[i]]`` (optional sign, at most one dot).

    ``form`` picks the fast path: ``int`` (up to 8 digits), ``hhmmss``/``ddmm``/``dddmm``
    (that many digits, then an optional dot and up to 8 decimals) or ``dec`` (anything
    up to 16 characters). Fields a fast path cannot vouch for fall through to the
    general one and finally to a Python parser, which alone decides they are bad (as
    are numbers of more than 18 digits).
    ``a`` must have at least 16 bytes before the first and after the last field.
    """
    n = starts.size
    out = Numbers(np.zeros(n), np.zeros(n, np.int64), np.zeros(n, np.int64),
                  np.zeros(n, bool), np.full(n, BAD, np.int8))
    if not n:
        return out
    words = np.ndarray(shape=(a.size - 7,), dtype="<u8", buffer=a, strides=(1,))
    length = ends - starts
    if form == INT:
        unsure = _int(words, starts, ends, out, slice(None))
    elif form in _ANCHOR:
        unsure = _anchored(a, words, starts, ends, _ANCHOR[form], out, slice(None))
    else:
        unsure = np.ones(n, dtype=bool)
    unsure &= length > 0
    for wide in (False, True):
        sel = unsure & ((length > 8) == wide) & (length <= 16)
        if sel.any():
            idx = np.flatnonzero(sel)
            unsure[idx] = _dec(a, words, starts[idx], ends[idx], wide, out, idx)
    out.status[length == 0] = EMPTY
    for i in np.flatnonzero(unsure & (length > 0)):
        _parse_slow(a[starts[i]:ends[i]].tobytes(), out, int(i))
    return out


_U = np.uint64
_ZEROS = _U(0x3030303030303030)
_DOTS = _U(0x2E2E2E2E2E2E2E2E)
_LOW7 = _U(0x7F7F7F7F7F7F7F7F)
_NIBBLE_HI = _U(0xF0F0F0F0F0F0F0F0)
_SIXES = _U(0x0606060606060606)
# _KEEP_TOP[n]: the n highest-address bytes of a little-endian word; _PAD_ZEROS: '0' elsewhere.
_KEEP_TOP = np.array([0] + [(2**64 - 1) ^ ((1 << (64 - 8 * i)) - 1) for i in range(1, 9)],
                     dtype=np.uint64)
_PAD_ZEROS = _ZEROS & ~_KEEP_TOP


def _right(words: np.ndarray, ends: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """The ``nbytes`` (0..8) bytes before ``ends`` as the top of a word, '0'-padded below."""
    nb = np.clip(nbytes, 0, 8)
    return (words[ends - 8] & _KEEP_TOP[nb]) | _PAD_ZEROS[nb]


def _digits_ok(x: np.ndarray) -> np.ndarray:
    return ((x & _NIBBLE_HI) == _ZEROS) & (((x + _SIXES) & _NIBBLE_HI) == _ZEROS)


def _eight_digits(x: np.ndarray) -> np.ndarray:
    """Value of eight ASCII digits loaded little-endian (first digit most significant)."""
    x = x & _U(0x0F0F0F0F0F0F0F0F)
    x = (x * _U(2561)) >> _U(8)
    x = ((x & _U(0x00FF00FF00FF00FF)) * _U(6553601)) >> _U(16)
    return (((x & _U(0x0000FFFF0000FFFF)) * _U(42949672960001)) >> _U(32)).astype(np.float64)


def _int(words: np.ndarray, starts: np.ndarray, ends: np.ndarray, out: Numbers,
         at: slice | np.ndarray) -> np.ndarray:
    """Up to eight plain digits; returns the rows it cannot vouch for."""
    length = ends - starts
    x = _right(words, ends, length)
    ok = (length <= 8) & _digits_ok(x)
    out.mant[at] = _eight_digits(x)
    out.nint[at] = length
    out.status[at] = np.where(ok, OK, BAD)
    return ~ok


def _anchored(a: np.ndarray, words: np.ndarray, starts: np.ndarray, ends: np.ndarray,
              n_int: int, out: Numbers, at: slice | np.ndarray) -> np.ndarray:
    """``n_int`` digits, then optionally '.' and up to eight decimals; returns unsure rows."""
    length = ends - starts
    shift = _U(8 * (8 - n_int))
    head = (words[starts] << shift) | (_ZEROS & ((_U(1) << shift) - _U(1)))
    decimals = length - n_int - 1
    tail = _right(words, ends, decimals)
    dot_ok = (length == n_int) | (a[starts + n_int] == np.uint8(46))
    ok = ((length >= n_int) & (decimals <= 8) & dot_ok & _digits_ok(head) & _digits_ok(tail))
    frac = np.clip(decimals, 0, 8)
    out.mant[at] = _eight_digits(head) * P10[frac] + _eight_digits(tail)
    out.frac[at] = frac
    out.nint[at] = n_int
    out.status[at] = np.where(ok, OK, BAD)
    return ~ok


def _dec(a: np.ndarray, words: np.ndarray, starts: np.ndarray, ends: np.ndarray, wide: bool,
         out: Numbers, at: np.ndarray) -> np.ndarray:
    """Sign, digits and at most one dot within the last 8 bytes; returns unsure rows.

    The dot byte becomes a '0' digit, which is then cut out of the value arithmetically.
    With ``wide``, up to 8 more leading digits come from the word before.
    """
    lead = a[starts]
    sign = (lead == np.uint8(45)) | (lead == np.uint8(43))
    nbytes = ends - starts - sign
    x = _right(words, ends, nbytes)
    y = x ^ _DOTS
    z = ~(((y & _LOW7) + _LOW7) | y | _LOW7)  # 0x80 in each '.' byte
    n_dots = np.bitwise_count(z).astype(np.int64)
    x = x + (z >> _U(6))  # '.' + 2 == '0'
    after = 7 - (np.bitwise_count(z - _U(1)).astype(np.int64) >> 3)  # digits right of the dot
    ok = (n_dots <= 1) & _digits_ok(x) & (nbytes - n_dots >= 1)
    value = _eight_digits(x)
    if wide:
        hi = _right(words, ends - 8, nbytes - 8)
        ok &= _digits_ok(hi)
        value += _eight_digits(hi) * 1e8
    has = n_dots == 1
    p = np.maximum(after, 0)
    high = np.floor(value / P10[p + 1])
    value = np.where(has, high * P10[p] + (value - high * P10[p + 1]), value)
    frac = np.where(has, after, 0)
    out.mant[at] = value
    out.frac[at] = frac
    out.nint[at] = nbytes - n_dots - frac
    out.neg[at] = lead == np.uint8(45)
    out.status[at] = np.where(ok, OK, BAD)
    return ~ok


def _parse_slow(text: bytes, out: Numbers, i: int) -> None:
    """Anything the fast paths left: a plain regex; more than 18 digits is bad too."""
    m = _NUMBER.fullmatch(text)
    if m is None or not (m[2] or m[3]):
        return
    digits = m[2] + (m[3] or b"")
    if len(digits) > _MAX_DIGITS:
        return
    out.mant[i] = float(int(digits))
    out.frac[i] = len(m[3] or b"")
    out.nint[i] = len(m[2])
    out.neg[i] = m[1] == b"-"
    out.status[i] = OK


def bounds(fr: Framed, rows: np.ndarray, ks: tuple[int, ...],
           min_fields: int) -> tuple[np.ndarray, np.ndarray]:
    """Start/end offsets of fields ``ks`` (after the address) of sentences ``rows``.

    Shape ``(len(ks), rows.size)``. Every sentence has at least ``min_fields`` fields;
    fields beyond a sentence's last are empty.
    """
    c = fr.c0[rows][None, :] + np.asarray(ks, dtype=np.int64)[:, None]
    start = fr.commas[c] + 1
    end = fr.commas[c + 1]
    for i, k in enumerate(ks):
        if k + 1 >= min_fields:  # may be the last field, or absent
            nf, body_end = fr.nf[rows], fr.body_end[rows]
            end[i] = np.where(k + 1 < nf, end[i], body_end)
            if k >= min_fields:
                start[i] = np.where(k < nf, start[i], body_end)
                end[i] = np.where(k < nf, end[i], body_end)
    return start, end


def chars(a: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """One-character fields as their byte: 0 when empty, 255 when longer than one."""
    length = end - start
    return np.where(length == 1, a[start], np.where(length == 0, 0, 255)).astype(np.uint8)


def to_float(x: Numbers) -> tuple[np.ndarray, np.ndarray]:
    """(value or NaN, bad mask)."""
    v = x.mant / P10[x.frac]
    v = np.where(x.neg, -v, v)
    return np.where(x.status == OK, v, np.nan), x.status == BAD


def to_int(x: Numbers) -> tuple[np.ndarray, np.ndarray]:
    """(non-negative integer or -1, bad mask); "08" and "8" alike, no decimals allowed."""
    ok = (x.status == OK) & (x.frac == 0) & ~x.neg & (x.mant < 2**31)
    bad = (x.status == BAD) | ((x.status == OK) & ~ok)
    return np.where(ok, x.mant, -1).astype(np.int64), bad


def to_tod(x: Numbers) -> tuple[np.ndarray, np.ndarray]:
    """hhmmss[.s...] as microseconds of the day (-1 when empty), bad mask.

    Exact: the digits are an integer; fractions beyond microseconds are truncated.
    """
    scale = P10[x.frac]
    hms = np.floor(x.mant / scale)
    part = x.mant - hms * scale
    us = np.where(x.frac <= 6, part * P10[np.maximum(6 - x.frac, 0)],
                  np.floor(part / P10[np.maximum(x.frac - 6, 0)]))
    hh = np.floor(hms / 10_000)
    mm = np.floor(hms / 100) - hh * 100
    ss = hms - np.floor(hms / 100) * 100
    ok = ((x.status == OK) & (x.nint == 6) & ~x.neg & (hh < 24) & (mm < 60) & (ss <= 60))
    tod = ((hh * 60 + mm) * 60 + ss) * 1e6 + us
    bad = (x.status == BAD) | ((x.status == OK) & ~ok)
    return np.where(ok, tod, -1).astype(np.int64), bad


def days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (vectorised, int64)."""
    y = y.astype(np.int64) - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    mp = (m.astype(np.int64) + 9) % 12
    doy = (153 * mp + 2) // 5 + d.astype(np.int64) - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def valid_date(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Whether (y, m, d) is a calendar date (1 <= m <= 12, day within the month)."""
    mi = np.clip(m, 0, 12).astype(np.int64)
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    limit = np.where((mi == 2) & ~leap, 28, _MONTH_DAYS[mi])
    return (m >= 1) & (m <= 12) & (d >= 1) & (d <= limit)


def to_ddmmyy(x: Numbers) -> tuple[np.ndarray, np.ndarray]:
    """RMC date ddmmyy as days since the Unix epoch (-1 when empty), bad mask.

    Two-digit years 80-99 are 1980-1999, 00-79 are 2000-2079 (GPS epoch pivot).
    Computed once per distinct value: a batch holds few dates.
    """
    ok = (x.status == OK) & (x.nint == 6) & (x.frac == 0) & ~x.neg
    values, inverse = _distinct(np.where(ok, x.mant, -1.0))
    dd = np.floor(values / 10_000)
    mm = np.floor(values / 100) - dd * 100
    yy = values - np.floor(values / 100) * 100
    year = np.where(yy >= 80, 1900, 2000) + yy
    valid = (values >= 0) & valid_date(year, mm, dd)
    days = days_from_civil(year.astype(np.int64), mm.astype(np.int64), dd.astype(np.int64))
    days = np.where(valid, days, -1)[inverse]
    bad = (x.status == BAD) | ((x.status == OK) & (days < 0))
    return days, bad


def _distinct(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, index of each input in them); fast when all are equal."""
    if v.size and (v == v[0]).all():
        return v[:1], np.zeros(v.size, dtype=np.intp)
    return np.unique(v, return_inverse=True)


def to_degrees(x: Numbers, hemi: np.ndarray, positive: int, negative: int,
               max_deg: int) -> tuple[np.ndarray, np.ndarray]:
    """(d)ddmm.mmmm plus hemisphere letter as signed degrees (NaN when empty), bad mask.

    The total in minutes is an exact integer at the field's own precision, so the result
    is the correctly rounded double of the exact decimal value.
    """
    scale = P10[x.frac]
    deg = np.floor(x.mant / (100 * scale))
    minutes = x.mant - deg * 100 * scale
    value = (deg * 60 * scale + minutes) / (60 * scale)
    ok = ((x.status == OK) & ~x.neg & (x.nint >= 3) & (minutes < 60 * scale)
          & (value <= max_deg) & ((hemi == positive) | (hemi == negative)))
    bad = (x.status == BAD) | ((x.status == OK) & ~ok)
    value = np.where(hemi == negative, -value, value)
    return np.where(ok, value, np.nan), bad
