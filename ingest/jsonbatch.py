"""Shared machinery of the JSON decoders (RFID, sensor): rejects, errors, times.

The decoders parse each payload with a typed msgspec decoder, then check what a typed
decoder cannot (time strings, EPC hex, cross-field rules) over whole columns at once.
This module holds the pieces both need:

* :class:`JsonRejects` and :class:`RejectLog`: one reject per message, with a stable
  reason label and a detail naming the offending field (``samples[2].values.temp_c:
  NaN is not allowed``).
* :func:`decode_error`: a msgspec error turned into such a reason and detail; the
  non-standard tokens ``NaN``/``Infinity`` some devices emit are told apart from other
  malformed JSON (``non_finite`` rather than ``bad_json``).
* :data:`DeviceId` and :func:`claims_other_device`: the optional top-level ``device_id``
  of a payload, which must name the device of the topic it came on
  (``device_mismatch``).
* :func:`parse_times`: RFC 3339 strings or epoch milliseconds to int64 microseconds UTC,
  vectorised, accepting exactly what :data:`TIME_PATTERN` plus the ``date-time`` format
  of JSON Schema accept; :func:`check_times` adds the rejects, arrival window included.

Time rules (both streams): a time is either an RFC 3339 ``date-time`` with an explicit
offset (``Z``/``z`` or ``±hh:mm``; ``T`` or ``t``; 1 to 9 fractional digits, rounded
half up to the microsecond; no leap second; year 0001-9999) or an integer number of
milliseconds since 1970-01-01T00:00:00Z from 0 to :data:`MAX_EPOCH_MS` (9999-12-31).
A JSON number with a zero fraction (``1740816930000.0``) counts as an integer, as in
JSON Schema.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import is_, not_
from typing import Annotated, cast

import msgspec
import numpy as np
from msgspec import UNSET, Meta, UnsetType

from beiflow.ingest.topics import NAME_RE

__all__ = [
    "DEVICE_ID_PATTERN",
    "MAX_EPOCH_MS",
    "NOT_A_TIME",
    "TIME_PATTERN",
    "DeviceId",
    "JsonRejects",
    "RejectLog",
    "ascii_matrix",
    "check_lengths",
    "check_times",
    "claims_other_device",
    "decode_error",
    "parse_times",
    "path_key",
    "shorten",
]

#: A payload's ``device_id`` claim: the topic's device id rule (ECMA-262, as in the schemas).
DEVICE_ID_PATTERN = NAME_RE.pattern
#: The claim as msgspec checks it (Python's ``$`` would also match before a final newline).
DeviceId = Annotated[str, Meta(pattern=DEVICE_ID_PATTERN.removesuffix("$") + r"\Z")]
#: Latest accepted epoch-milliseconds time: 9999-12-31T23:59:59.999Z.
MAX_EPOCH_MS = 253_402_300_799_999
#: RFC 3339 ``date-time`` with a mandatory offset (ECMA-262 syntax, as in the schemas).
TIME_PATTERN = (
    r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])[Tt]"
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)
#: Detail of a ``bad_time`` reject, after the field and its value.
NOT_A_TIME = "is neither an RFC 3339 date-time with offset nor epoch milliseconds"
#: Longest string :data:`TIME_PATTERN` can match.
_TIME_MAX_LEN = 35
_MAX_DOUBLE = sys.float_info.max

#: How a detail names each msgspec type (``Expected `int | float`, got `str```).
_TYPE_NAMES = {
    "int | float": "integer",
    "float": "number",
    "str": "string",
    "int | float | str": "RFC 3339 string or epoch milliseconds",
    "bool": "boolean",
    "object": "object",
    "array": "array",
    "null": "null",
    "int": "integer",
}
_ERROR = re.compile(r"(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.S)
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]*)`")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]*)`")
_TYPE = re.compile(r"Expected `(?P<want>[^`]*)`, got `(?P<got>[^`]*)`")
_RANGE = re.compile(r"Expected `(?:int|float)` (?P<rule>.*)")
_PATTERN = re.compile(r"Expected `str` matching regex '(?P<re>.*)'")
_PATH_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_IDENT = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True, slots=True)
class JsonRejects:
    """Rejected messages: parallel arrays, one entry per message, in message order.

    ``reason`` holds stable snake_case labels (metric labels, dead-letter reasons);
    ``detail`` a human message naming the offending field.
    """

    msg: np.ndarray  # int32
    reason: np.ndarray  # object: str
    detail: np.ndarray  # object: str

    def __len__(self) -> int:
        return int(self.msg.size)


class RejectLog:
    """Collects at most one reject per message while a batch is decoded."""

    __slots__ = ("_detail", "_msg", "_reason", "rejected")

    def __init__(self, n: int) -> None:
        self._msg: list[int] = []
        self._reason: list[str] = []
        self._detail: list[str] = []
        #: Whether each message has been rejected already.
        self.rejected = np.zeros(n, dtype=bool)

    def add(self, msg: int, reason: str, detail: str) -> None:
        """Reject message ``msg`` unless it already is."""
        if not self.rejected[msg]:
            self.rejected[msg] = True
            self._msg.append(msg)
            self._reason.append(reason)
            self._detail.append(detail)

    def first_per_message(self, bad: np.ndarray, item_msg: np.ndarray) -> np.ndarray:
        """Indexes of the first ``bad`` item of each message not yet rejected."""
        idx = np.flatnonzero(bad)
        idx = idx[~self.rejected[item_msg[idx]]]
        _, first = np.unique(item_msg[idx], return_index=True)
        out: np.ndarray = idx[first]
        return out

    def freeze(self) -> JsonRejects:
        """The rejects, ordered by message index."""
        msg = np.asarray(self._msg, dtype=np.int32)
        order = np.argsort(msg, kind="stable")
        reason = np.empty(msg.size, dtype=object)
        reason[:] = self._reason
        detail = np.empty(msg.size, dtype=object)
        detail[:] = self._detail
        return JsonRejects(msg=msg[order], reason=reason[order], detail=detail[order])


def check_lengths(device: np.ndarray, received_at: np.ndarray, n: int) -> tuple[
        np.ndarray, np.ndarray]:
    """``device`` as int32 and ``received_at`` as int64, one entry per payload."""
    dev = np.asarray(device, dtype=np.int32)
    rec = np.asarray(received_at, dtype=np.int64)
    if dev.shape != (n,) or rec.shape != (n,):
        raise ValueError("device and received_at need one entry per payload")
    return dev, rec


def claims_other_device(log: RejectLog, msg: int, claimed: str | UnsetType, device: int,
                        device_ids: Sequence[str] | None) -> bool:
    """Reject message ``msg`` (``device_mismatch``) if it claims a ``device_id`` other
    than ``device_ids[device]``, its topic's device; whether it did. Without
    ``device_ids`` (a decoder run on its own) the claim is only checked for its form."""
    if claimed is UNSET or device_ids is None or claimed == device_ids[device]:
        return False
    log.add(msg, "device_mismatch",
            f"device_id: {shorten(claimed)} is not the topic's device {device_ids[device]!r}")
    return True


# --- errors -----------------------------------------------------------------------------

def decode_error(payload: bytes, exc: Exception) -> tuple[str, str]:
    """Reason and detail of a payload msgspec could not decode into its type.

    A type error can surface before a syntax error further on; JSON syntax wins.
    """
    if isinstance(exc, msgspec.ValidationError):
        try:
            msgspec.json.decode(payload)
        except ValueError as syntax:  # msgspec.DecodeError, or invalid UTF-8 in a string
            exc = syntax
        except RecursionError:  # nested too deep to tell; the type error stands
            pass
    if not isinstance(exc, msgspec.ValidationError):
        found = _find_non_finite(payload)
        if found is not None:
            return "non_finite", f"{found[0]}: {found[1]} is not allowed"
        if isinstance(exc, UnicodeDecodeError):
            return "bad_json", "invalid UTF-8 in a string"
        return "bad_json", str(exc)
    m = _ERROR.fullmatch(str(exc))
    assert m is not None  # the pattern matches any string
    msg, path = m["msg"], m["path"] or ""
    if "[...]" in path:
        path = _resolve_keys(payload, path)
    if msg == "Number out of range":
        return "non_finite", f"{_show(path)}: number does not fit a finite double"
    if mm := _MISSING.fullmatch(msg):
        return "schema", f"{_show(path + '.' + mm['field'])}: required field missing"
    if mm := _UNKNOWN.fullmatch(msg):
        return "schema", f"{_show(path + '.' + mm['field'])}: unknown field"
    if mm := _TYPE.fullmatch(msg):
        want = _TYPE_NAMES.get(mm["want"], mm["want"])
        got = _TYPE_NAMES.get(mm["got"], mm["got"])
        return "schema", f"{_show(path)}: expected {want}, got {got}"
    if mm := _RANGE.fullmatch(msg):
        return "schema", f"{_show(path)}: must be {mm['rule']}"
    if mm := _PATTERN.fullmatch(msg):
        rule = mm["re"].replace("\\\\", "\\").removesuffix(r"\Z") + "$"
        return "schema", f"{_show(path)}: must match {rule}"
    return "schema", f"{_show(path)}: {msg}"


def shorten(value: object) -> str:
    """``repr(value)``, cut to 48 characters for a reject detail."""
    text = repr(value)
    return text if len(text) <= 48 else text[:45] + "..."


def path_key(path: str, key: str) -> str:
    """``path`` extended by the object member ``key``."""
    return f"{path}.{key}" if _IDENT.fullmatch(key) else f"{path}[{json.dumps(key)}]"


def _show(path: str) -> str:
    path = path.lstrip(".")
    return path or "payload"


def _load_loose(payload: bytes) -> object:
    """Python's reading of ``payload`` (NaN/Infinity allowed), or ``None`` if it fails."""
    try:
        return json.loads(bytes(payload).decode("utf-8"))
    except (ValueError, RecursionError):
        return None


