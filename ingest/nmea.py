"""NMEA 0183 decoder: MQTT payloads in, one position row per (device, epoch) out.

The hot path is vectorised over the whole batch (no per-sentence Python loop): payloads
are joined into one buffer, framing and checksums are array operations
(:mod:`~beiflow.ingest.nmea_scan`), every numeric field of the batch is parsed in one go
(:mod:`~beiflow.ingest.nmea_fields`, :mod:`~beiflow.ingest.nmea_sentences`) and epochs
are assembled with sorts and cumulative sums (:mod:`~beiflow.ingest.nmea_epochs`).

Sentences: RMC, GGA, GNS, GLL, VTG, GSA, GSV, ZDA from talkers GP, BD, GB, GN, GL, GA,
GQ, NMEA 2.3 to 4.11 layouts. Which sentence feeds which column, when several could:

* lat/lon: RMC, else GGA, else GNS, else GLL; speed and course: RMC, else VTG
  (knots, else km/h); status: RMC, else GLL; mode: RMC, GLL, VTG, then GNS's best.
* fix_quality, sats, alt_m: GGA, else GNS (mode letters mapped to a GGA quality, best
  letter over constellations: R > F > P > D > A > E > M > S > N); hdop: GGA, GNS, GSA;
  pdop, vdop: the epoch's first GSA.
* sv_<c>: satellites in view from GSV, talker -> constellation (GN: NMEA 4.11 system id,
  else ignored), maximum over signal groups; cn0_<c>_dbhz: mean of every non-empty SNR
  of that constellation's GSV blocks (one value per satellite and signal).
* Within a type, the epoch's first sentence counts; a later column source only fills
  what the earlier ones left empty.
* Date: the epoch's RMC, else its ZDA, else the device's latest receiver date
  (``NmeaState``, also across batches) plus a day for each step back of the time of day
  by more than 12 h (a day less for a step forward by more than 12 h), else the UTC day
  of ``received_at`` nearest the epoch, flagged ``FixFlag.DATE_FROM_RECEIVE``.

Position rows come in order of their epoch's first time-bearing sentence in the batch.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, TextIO

import numpy as np

from beiflow.ingest.nmea_epochs import (
    KINDS_DOP,
    KINDS_FIX,
    KINDS_HDOP,
    KINDS_MODE,
    KINDS_MOTION,
    KINDS_POSITION,
    KINDS_STATUS,
    US_PER_DAY,
    Assembly,
    Columns,
    assemble,
    resolve_dates,
)
from beiflow.ingest.nmea_scan import REJECT_REASONS, SKIP_REASONS, Framed, frame
from beiflow.ingest.nmea_sentences import decode_sentences
from beiflow.schemas.columns import (
    CONSTELLATIONS,
    POSITION_COLUMNS,
    DateSource,
    FixFlag,
    empty_columns,
)

__all__ = [
    "REJECT_REASONS",
    "SKIP_REASONS",
    "NmeaBatch",
    "NmeaConfig",
    "NmeaRejects",
    "NmeaState",
    "decode_batch",
    "split_epochs",
    "write_decoded_fixes",
]

#: ``time`` of an epoch whose date is unknown (only in ``beiflow decode`` without --date).
NO_TIME = np.iinfo(np.int64).min
_DECODE_KEYS = ("time", "lat", "lon", "alt_m", "speed_mps", "course_deg", "fix_quality",
                "sats", "hdop")
_SNIPPET = 120


@dataclass(frozen=True, slots=True, kw_only=True)
class NmeaConfig:
    """Decoder tolerances.

    Sentence length is counted as NMEA 0183 does: from ``$`` to the end of the checksum
    plus the two-byte ``<CR><LF>`` terminator (whether present or not); the standard
    maximum is 82.
    """

    #: Device time later than arrival by more than this: FixFlag.CLOCK_FUTURE.
    future_tolerance_s: float = 300.0
    #: Device time earlier than arrival by more than this: FixFlag.CLOCK_PAST.
    past_tolerance_s: float = 86400.0
    #: Longer sentences are rejected ("too_long"); 83 up to this are counted "long_sentence".
    max_sentence_len: int = 164
    #: Reject sentences without ``*hh`` ("missing_checksum"); if False accept and count them.
    require_checksum: bool = True
    #: A payload with more sentences (and lines of other text) is rejected whole:
    #: "too_many_sentences". None: no limit (recorded logs).
    max_sentences: int | None = None

    def __post_init__(self) -> None:
        if self.future_tolerance_s < 0 or self.past_tolerance_s < 0:
            raise ValueError("clock tolerances must be >= 0")
        if self.max_sentence_len < 11:
            raise ValueError("max_sentence_len must be >= 11")
        if self.max_sentences is not None and self.max_sentences < 1:
            raise ValueError("max_sentences must be >= 1")


DEFAULT_CONFIG = NmeaConfig()


class NmeaState:
    """Per-device decoder state, in arrays indexed by dense device index (grown on demand).

    ``date_days`` is the latest known date of each device (days since 1970-01-01, -1 when
    none) and ``tod_us`` the time of day of that epoch; they date epochs without an RMC or
    ZDA and detect midnight rollover. Only receiver dates (RMC, ZDA, and dates chained
    from them) are kept, never dates taken from arrival time.
    """

    __slots__ = ("date_days", "tod_us")

    def __init__(self, devices: int = 0) -> None:
        self.date_days = np.full(devices, -1, dtype=np.int64)
        self.tod_us = np.zeros(devices, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.date_days.size)

    def reserve(self, devices: int) -> None:
        """Make room for device indexes below ``devices``."""
        have = self.date_days.size
        if devices > have:
            size = max(devices, 2 * have, 64)
            self.date_days = np.concatenate(
                [self.date_days, np.full(size - have, -1, dtype=np.int64)])
            self.tod_us = np.concatenate([self.tod_us, np.zeros(size - have, dtype=np.int64)])


@dataclass(frozen=True, slots=True)
class NmeaRejects:
    """Dead-letter candidates: parallel arrays, one entry per rejected sentence or message.

    ``reason`` holds codes into :attr:`NAMES` (``REJECT_REASONS``); ``start``/``stop`` are
    byte offsets into ``payloads[msg]`` of the exact rejected bytes (CR/LF excluded; the
    whole payload for a message with no sentence start at all or too many sentences).
    """

    NAMES: ClassVar[tuple[str, ...]] = REJECT_REASONS

    msg: np.ndarray  # int32
    reason: np.ndarray  # uint8
    start: np.ndarray  # int64
    stop: np.ndarray  # int64

    def __len__(self) -> int:
        return int(self.msg.size)

    def reason_name(self, i: int) -> str:
        """Reason label of entry ``i``."""
        return REJECT_REASONS[int(self.reason[i])]

    def reason_names(self) -> list[str]:
        """Reason labels of all entries."""
        return [REJECT_REASONS[c] for c in self.reason.tolist()]


@dataclass(frozen=True, slots=True)
class NmeaBatch:
    """What one batch decoded to.

    ``positions``: every column of ``POSITION_COLUMNS`` plus ``device`` (int32) and
    ``msg`` (int32, message of the epoch's first time-bearing sentence), one row per
    epoch. ``skipped``: counts by ``SKIP_REASONS`` key. ``sentences``: sentences of the
    decoded types that passed every check (whether or not they joined an epoch).
    """

    positions: dict[str, np.ndarray]
    rejects: NmeaRejects
    skipped: dict[str, int]
    sentences: int


@dataclass(slots=True)
class _Decoded:
    batch: NmeaBatch
    epoch_first: np.ndarray  # buffer offset of each row's first time-bearing sentence
    msg_start: np.ndarray


def decode_batch(payloads: Sequence[bytes], device: np.ndarray, received_at: np.ndarray,
                 state: NmeaState, config: NmeaConfig = DEFAULT_CONFIG) -> NmeaBatch:
    """Decode a batch of MQTT payloads into position rows, rejects and counts.

    ``device[i]`` is the dense device index of ``payloads[i]``, ``received_at[i]`` its
    arrival time (int64 microseconds since the Unix epoch). Epochs still open at the end
    of the batch are closed (emitted); ``state`` carries dates across batches. Rejected
    sentences (and messages without any) come back as :class:`NmeaRejects`, codes into
    ``REJECT_REASONS``, with byte spans into their payload.
    """
    return _decode(payloads, np.asarray(device, dtype=np.int64),
                   np.asarray(received_at, dtype=np.int64), state, config).batch


def _decode(payloads: Sequence[bytes], device: np.ndarray, received_at: np.ndarray | None,
            state: NmeaState, config: NmeaConfig, fallback_days: int | None = None) -> _Decoded:
    if not isinstance(payloads, list | tuple):
        payloads = list(payloads)
    if device.shape != (len(payloads),) or (
            received_at is not None and received_at.shape != device.shape):
        raise ValueError("device and received_at need one entry per payload")
    if device.size:
        state.reserve(int(device.max()) + 1)
    fr = frame(payloads, max_len=config.max_sentence_len,
               require_checksum=config.require_checksum, max_sentences=config.max_sentences)
    decoded, good = decode_sentences(fr)
    tod = np.full(fr.pos.size, -1, dtype=np.int64)
    for dec in decoded.values():
        tod[dec.rows] = dec.tod
    asm = assemble(fr, device, good, tod)
    skipped = fr.skipped
    skipped["no_epoch"] = int(np.count_nonzero(asm.ep_sorted < 0))
    positions = _positions(fr, asm, Columns(asm, decoded, fr.pos.size), received_at, state,
                           config, fallback_days)
    order = np.argsort(fr.pos[asm.first], kind="stable")
    positions = {name: col[order] for name, col in positions.items()}
    batch = NmeaBatch(positions=positions, rejects=_rejects(fr), skipped=skipped,
                      sentences=int(np.count_nonzero(good)))
    return _Decoded(batch, fr.pos[asm.first][order], fr.msg_start)


def _positions(fr: Framed, asm: Assembly, cols: Columns, received_at: np.ndarray | None,
               state: NmeaState, config: NmeaConfig,
               fallback_days: int | None) -> dict[str, np.ndarray]:
    n = asm.n
    out = empty_columns(POSITION_COLUMNS, n)
    msg = fr.msg[asm.first]
    cols.fill_position(out["lat"], out["lon"], KINDS_POSITION)
    cols.fill(out["alt_m"], "alt", KINDS_FIX)
    cols.fill(out["speed_mps"], "speed", KINDS_MOTION)
    cols.fill(out["course_deg"], "course", KINDS_MOTION)
    for name, src, kinds in (("fix_quality", "quality", KINDS_FIX), ("sats", "sats", KINDS_FIX),
                             ("status", "status", KINDS_STATUS), ("mode", "mode", KINDS_MODE)):
        tmp = np.full(n, -1, dtype=np.int64)
        out[name][:] = cols.fill(tmp, src, kinds)
    cols.fill(out["hdop"], "hdop", KINDS_HDOP)
    cols.fill(out["pdop"], "pdop", KINDS_DOP)
    cols.fill(out["vdop"], "vdop", KINDS_DOP)
    inview, cn0 = cols.satellites()
    for j, c in enumerate(CONSTELLATIONS):
        out[f"sv_{c}"][:] = inview[:, j]
        out[f"cn0_{c}_dbhz"][:] = cn0[:, j]

    own_days, own_source = cols.dates()
    recv = received_at[msg] if received_at is not None else None
    st_days, st_tod = state.date_days, state.tod_us
    if fallback_days is not None and n:
        # As if each undated device's previous epoch were on that date, at the time of day
        # of its first epoch here.
        first = np.ones(n, dtype=bool)
        first[1:] = asm.dev[1:] != asm.dev[:-1]
        dev, tod = asm.dev[first], asm.tod[first]
        undated = st_days[dev] < 0
        st_days, st_tod = st_days.copy(), st_tod.copy()
        st_days[dev[undated]] = fallback_days
        st_tod[dev[undated]] = tod[undated]
    days, source = resolve_dates(asm, own_days, own_source, st_days, st_tod, recv)
    _remember(state, asm, days, source)

    time = np.where(days >= 0, days * US_PER_DAY + asm.tod, NO_TIME)
    flags = np.zeros(n, dtype=np.int64)
    flags |= np.where(source == DateSource.RECEIVE, int(FixFlag.DATE_FROM_RECEIVE), 0)
    no_fix = ((out["status"] == 0) | (out["fix_quality"] == 0) | np.isnan(out["lat"])
              | np.isnan(out["lon"]))
    flags |= np.where(no_fix, int(FixFlag.NO_FIX), 0)
    if recv is not None:
        flags |= np.where(time > recv + round(config.future_tolerance_s * 1e6),
                          int(FixFlag.CLOCK_FUTURE), 0)
        flags |= np.where(time < recv - round(config.past_tolerance_s * 1e6),
                          int(FixFlag.CLOCK_PAST), 0)
        out["received_at"][:] = recv
    out["time"][:] = time
    out["date_source"][:] = source
    out["flags"][:] = flags
    out["device"] = asm.dev.astype(np.int32)
    out["msg"] = msg.astype(np.int32)
    return out


def _remember(state: NmeaState, asm: Assembly, days: np.ndarray, source: np.ndarray) -> None:
    """Keep each device's last receiver-dated epoch (not arrival-dated ones)."""
    dated = np.flatnonzero((days >= 0) & (source != DateSource.RECEIVE)
                           & (source != DateSource.UNKNOWN))
    if not dated.size:
        return
    dev = asm.dev[dated]
    last = np.ones(dated.size, dtype=bool)
    last[:-1] = dev[1:] != dev[:-1]
    state.date_days[dev[last]] = days[dated[last]]
    state.tod_us[dev[last]] = asm.tod[dated[last]]


def _rejects(fr: Framed) -> NmeaRejects:
    log = fr.rejects
    if not log.msg:
        e = np.zeros(0, dtype=np.int64)
        return NmeaRejects(e.astype(np.int32), e.astype(np.uint8), e, e)
    msg = np.concatenate(log.msg)
    start = np.concatenate(log.start)
    order = np.argsort(start, kind="stable")
    msg = msg[order]
    base = fr.msg_start[msg]
    return NmeaRejects(msg.astype(np.int32), np.concatenate(log.code)[order],
                       start[order] - base, np.concatenate(log.stop)[order] - base)


def _file_lines(data: bytes) -> tuple[bytes, np.ndarray]:
    """``data`` with ``#`` comment lines blanked (gpsd log headers), and line start offsets."""
    a = np.frombuffer(data, dtype=np.uint8)
    starts = np.concatenate([[0], np.flatnonzero(a == 10) + 1])
    starts = starts[starts < a.size] if a.size else starts[:0]
    comments = starts[a[starts] == 35] if a.size else starts
    if not comments.size:
        return data, starts
    buf = bytearray(data)
    for s in comments.tolist():
        e = buf.find(b"\n", s)
        e = len(buf) if e < 0 else e
        buf[s:e] = b" " * (e - s)
    return bytes(buf), starts


@dataclass(slots=True)
class _LogPart:
    """Complete epochs of one block of a log; offsets are into the whole log."""

    positions: dict[str, np.ndarray]
    rejects: NmeaRejects
    epoch_first: np.ndarray


def _decode_log(data: bytes, line_starts: np.ndarray, fallback_days: int | None = None,
                block: int = 4 << 20) -> Iterator[_LogPart]:
    """Decode a recorded log (one device) in blocks of about ``block`` bytes.

    A block ends at the line where its last epoch starts; that epoch is decoded again,
    whole, with the next block, so no epoch is split and memory stays bounded.
    """
    state = NmeaState(1)
    pos = 0
    while True:
        end = len(data)
        if end - pos > block:
            i = int(np.searchsorted(line_starts, pos + block))
            end = int(line_starts[i]) if i < line_starts.size else len(data)
        dec = _decode([data[pos:end]], np.zeros(1, dtype=np.int64), None, state,
                      DEFAULT_CONFIG, fallback_days)
        firsts = dec.epoch_first - dec.msg_start[0] + pos
        cut = end
        if end < len(data) and firsts.size > 1:
            cut = int(line_starts[np.searchsorted(line_starts, firsts[-1], side="right") - 1])
        keep = firsts < cut
        rj = dec.batch.rejects
        rk = rj.start + pos < cut
        yield _LogPart(
            positions={k: v[keep] for k, v in dec.batch.positions.items()},
            rejects=NmeaRejects(rj.msg[rk], rj.reason[rk], rj.start[rk] + pos,
                                rj.stop[rk] + pos),
            epoch_first=firsts[keep],
        )
        if end >= len(data) and cut >= end:
            return
        pos = cut


def split_epochs(data: bytes) -> list[bytes]:
    """Split a recorded NMEA log into one chunk of raw lines per epoch (for replay).

    Uses the decoder's epoch rule on the whole log as one device. A chunk starts at the
    line of its epoch's first time-bearing sentence; lines before the first epoch go
    with it. ``#`` comment lines are dropped. A log without any epoch is one chunk.
    """
    clean, line_starts = _file_lines(data)
    firsts = np.concatenate([np.zeros(0, dtype=np.int64)]
                            + [part.epoch_first for part in _decode_log(clean, line_starts)])
    cuts = np.unique(line_starts[np.searchsorted(line_starts, firsts, side="right") - 1])
    bounds = [0, *cuts[1:].tolist(), len(data)]
    chunks = []
    for lo, hi in itertools.pairwise(bounds):
        chunk = b"".join(line for line in data[lo:hi].splitlines(keepends=True)
                         if not line.startswith(b"#"))
        if chunk.strip():
            chunks.append(chunk)
    return chunks


def write_decoded_fixes(data: bytes, out: TextIO, err: TextIO, *,
                        date: dt.date | None = None) -> int:
    """Print one JSON line per epoch of an NMEA log; problems go to ``err``.

    Keys, in order: time (ISO 8601 UTC with milliseconds, null when no date is known:
    GGA-only logs need ``date``, the UTC date of the first epoch), lat, lon, alt_m,
    speed_mps, course_deg, fix_quality, sats, hdop (null where the log has no value).
    ``#`` comment lines are ignored. Returns the number of problems (rejected
    sentences or text), each reported as ``line N: reason: text``.
    """
    clean, line_starts = _file_lines(data)
    fallback = None if date is None else (date - dt.date(1970, 1, 1)).days
    problems = 0
    for part in _decode_log(clean, line_starts, fallback):
        _write_fixes(part.positions, out)
        rj = part.rejects
        lines = np.searchsorted(line_starts, rj.start, side="right")
        for i in range(len(rj)):
            text = data[int(rj.start[i]):int(rj.stop[i])].decode("ascii", "backslashreplace")
            if len(text) > _SNIPPET:
                text = text[:_SNIPPET] + "..."
            err.write(f"line {int(lines[i])}: {rj.reason_name(i)}: {text}\n")
        problems += len(rj)
    return problems


def _write_fixes(pos: dict[str, np.ndarray], out: TextIO) -> None:
    times = pos["time"]
    stamps = np.datetime_as_string(np.where(times == NO_TIME, 0, times).astype("datetime64[us]")
                                   .astype("datetime64[ms]"), unit="ms")
    columns = [pos[k].tolist() for k in _DECODE_KEYS[1:]]
    for i, row in enumerate(zip(*columns, strict=True)):
        record: dict[str, object] = {"time": None if times[i] == NO_TIME else f"{stamps[i]}Z"}
        for key, value in zip(_DECODE_KEYS[1:], row, strict=True):
            missing = value != value if isinstance(value, float) else value < 0
            record[key] = None if missing else value
        out.write(json.dumps(record) + "\n")
