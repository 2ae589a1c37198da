"""Vectorised NMEA 0183 framing: sentences, checksums and classification for a whole batch.

All payloads of a batch are joined into one byte buffer; sentence starts, line ends,
``*`` and ``,`` are found with array operations and every check is a vector expression.
Only lines that do not start with ``$`` or ``!`` (garbage, blank ``\\r`` lines) take a
per-line Python path, and they are rare in real traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import numpy as np

#: Reject reasons, in code order: ``NmeaRejects.reason`` holds indexes into this tuple.
REJECT_REASONS: tuple[str, ...] = (
    "bad_checksum",
    "missing_checksum",
    "truncated",
    "too_long",
    "non_ascii",
    "bad_field",
    "not_nmea",
    "too_many_sentences",
)
(BAD_CHECKSUM, MISSING_CHECKSUM, TRUNCATED, TOO_LONG, NON_ASCII, BAD_FIELD, NOT_NMEA,
 TOO_MANY_SENTENCES) = range(8)

#: Keys of ``NmeaBatch.skipped``: counted, but neither rows nor dead letters.
SKIP_REASONS: tuple[str, ...] = (
    "proprietary",
    "unknown_type",
    "long_sentence",
    "no_epoch",
    "empty",
    "missing_checksum",
)

#: Sentence types decoded, in kind-code order.
TYPES: tuple[str, ...] = ("RMC", "GGA", "GNS", "GLL", "VTG", "GSA", "GSV", "ZDA")
RMC, GGA, GNS, GLL, VTG, GSA, GSV, ZDA = range(8)
#: Talkers accepted for the decoded types, in talker-code order.
TALKERS: tuple[str, ...] = ("GP", "BD", "GB", "GN", "GL", "GA", "GQ")

#: The NMEA 0183 limit: 82 characters from ``$`` to the end of ``<CR><LF>``.
NMEA_MAX_LEN = 82
#: Entries past the last comma, more than any field index we read (GSV: 18).
COMMA_SENTINELS = 32
#: Zero bytes around the joined payloads, so fixed-width gathers never leave the buffer.
PAD = 16

_TYPE_KEYS = np.array([(ord(t[0]) << 16) | (ord(t[1]) << 8) | ord(t[2]) for t in TYPES])
_TALKER_KEYS = np.array([(ord(t[0]) << 8) | ord(t[1]) for t in TALKERS])
_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789ABCDEF"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"abcdef"):
    _HEX[_c] = 10 + _i
_WHITESPACE = b" \t\r\n\x0b\x0c\x00"


@dataclass(slots=True)
class RejectLog:
    """Rejects collected while decoding, as global buffer spans."""

    msg: list[np.ndarray] = field(default_factory=list)
    code: list[np.ndarray] = field(default_factory=list)
    start: list[np.ndarray] = field(default_factory=list)
    stop: list[np.ndarray] = field(default_factory=list)

    def add(self, msg: np.ndarray, code: np.ndarray | int, start: np.ndarray,
            stop: np.ndarray) -> None:
        """Record rejects (``code`` scalar or per row)."""
        if msg.size:
            self.msg.append(msg)
            self.code.append(np.broadcast_to(np.asarray(code, dtype=np.uint8), msg.shape))
            self.start.append(start)
            self.stop.append(stop)


@dataclass(slots=True)
class Framed:
    """The batch buffer and its sentences of decodable types (buffer order)."""

    a: np.ndarray  # uint8 view of the padded buffer
    msg_start: np.ndarray  # int64 buffer offset of each payload
    pos: np.ndarray  # offset of each sentence's '$'
    end: np.ndarray  # end of the sentence (after the checksum), CR/LF excluded
    body_end: np.ndarray  # offset of '*' (or ``end`` when there is no checksum)
    msg: np.ndarray  # message index of each sentence
    kind: np.ndarray  # index into TYPES
    talker: np.ndarray  # index into TALKERS
    c0: np.ndarray  # index into ``commas`` of the comma after the address
    nf: np.ndarray  # number of fields after the address
    commas: np.ndarray  # offsets of all ',' in the buffer, then COMMA_SENTINELS past the end
    rejects: RejectLog
    skipped: dict[str, int]


def join_payloads(payloads: list[bytes] | tuple[bytes, ...]) -> tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray]:
    """One padded buffer (payloads separated by LF), each payload's offset and length."""
    pad = bytes(PAD)
    buf = b"\n".join(chain((pad,), payloads, (pad,)))
    lens = np.fromiter(map(len, payloads), dtype=np.int64, count=len(payloads))
    starts = np.empty(len(payloads), dtype=np.int64)
    if len(payloads):
        starts[0] = PAD + 1
        np.cumsum(lens[:-1] + 1, out=starts[1:])
        starts[1:] += PAD + 1
    return np.frombuffer(buf, dtype=np.uint8), starts, lens


