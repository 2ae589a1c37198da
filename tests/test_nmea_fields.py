"""The vectorised number parser against a plain-Python reference, on arbitrary field text."""

from __future__ import annotations

import re

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from beiflow.ingest import nmea_fields as nf

_NUMBER = re.compile(rb"([+-]?)(\d*)(?:\.(\d*))?")
FORMS = (nf.INT, nf.DEC, nf.HHMMSS, nf.DDMM, nf.DDDMM)


def reference(text: bytes) -> tuple[int, int, int, bool, int] | None:
    """(mantissa, decimals, integer digits, negative, status) as the decoder defines them."""
    if not text:
        return None
    m = _NUMBER.fullmatch(text)
    if m is None or not (m[2] or m[3]):
        return (0, 0, 0, False, nf.BAD)
    frac = m[3] or b""
    if len(m[2] + frac) > 18:
        return (0, 0, 0, False, nf.BAD)
    return (int(m[2] + frac), len(frac), len(m[2]), m[1] == b"-", nf.OK)


def parse(fields: list[bytes], form: str) -> nf.Numbers:
    buf = b"\0" * 16 + b",".join(fields) + b"\0" * 16
    starts, at = [], 16
    for f in fields:
        starts.append(at)
        at += len(f) + 1
    s = np.array(starts, dtype=np.int64)
    e = s + np.array([len(f) for f in fields], dtype=np.int64)
    return nf.parse_numbers(np.frombuffer(buf, np.uint8), s, e, form)


def check(fields: list[bytes]) -> None:
    for form in FORMS:
        got = parse(fields, form)
        for i, text in enumerate(fields):
            ref = reference(text)
            if ref is None:
                assert got.status[i] == nf.EMPTY, (form, text)
                continue
            mant, frac, nint, neg, status = ref
            assert got.status[i] == status, (form, text)
            if status == nf.OK and mant < 2**53:
                assert (int(got.mant[i]), got.frac[i], got.nint[i], bool(got.neg[i])) == (
                    mant, frac, nint, neg), (form, text)


field_text = st.text(alphabet="0123456789.+-", max_size=40).map(str.encode)
noisy_text = st.binary(max_size=24).filter(lambda b: b"," not in b)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(field_text, noisy_text), min_size=1, max_size=12))
def test_every_form_agrees_with_the_reference(fields: list[bytes]) -> None:
    check(fields)


def test_typical_nmea_fields() -> None:
    check([b"081530.25", b"235959", b"000000.123456", b"3110.4567", b"0000.0000", b"12128.1234",
           b"00833.9159012", b"4807", b"4807.", b"123519.123456789", b"-12.5", b"+0.004",
           b"99999999", b"1234567.12345678", b"1.2.3", b"..", b"-", b"08", b"", b"12 3", b"1e5",
           b"081530." + b"1" * 30, b"3110." + b"4" * 30, b"1" * 19, b"0." + b"0" * 17 + b"1"])


# -- the whole decoder on arbitrary input --------------------------------------------------

#: Valid sentences (checksums verify) to mix with cut-offs, separators and binary noise.
_GOOD = [
    b"$GNRMC,081530.25,A,3110.4567,N,12128.1234,E,10.5,87.25,010324,,,A,V*05",
    b"$GNGGA,081530.25,3110.4567,N,12128.1234,E,1,12,0.85,12.3,M,8.5,M,,*46",
    b"$GPGSV,2,2,05,15,10,100,40,1*51",
    b"$GNGSA,A,3,01,02,03,,,,,,,,,,2.0,1.0,1.7*29",
    b"$PUBX,41,1,0007,0003,19200,0*25",
]
pieces = st.one_of(
    st.sampled_from(_GOOD),
    st.sampled_from(_GOOD).flatmap(lambda g: st.integers(0, len(g)).map(lambda k: g[:k])),
    st.sampled_from([b"\r\n", b"\n", b"\r", b" ", b"$", b"*", b",", b"!", b"#"]),
    st.binary(max_size=12),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(pieces, max_size=8).map(b"".join), max_size=6),
       st.lists(st.integers(0, 3), min_size=6, max_size=6))
def test_decoder_invariants_on_arbitrary_payloads(payloads: list[bytes],
                                                  devices: list[int]) -> None:
    from beiflow.ingest.nmea import NmeaState, decode_batch

    n = len(payloads)
    b = decode_batch(payloads, np.array(devices[:n], np.int32),
                     np.full(n, 1_709_281_000_000_000, np.int64), NmeaState())
    r = b.rejects
    assert np.all((r.msg >= 0) & (r.msg < n))
    for i in range(len(r)):
        start, stop = int(r.start[i]), int(r.stop[i])
        assert 0 <= start < stop <= len(payloads[int(r.msg[i])])
    rows = b.positions["time"].size
    assert all(col.size == rows for col in b.positions.values())
    assert np.all(np.diff(b.positions["msg"]) >= 0)
    assert rows <= b.sentences
    assert all(v >= 0 for v in b.skipped.values())