def _find_non_finite(payload: bytes) -> tuple[str, str] | None:
    """Path and token of the first NaN/Infinity, if that is all that breaks the JSON."""
    doc = _load_loose(payload)
    stack: list[tuple[str, object]] = [("", doc)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            token = "NaN" if math.isnan(node) else ("Infinity" if node > 0 else "-Infinity")
            return _show(path), token
        if isinstance(node, dict):
            stack.extend((path_key(path, k), v) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(node))))
    return None


def _is_finite_number(value: object) -> bool:
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is int:
        return abs(value) <= _MAX_DOUBLE
    return False


def _resolve_keys(payload: bytes, path: str) -> str:
    """Replace msgspec's ``[...]`` (some member of an object) by the offending key."""
    node = _load_loose(payload)
    out = ""
    for m in _PATH_TOKEN.finditer(path):
        if m[1] is not None:
            out += "." + m[1]
            node = node.get(m[1]) if isinstance(node, dict) else None
        elif m[2] is not None:
            out += f"[{m[2]}]"
            i = int(m[2])
            node = node[i] if isinstance(node, list) and i < len(node) else None
        elif isinstance(node, dict) and (bad := next(
                (k for k, v in node.items() if not _is_finite_number(v)), None)) is not None:
            out = path_key(out, bad)
            node = node[bad]
        else:
            return out + "[...]"
    return out


