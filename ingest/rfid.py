"""RFID reader payloads (``schemas/rfid.json``) to tag-read rows, SGTIN-96 decoded.

A reader publishes one read or a batch ``{"reads": [...], "reader_time": ...}``. Each
payload is parsed by a typed msgspec decoder (types, required and unknown keys, numeric
ranges); what a typed decoder cannot check (EPC hex, times, integral numbers) is checked
over the whole batch at once, and SGTIN-96 EPCs are split into their GS1 fields with
array arithmetic, not per read.

A message with any problem contributes no rows; it comes back as one reject, the first
failing check in this order: JSON syntax (``bad_json``; ``non_finite`` for the
``NaN``/``Infinity`` tokens or numbers beyond a double), types, unknown keys and
ranges (``schema``), a top-level ``device_id`` other than the topic's device
(``device_mismatch``), required and misplaced keys (``schema``), batch shape (``schema``:
empty; ``too_many_readings``), integral antenna and read count (``schema``), EPCs
(``bad_epc``), ``reader_time`` then read times (``bad_time``), read times against
arrival (``future_time``, ``stale_time``); within a check, the first read names the
message.

EPC rules: 24 to 124 hex digits (96 to 496 bits) in whole 16-bit words, either case;
rows carry it upper-cased. SGTIN fields are filled for 96-bit EPCs with header ``0x30``
whose partition and values are valid per the GS1 EPC Tag Data Standard (section 14,
SGTIN-96 coding table); other EPCs (SSCC, GIAI, SGTIN-198, ...) and malformed SGTIN-96
get ``None``/-1 there but are stored all the same: a reader faithfully reporting a tag
is not at fault for the tag's content.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Annotated

import msgspec
import numpy as np
from msgspec import UNSET, Meta, UnsetType

from beiflow.ingest.jsonbatch import (
    NOT_A_TIME,
    DeviceId,
    JsonRejects,
    RejectLog,
    ascii_matrix,
    check_lengths,
    check_times,
    claims_other_device,
    decode_error,
    parse_times,
    shorten,
)
from beiflow.schemas.columns import INT_NULL, RFID_COLUMNS

__all__ = [
    "EPC_PATTERN",
    "REJECT_REASONS",
    "SGTIN_COLUMNS",
    "SGTIN_PARTITIONS",
    "RfidBatch",
    "RfidConfig",
    "decode_rfid",
]

#: Reject reasons (dead-letter reasons and metric labels).
REJECT_REASONS: tuple[str, ...] = (
    "bad_json", "non_finite", "schema", "device_mismatch", "too_many_readings", "bad_epc",
    "bad_time", "future_time", "stale_time",
)
#: EPC as the schema states it (ECMA-262): 6 to 31 words of 4 hex digits.
EPC_PATTERN = r"^(?:[0-9A-Fa-f]{4}){6,31}$"
#: Columns added to every read from its EPC (None / -1 when it is no valid SGTIN-96).
SGTIN_COLUMNS: tuple[str, ...] = (
    "sgtin_filter", "sgtin_company_prefix", "sgtin_item_ref", "sgtin_serial", "gtin",
)
#: GS1 TDS SGTIN partition table: partition value -> (company prefix bits, digits,
#: item reference and indicator bits, digits).
SGTIN_PARTITIONS: tuple[tuple[int, int, int, int], ...] = (
    (40, 12, 4, 1), (37, 11, 7, 2), (34, 10, 10, 3), (30, 9, 14, 4),
    (27, 8, 17, 5), (24, 7, 20, 6), (20, 6, 24, 7),
)
_INT32_MAX = 2**31 - 1
_EPC_MIN, _EPC_MAX = 24, 124


@dataclass(frozen=True, slots=True, kw_only=True)
class RfidConfig:
    """Decoder limits."""

    #: A read time later than arrival by more than this rejects the message: future_time.
    future_tolerance_s: float = 300.0
    #: A read time earlier than arrival by more than this (30 days: readers buffering
    #: while offline) rejects the message: stale_time.
    past_tolerance_s: float = 30 * 86400.0
    #: More reads in one message: too_many_readings (the schema's ``maxItems``).
    max_reads: int = 1000

    def __post_init__(self) -> None:
        if not (self.future_tolerance_s >= 0 and self.past_tolerance_s >= 0):
            raise ValueError("time tolerances must be >= 0")
        if self.max_reads < 1:
            raise ValueError("max_reads must be >= 1")


@dataclass(frozen=True, slots=True)
class RfidBatch:
    """What one batch decoded to.

    ``reads``: every column of ``RFID_COLUMNS`` plus ``device`` (int32), ``msg`` (int32
    message index), ``epc`` (object, upper-case hex) and :data:`SGTIN_COLUMNS`
    (``sgtin_filter`` int16, ``sgtin_company_prefix``/``sgtin_item_ref``/``gtin`` object
    str or None, ``sgtin_serial`` int64), one row per read, in message then read order.
    """

    reads: dict[str, np.ndarray]
    rejects: JsonRejects


_Antenna = Annotated[int, Meta(ge=0, le=255)] | Annotated[float, Meta(ge=0, le=255)]
_Rssi = Annotated[float, Meta(ge=-120, le=0)]
_Phase = Annotated[float, Meta(ge=0, le=360)]
_Count = (Annotated[int, Meta(ge=1, le=_INT32_MAX)]
          | Annotated[float, Meta(ge=1, le=_INT32_MAX)])
_Time = int | float | str


class _Read(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    epc: str
    antenna: _Antenna
    rssi_dbm: _Rssi
    time: _Time
    phase_deg: _Phase = math.nan
    read_count: _Count = INT_NULL


class _Message(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    epc: str | UnsetType = UNSET
    antenna: _Antenna | UnsetType = UNSET
    rssi_dbm: _Rssi | UnsetType = UNSET
    time: _Time | UnsetType = UNSET
    phase_deg: _Phase | UnsetType = UNSET
    read_count: _Count | UnsetType = UNSET
    reads: list[_Read] | UnsetType = UNSET
    reader_time: _Time | UnsetType = UNSET
    device_id: DeviceId | UnsetType = UNSET


_DECODER = msgspec.json.Decoder(_Message)
_REQUIRED = ("epc", "antenna", "rssi_dbm", "time")
_READ_KEYS = (*_REQUIRED, "phase_deg", "read_count")


def _single(m: _Message) -> _Read | str:
    """The read of a single-read message, or what is wrong with it."""
    for name in _REQUIRED:
        if getattr(m, name) is UNSET:
            return f"{name}: required field missing"
    if m.reader_time is not UNSET:
        return "reader_time: unknown field (only in a batch with reads)"
    return _Read(m.epc, m.antenna, m.rssi_dbm, m.time,  # type: ignore[arg-type]
                 math.nan if m.phase_deg is UNSET else m.phase_deg,
                 INT_NULL if m.read_count is UNSET else m.read_count)


def _batch_problem(m: _Message, reads: list[_Read], max_reads: int) -> tuple[str, str] | None:
    for name in _READ_KEYS:
        if getattr(m, name) is not UNSET:
            return "schema", f"{name}: unknown field (not allowed next to reads)"
    if not reads:
        return "schema", "reads: empty batch"
    if len(reads) > max_reads:
        return "too_many_readings", f"reads: {len(reads)} reads > {max_reads}"
    return None


def decode_rfid(payloads: Sequence[bytes], device: np.ndarray, received_at: np.ndarray,
                config: RfidConfig = RfidConfig(), *,
                device_ids: Sequence[str] | None = None) -> RfidBatch:
    """Decode reader payloads into read rows and rejects.

    ``device[i]`` is the dense index of the reader that sent ``payloads[i]`` and
    ``received_at[i]`` its arrival time (int64 microseconds since the Unix epoch).
    ``device_ids`` (id per dense index) enables the ``device_mismatch`` check of a
    payload's ``device_id``.
    """
    n = len(payloads)
    dev, rec = check_lengths(device, received_at, n)
    log = RejectLog(n)
    groups: list[list[_Read]] = []
    msgs: list[int] = []
    batched: list[bool] = []
    reader_times: list[object] = []
    reader_msgs: list[int] = []
    for i, payload in enumerate(payloads):
        try:
            m = _DECODER.decode(payload)
        except (ValueError, RecursionError) as exc:  # msgspec.DecodeError, bad UTF-8
            log.add(i, *decode_error(payload, exc))
            continue
        if claims_other_device(log, i, m.device_id, dev[i], device_ids):
            continue
        reads = m.reads
        if reads is UNSET:
            read = _single(m)
            if isinstance(read, str):
                log.add(i, "schema", read)
                continue
            reads = [read]
        else:
            problem = _batch_problem(m, reads, config.max_reads)
            if problem is not None:
                log.add(i, *problem)
                continue
            if m.reader_time is not UNSET:
                reader_times.append(m.reader_time)
                reader_msgs.append(i)
        groups.append(reads)
        msgs.append(i)
        batched.append(m.reads is not UNSET)
    counts = np.fromiter(map(len, groups), dtype=np.int64, count=len(groups))
    item_msg = np.repeat(np.asarray(msgs, dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    pos = np.arange(item_msg.size) - np.repeat(starts, counts)
    is_batch = np.repeat(np.asarray(batched, dtype=bool), counts)
    flat = list(chain.from_iterable(groups))
    epc = [r.epc for r in flat]
    times = [r.time for r in flat]

    def where(j: int, name: str) -> str:
        return f"reads[{pos[j]}].{name}" if is_batch[j] else name

    ant = np.array([r.antenna for r in flat], dtype=np.float64)
    cnt = np.array([r.read_count for r in flat], dtype=np.float64)
    for name, values in (("antenna", ant), ("read_count", cnt)):
        for j in log.first_per_message(values != np.floor(values), item_msg).tolist():
            log.add(int(item_msg[j]), "schema", f"{where(j, name)}: must be an integer")
    nib, lens, epc_ok = _epc_nibbles(epc)
    for j in log.first_per_message(~epc_ok, item_msg).tolist():
        log.add(int(item_msg[j]), "bad_epc",
                f"{where(j, 'epc')}: {shorten(epc[j])} is not 24 to 124 hex digits in "
                "groups of 4")
    _, rt_ok = parse_times(reader_times)
    for j in np.flatnonzero(~rt_ok).tolist():
        log.add(reader_msgs[j], "bad_time", f"reader_time: {shorten(reader_times[j])} {NOT_A_TIME}")
    recv = rec[item_msg]
    time_us = check_times(log, times, item_msg, recv, lambda j: where(j, "time"),
                          config.future_tolerance_s, config.past_tolerance_s)

    keep = np.flatnonzero(~log.rejected[item_msg])
    msg = item_msg[keep]
    out: dict[str, np.ndarray] = {
        "time": time_us[keep],
        "received_at": recv[keep],
        "antenna": ant[keep].astype(np.int16),
        "rssi_dbm": np.array([r.rssi_dbm for r in flat], dtype=np.float64)[keep],
        "phase_deg": np.array([r.phase_deg for r in flat], dtype=np.float64)[keep],
        "read_count": cnt[keep].astype(np.int32),
    }
    assert tuple(out) == tuple(c.name for c in RFID_COLUMNS)
    out["device"] = dev[msg]
    out["msg"] = msg.astype(np.int32)
    out["epc"] = _object_array(list(map(str.upper, epc)))[keep]
    out.update(_sgtin96(nib[keep], lens[keep]))
    return RfidBatch(reads=out, rejects=log.freeze())


_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate("0123456789ABCDEF"):
    _HEX[ord(_c)] = _HEX[ord(_c.lower())] = _i


def _epc_nibbles(epcs: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hex digit values (uint8, 255 where none), lengths and validity of EPC strings."""
    k = len(epcs)
    lens = np.fromiter(map(len, epcs), dtype=np.int64, count=k)
    ok = (lens >= _EPC_MIN) & (lens <= _EPC_MAX) & (lens % 4 == 0)
    if not ok.all():
        epcs = [e if good else "" for e, good in zip(epcs, ok.tolist(), strict=True)]
    width = max(int(lens[ok].max(initial=0)), _EPC_MIN)
    nib = _HEX[ascii_matrix(epcs, width)]
    ok &= ((nib < 16) | (np.arange(width) >= lens[:, None])).all(axis=1)
    return nib, lens, ok