#: uint8 scalars: comparing a uint8 array with a Python int takes a much slower path.
_U8 = tuple(np.uint8(i) for i in range(256))
_LOW_LANES = np.array([(1 << (8 * r)) - 1 for r in range(8)], dtype=np.uint64)


def _xor_between(a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """XOR of the bytes ``a[lo:hi]`` per pair, from a prefix XOR over uint64 words."""
    words = a[: a.size // 8 * 8].view("<u8")
    prefix = np.bitwise_xor.accumulate(words)

    def upto(p: np.ndarray) -> np.ndarray:  # lane-wise XOR of all bytes before p
        w = p >> 3
        return prefix[w - 1] ^ (words[w] & _LOW_LANES[p & 7])

    x = upto(hi) ^ upto(lo)
    x ^= x >> np.uint64(32)
    x ^= x >> np.uint64(16)
    x ^= x >> np.uint64(8)
    return (x & np.uint64(0xFF)).astype(np.uint8)


def frame(payloads: list[bytes] | tuple[bytes, ...], *, max_len: int,
          require_checksum: bool, max_sentences: int | None = None) -> Framed:
    """Find, check and classify every sentence of the batch.

    A sentence starts at ``$`` (or ``!``) and ends at the line end or the next start.
    A payload with more than ``max_sentences`` pieces (sentence starts plus lines that do
    not begin with one) is rejected whole (too_many_sentences) before anything else.
    Checks, first failing wins: non_ascii, too_long, then the checksum (``*`` plus two
    hex digits, either case). Without a ``*``, a sentence cut off by the payload's end or
    by the next start is truncated; a complete line lacks its checksum.
    """
    a, msg_start, lens = join_payloads(payloads)
    msg_end = msg_start + lens
    rejects = RejectLog()
    skipped = dict.fromkeys(SKIP_REASONS, 0)

    # One pass finds every byte below ',' + 1 or above '~': separators, controls, non-ASCII.
    special = np.flatnonzero((a - _U8[45]) >= _U8[82])
    ch = a[special]
    nl = special[ch == _U8[10]]  # nl[0] == PAD; the last one follows the last payload
    starts = special[(ch == _U8[36]) | (ch == _U8[33])]  # '$' and '!' (AIS encapsulation)
    # Sentinels past the end keep "next '*'" and "k-th ',' after" lookups in bounds.
    stars = np.append(special[ch == _U8[42]], a.size + 8)
    commas = np.concatenate([special[ch == _U8[44]], np.full(COMMA_SENTINELS, a.size + 8)])
    # Bytes that may not occur inside a sentence: controls other than CR/LF, DEL, non-ASCII.
    bad_pos = special[((ch < _U8[32]) & (ch != _U8[10]) & (ch != _U8[13])) | (ch >= _U8[127])]
    lines = _Lines.find(a, nl, msg_start)
    n_starts = np.searchsorted(starts, msg_end) - np.searchsorted(starts, msg_start)
    over = np.zeros(msg_start.size, dtype=bool)
    if max_sentences is not None:
        pieces = n_starts + np.bincount(lines.msg[lines.odd], minlength=msg_start.size)
        over = pieces > max_sentences
        if over.any():
            k = np.flatnonzero(over)
            rejects.add(k, TOO_MANY_SENTENCES, msg_start[k], msg_end[k])
            starts = starts[~over[np.searchsorted(msg_start, starts, side="right") - 1]]
    _text(a, payloads, msg_start, msg_end, lines, starts, n_starts, over, rejects, skipped)

    # A sentence runs from its start to the next start or line end, whichever is first.
    line_end = nl[np.searchsorted(nl, starts)]
    nxt = np.empty_like(starts)
    nxt[:-1] = starts[1:]
    nxt[-1:] = a.size
    cut_by_next = nxt < line_end
    end = np.minimum(line_end, nxt)
    while True:  # drop trailing CR / blanks, a few passes at most
        trail = (end > starts + 1) & ((a[end - 1] == 13) | (a[end - 1] == 32))
        if not trail.any():
            break
        end -= trail
    msg = np.searchsorted(msg_start, starts, side="right") - 1
    unterminated = cut_by_next | (line_end == msg_end[msg])

    star = stars[np.searchsorted(stars, starts)]
    has_star = star < end
    after = end - star - 1
    safe_star = np.where(has_star, star, starts + 1)
    computed = _xor_between(a, starts + 1, safe_star)
    hi = _HEX[a[safe_star + 1]]
    lo = _HEX[a[safe_star + 2]]
    given_ok = (hi != 255) & (lo != 255)
    given = (hi << 4) | lo

    n_bad = np.searchsorted(bad_pos, end) - np.searchsorted(bad_pos, starts)
    length = end - starts + 2

    no_star_reason = np.where(unterminated, TRUNCATED,
                              MISSING_CHECKSUM if require_checksum else 255)
    star_reason = np.where(after < 2, TRUNCATED,
                           np.where((after > 2) | ~given_ok | (given != computed),
                                    BAD_CHECKSUM, 255))
    reason = np.where(has_star, star_reason, no_star_reason)
    reason = np.where(length > max_len, TOO_LONG, reason)
    reason = np.where(n_bad > 0, NON_ASCII, reason).astype(np.uint8)
    bad = reason != 255
    rejects.add(msg[bad], reason[bad], starts[bad], end[bad])
    ok = ~bad
    skipped["long_sentence"] = int(np.count_nonzero(ok & (length > NMEA_MAX_LEN)))
    if not require_checksum:
        skipped["missing_checksum"] = int(np.count_nonzero(ok & ~has_star))

    # Classify what passed: proprietary, our types from our talkers, or unknown.
    starts, end, msg = starts[ok], end[ok], msg[ok]
    body_end = np.where(has_star[ok], star[ok], end)
    head = a[np.arange(6)[:, None] + starts[None, :]].astype(np.int64)  # "$GPGGA"
    proprietary = (head[0] == 36) & (head[1] == 80)  # "$P"
    skipped["proprietary"] = int(np.count_nonzero(proprietary))
    c0 = np.searchsorted(commas, starts)
    address_ok = (head[0] == 36) & (commas[c0] == starts + 6) & ~proprietary
    talker = _lookup(_TALKER_KEYS, (head[1] << 8) | head[2])
    kind = _lookup(_TYPE_KEYS, (head[3] << 16) | (head[4] << 8) | head[5])
    known = address_ok & (talker >= 0) & (kind >= 0)
    skipped["unknown_type"] = int(np.count_nonzero(~known & ~proprietary))
    nf = np.searchsorted(commas, body_end) - c0
    return Framed(
        a=a, msg_start=msg_start, pos=starts[known], end=end[known],
        body_end=body_end[known], msg=msg[known], kind=kind[known].astype(np.int8),
        talker=talker[known].astype(np.int8), c0=c0[known], nf=nf[known], commas=commas,
        rejects=rejects, skipped=skipped,
    )


def count_pieces(payload: bytes) -> tuple[int, int]:
    """Sentence starts and lines of other text in one payload, as ``frame`` counts them
    against ``max_sentences`` (for the detail of a too_many_sentences reject)."""
    other = sum(1 for line in payload.split(b"\n") if line and line[0] not in b"$!")
    return payload.count(b"$") + payload.count(b"!"), other


def _lookup(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each value in the small table ``keys``, -1 when absent."""
    order = np.argsort(keys)
    sk = keys[order]
    i = np.minimum(np.searchsorted(sk, values), sk.size - 1)
    return np.where(sk[i] == values, order[i], -1)


@dataclass(slots=True)
class _Lines:
    """The lines of the batch buffer: start, end (its LF), message, and whether it is
    text that does not begin with a sentence start."""

    start: np.ndarray
    end: np.ndarray
    msg: np.ndarray
    odd: np.ndarray  # bool

    @classmethod
    def find(cls, a: np.ndarray, nl: np.ndarray, msg_start: np.ndarray) -> _Lines:
        ls, le = nl[:-1] + 1, nl[1:]
        first = a[ls]
        return cls(ls, le, np.searchsorted(msg_start, ls, side="right") - 1,
                   (ls < le) & (first != 36) & (first != 33))


def _text(a: np.ndarray, payloads: list[bytes] | tuple[bytes, ...], msg_start: np.ndarray,
          msg_end: np.ndarray, lines: _Lines, starts: np.ndarray, n_starts: np.ndarray,
          over: np.ndarray, rejects: RejectLog, skipped: dict[str, int]) -> None:
    """Count blank lines and reject text that is not part of any sentence (messages
    rejected whole, ``over``, are left out)."""
    for k in np.flatnonzero((n_starts == 0) & ~over):  # no sentence start at all
        if payloads[k].strip(_WHITESPACE):
            rejects.add(np.array([k]), NOT_NMEA, msg_start[k:k + 1], msg_end[k:k + 1])
        else:
            skipped["empty"] += 1
    ls, le, line_msg = lines.start, lines.end, lines.msg
    has_starts = (n_starts[line_msg] > 0) & ~over[line_msg]
    blank = (ls == le) & (le != msg_end[line_msg]) & has_starts
    skipped["empty"] += int(np.count_nonzero(blank))
    odd = np.flatnonzero(lines.odd & has_starts)
    if not odd.size:
        return
    first_start = starts[np.minimum(np.searchsorted(starts, ls[odd]), starts.size - 1)]
    buf = a.tobytes()
    for j, i in enumerate(odd):
        lo, hi = int(ls[i]), int(le[i])
        cut = min(hi, int(first_start[j])) if first_start[j] >= lo else hi
        text = buf[lo:cut]
        core = text.strip(_WHITESPACE)
        if core:
            s = lo + text.index(core)
            rejects.add(np.array([line_msg[i]]), NOT_NMEA, np.array([s]),
                        np.array([s + len(core)]))
        elif cut == hi:
            skipped["empty"] += 1