# --- times ------------------------------------------------------------------------------

def _number(d: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Decimal value of digit columns ``start:stop``."""
    value = np.zeros(d.shape[0], dtype=np.int64)
    for j in range(start, stop):
        value = value * 10 + d[:, j]
    return value


def _days_from_civil(y: np.ndarray, mo: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm)."""
    y = y - (mo <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((mo + 9) % 12) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days: np.ndarray = era * 146_097 + doe - 719_468
    return days


_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def ascii_matrix(strs: list[str], width: int) -> np.ndarray:
    """Strings of at most ``width`` characters as a (len, width) uint8 matrix, zero-padded;
    characters beyond ASCII become 255."""
    try:
        m = np.array(strs, dtype=f"S{width}").view(np.uint8)
    except UnicodeEncodeError:
        m = np.minimum(np.array(strs, dtype=f"<U{width}").view(np.uint32), 255).astype(np.uint8)
    return m.reshape(len(strs), width)


#: Columns of ``YYYY-MM-DDThh:mm:ss`` holding digits, and the punctuation of the others.
_DIGIT_COLS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18])
_DASH_COLON = np.array([4, 7, 13, 16])
_DASH_COLON_CHARS = np.array([ord("-"), ord("-"), ord(":"), ord(":")])


def _parse_strings(strs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    k = len(strs)
    lens = np.fromiter(map(len, strs), dtype=np.int64, count=k)
    fits = (lens >= 20) & (lens <= _TIME_MAX_LEN)
    if not fits.all():
        strs = [s if f else "" for s, f in zip(strs, fits.tolist(), strict=True)]
        lens = np.where(fits, lens, 0)
    m = ascii_matrix(strs, _TIME_MAX_LEN)
    d = m[:, :29].astype(np.int16) - 48  # digit values where the character is a digit
    is_digit = (d >= 0) & (d <= 9)
    rows = np.arange(k)
    last = m[rows, np.maximum(lens - 1, 0)]
    zulu = (last == ord("Z")) | (last == ord("z"))
    end = np.where(zulu, lens - 1, lens - 6)  # end of the seconds or fraction
    off = m[rows[:, None], np.clip(lens - 6, 0, _TIME_MAX_LEN - 6)[:, None] + np.arange(6)]
    off_d = off.astype(np.int16) - 48
    off_h, off_m = _number(off_d, 1, 3), _number(off_d, 4, 6)
    off_ok = zulu | (((off[:, 0] == ord("+")) | (off[:, 0] == ord("-"))) & (off[:, 3] == ord(":"))
                     & ((off_d[:, [1, 2, 4, 5]] >= 0) & (off_d[:, [1, 2, 4, 5]] <= 9)).all(axis=1)
                     & (off_h <= 23) & (off_m <= 59))
    year, month, day = _number(d, 0, 4), _number(d, 5, 7), _number(d, 8, 10)
    hour, minute, second = _number(d, 11, 13), _number(d, 14, 16), _number(d, 17, 19)
    frac_n = end - 20  # fractional digits, when column 19 is "."
    in_frac = np.arange(9) < frac_n[:, None]
    frac_ok = (end == 19) | ((m[:, 19] == ord(".")) & (frac_n >= 1) & (frac_n <= 9)
                             & ~(in_frac & ~is_digit[:, 20:29]).any(axis=1))
    frac = np.where(in_frac, d[:, 20:29], 0)
    frac_us = frac[:, :6] @ (10 ** np.arange(5, -1, -1)) + (frac[:, 6] >= 5)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_ok = (month >= 1) & (month <= 12)
    dim = _MONTH_DAYS[np.where(month_ok, month, 1)] + (leap & (month == 2))
    ok = (fits & (end >= 19) & off_ok & frac_ok & is_digit[:, _DIGIT_COLS].all(axis=1)
          & (m[:, _DASH_COLON] == _DASH_COLON_CHARS).all(axis=1)
          & ((m[:, 10] == ord("T")) | (m[:, 10] == ord("t")))
          & (year >= 1) & month_ok & (day >= 1) & (day <= dim) & (hour <= 23) & (minute <= 59)
          & (second <= 59))
    days = _days_from_civil(year, np.where(month_ok, month, 1), day)
    off_s = np.where(off[:, 0] == ord("-"), -1, 1) * (off_h * 3600 + off_m * 60)
    secs = days * 86_400 + hour * 3600 + minute * 60 + second - np.where(zulu, 0, off_s)
    us = np.where(ok, secs * 1_000_000 + frac_us, 0)
    return us, ok


def _float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


def parse_times(values: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    """Times as decoded from JSON (``str``, ``int`` or ``float``) to int64 microseconds
    since the Unix epoch, UTC, and whether each is valid (invalid ones are 0)."""
    n = len(values)
    us = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    if not n:
        return us, ok
    flags = list(map(is_, map(type, values), repeat(str)))
    is_str = np.array(flags, dtype=bool)
    if is_str.any():
        strs = cast(list[str], list(compress(values, flags)))
        us[is_str], ok[is_str] = _parse_strings(strs)
    if not is_str.all():
        nums = list(compress(values, map(not_, flags)))
        try:
            ms = np.array(nums, dtype=np.float64)
        except OverflowError:
            ms = np.array([_float(v) for v in nums], dtype=np.float64)  # type: ignore[arg-type]
        good = (ms >= 0) & (ms <= MAX_EPOCH_MS) & (ms == np.floor(ms))
        ok[~is_str] = good
        us[~is_str] = np.where(good, ms, 0).astype(np.int64) * 1000
    return us, ok


def check_times(log: RejectLog, times: Sequence[object], item_msg: np.ndarray,
                received_us: np.ndarray, where: Callable[[int], str], future_s: float,
                past_s: float) -> np.ndarray:
    """Parse the times of items (reads, samples); reject each message with an invalid time
    (``bad_time``), then one later than arrival by more than ``future_s`` seconds
    (``future_time``) or earlier by more than ``past_s`` (``stale_time``). ``where(j)``
    names item ``j``'s time field. Returns the times (int64 microseconds)."""
    time_us, ok = parse_times(times)
    for j in log.first_per_message(~ok, item_msg).tolist():
        log.add(int(item_msg[j]), "bad_time", f"{where(j)}: {shorten(times[j])} {NOT_A_TIME}")
    ahead = (time_us - received_us) / 1e6
    for reason, bad, tol in (("future_time", ahead > future_s, future_s),
                             ("stale_time", -ahead > past_s, past_s)):
        for j in log.first_per_message(bad, item_msg).tolist():
            log.add(int(item_msg[j]), reason,
                    f"{where(j)}: {shorten(times[j])} is {abs(ahead[j]):.3f} s "
                    f"{'after' if ahead[j] > 0 else 'before'} arrival (tolerance {tol:.10g} s)")
    return time_us