def _object_array(items: list[str]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _digit_strings(digits: np.ndarray) -> np.ndarray:
    """Rows of decimal digits as an object array of strings."""
    k, width = digits.shape
    chars = np.empty((k, width + 1), dtype=np.uint8)
    chars[:, :width] = digits + 48
    chars[:, width] = ord(" ")
    parts = chars.tobytes().decode("ascii").split(" ")
    return _object_array(parts[:k])


def _decimal_digits(values: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded decimal digits of non-negative int64 values, most significant first."""
    out = np.empty((values.size, width), dtype=np.int64)
    for j in range(width - 1, -1, -1):
        values, out[:, j] = np.divmod(values, 10)
    return out


# Partition table columns as arrays indexed by partition value (7, invalid, gets zeros).
_CP_DIGITS, _IR_BITS, _IR_DIGITS = (
    np.array([*(row[i] for row in SGTIN_PARTITIONS), 0], dtype=np.int64) for i in (1, 2, 3))
_GTIN_WEIGHTS = np.array([3, 1] * 6 + [3], dtype=np.int64)


def _sgtin96(nib: np.ndarray, lens: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`SGTIN_COLUMNS` of EPCs given as hex digit values (rows of ``nib``).

    Vectorised over all rows: the 96 bits become a 32-bit and a 64-bit word, split by
    shifts and masks per the SGTIN-96 coding table; the GTIN-14 is the indicator digit
    (first digit of the item reference), the company prefix, the rest of the item
    reference and the GS1 mod-10 check digit. Strings are built once per distinct
    company prefix and item reference in the batch.
    """
    k = nib.shape[0]
    out: dict[str, np.ndarray] = {
        "sgtin_filter": np.full(k, INT_NULL, dtype=np.int16),
        "sgtin_company_prefix": np.full(k, None, dtype=object),
        "sgtin_item_ref": np.full(k, None, dtype=object),
        "sgtin_serial": np.full(k, INT_NULL, dtype=np.int64),
        "gtin": np.full(k, None, dtype=object),
    }
    if nib.shape[1] < _EPC_MIN:
        return out
    rows = np.flatnonzero((lens == _EPC_MIN) & (nib[:, 0] == 3) & (nib[:, 1] == 0))
    octets = (nib[rows, 0:_EPC_MIN:2] << 4) | nib[rows, 1:_EPC_MIN:2]
    hi = octets[:, :4].copy().view(">u4").ravel().astype(np.int64)
    lo = octets[:, 4:].copy().view(">u8").ravel()
    part = (hi >> 18) & 7
    cpir = ((hi & 0x3FFFF) << 26) | (lo >> np.uint64(38)).astype(np.int64)
    ir_bits = _IR_BITS[part]
    cp, ir = cpir >> ir_bits, cpir & ((1 << ir_bits) - 1)
    ok = (part < 7) & (cp < 10 ** _CP_DIGITS[part]) & (ir < 10 ** _IR_DIGITS[part])
    rows = rows[ok]
    out["sgtin_filter"][rows] = (hi[ok] >> 21) & 7
    out["sgtin_serial"][rows] = (lo[ok] & np.uint64(2**38 - 1)).astype(np.int64)
    keys, inverse = np.unique(cpir[ok] << 3 | part[ok], return_inverse=True)
    part, cpir, ir_bits = keys & 7, keys >> 3, _IR_BITS[keys & 7]
    cp, ir = cpir >> ir_bits, cpir & ((1 << ir_bits) - 1)
    cp_str, ir_str, gtin = (np.empty(keys.size, dtype=object) for _ in range(3))
    for p in np.unique(part).tolist():
        sel = part == p
        _, cpd, _, ird = SGTIN_PARTITIONS[p]
        cp_d, ir_d = _decimal_digits(cp[sel], cpd), _decimal_digits(ir[sel], ird)
        d14 = np.column_stack([ir_d[:, :1], cp_d, ir_d[:, 1:], np.zeros(cp_d.shape[0], np.int64)])
        d14[:, 13] = (10 - (d14[:, :13] @ _GTIN_WEIGHTS) % 10) % 10
        cp_str[sel], ir_str[sel], gtin[sel] = map(_digit_strings, (cp_d, ir_d, d14))
    out["sgtin_company_prefix"][rows] = cp_str[inverse]
    out["sgtin_item_ref"][rows] = ir_str[inverse]
    out["gtin"][rows] = gtin[inverse]
    return out
