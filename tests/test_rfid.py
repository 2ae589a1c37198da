"""RFID decoder: SGTIN-96 against published examples, exact rows, rejects, robustness."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beiflow.ingest.rfid import (
    REJECT_REASONS,
    SGTIN_COLUMNS,
    SGTIN_PARTITIONS,
    RfidBatch,
    RfidConfig,
    decode_rfid,
)
from beiflow.schemas.columns import RFID_COLUMNS

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
T0 = dt.datetime(2025, 3, 1, 8, 15, 30, tzinfo=dt.UTC)


def us(t: dt.datetime) -> int:
    """Microseconds since the Unix epoch, exactly."""
    return (t - EPOCH) // dt.timedelta(microseconds=1)


RECV = us(T0)


def read(epc: str = "3074257BF7194E4000001A85", **kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"epc": epc, "antenna": 1, "rssi_dbm": -52.5,
                         "time": "2025-03-01T08:15:30Z"}
    r.update(kw)
    return r


def decode(*payloads: bytes | dict[str, Any], device: list[int] | None = None,
           received: list[int] | None = None, config: RfidConfig | None = None) -> RfidBatch:
    data = [p if isinstance(p, bytes) else json.dumps(p).encode() for p in payloads]
    dev = np.zeros(len(data), np.int32) if device is None else np.asarray(device, np.int32)
    rec = np.full(len(data), RECV, np.int64) if received is None else np.asarray(received)
    return decode_rfid(data, dev, rec, RfidConfig() if config is None else config)


def rejects(b: RfidBatch) -> list[tuple[int, str, str]]:
    r = b.rejects
    return list(zip(r.msg.tolist(), r.reason.tolist(), r.detail.tolist(), strict=True))


def sgtin_of(epc: str) -> tuple[Any, ...]:
    b = decode(read(epc))
    assert not len(b.rejects)
    return tuple(b.reads[c][0] for c in SGTIN_COLUMNS)


# --- SGTIN-96 -------------------------------------------------------------------------

# (EPC hex, filter, company prefix, item reference, serial, GTIN-14), from:
SGTIN_EXAMPLES = [
    # GS1 EPC Tag Data Standard, Annex E example: urn:epc:tag:sgtin-96:3.0614141.812345.6789
    ("3074257BF7194E4000001A85", 3, "0614141", "812345", 6789, "80614141123458"),
    # GS1 Tag Data Translation example in the README of dannyhaak/TagDataTranslation:
    # hex 30340242201d8840009efdf7 <-> urn:epc:id:sgtin:0037000.030241.10419703,
    # gtin=00037000302414;serial=10419703. Worked by hand: header 0x30; 0x34 = 001 101 00
    # -> filter 1 (the README's encode call passes filter=3, which its own hex does not
    # carry; the pure identity URI has no filter), partition 5 (company prefix 24 bits / 7
    # digits, item reference 20 bits / 6 digits); bits 14..57 = 0x242 << 26 |
    # 0x201D8840009EFDF7 >> 38 = 38797342241 = 37000 * 2**20 + 30241 -> "0037000",
    # "030241"; serial = low 38 bits = 0x009EFDF7 = 10419703; GTIN body 0 0037000 30241,
    # digits weighted 3,1,3,... from the left sum to 46 -> check digit 4.
    ("30340242201D8840009EFDF7", 1, "0037000", "030241", 10419703, "00037000302414"),
    # Tests of the Python `epc` package (epc.schemes.SGTIN, test_96_decode / barcode):
    # partitions 0, 4 and 6, and a large serial.
    ("30012A05F200004000000001", 0, "320000000000", "1", 1, "13200000000008"),
    ("3010F42400186A0003149957", 0, "32000000", "25000", 51681623, "23200000050000"),
    ("301800004000004000000001", 0, "000001", "0000001", 1, "00000010000014"),
    ("3074257BF4CF5E4FCF27C6FF", 3, "0614141", "212345", 67899999999, "20614141123456"),
]


@pytest.mark.parametrize(("epc", "filt", "company", "item", "serial", "gtin"), SGTIN_EXAMPLES)
def test_sgtin96_published_examples(epc: str, filt: int, company: str, item: str, serial: int,
                                    gtin: str) -> None:
    assert sgtin_of(epc) == (filt, company, item, serial, gtin)
    assert sgtin_of(epc.lower()) == (filt, company, item, serial, gtin)


def test_sgtin96_fields_of_a_whole_batch_at_once() -> None:
    b = decode({"reads": [read(e[0]) for e in SGTIN_EXAMPLES] + [read("317A7202CC164BA20B000000")]})
    assert b.reads["gtin"].tolist() == [e[5] for e in SGTIN_EXAMPLES] + [None]
    assert b.reads["sgtin_serial"].dtype == np.int64
    assert b.reads["sgtin_filter"].dtype == np.int16


def _gs1_check_digit(digits: str) -> int:
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return (10 - total % 10) % 10


def _encode_sgtin96(filt: int, partition: int, company: int, item: int, serial: int) -> str:
    cp_bits, _, ir_bits, _ = SGTIN_PARTITIONS[partition]
    value = (0x30 << 88 | filt << 85 | partition << 82 | company << (82 - cp_bits)
             | item << 38 | serial)
    assert cp_bits + ir_bits == 44
    return f"{value:024X}"


@st.composite
def _sgtin(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    partition = draw(st.integers(0, 6))
    _, cp_digits, _, ir_digits = SGTIN_PARTITIONS[partition]
    return (draw(st.integers(0, 7)), partition, draw(st.integers(0, 10**cp_digits - 1)),
            draw(st.integers(0, 10**ir_digits - 1)), draw(st.integers(0, 2**38 - 1)))


@settings(max_examples=300, deadline=None)
@given(st.lists(_sgtin(), min_size=1, max_size=20))
def test_sgtin96_round_trips_every_partition(fields: list[tuple[int, int, int, int, int]]) -> None:
    b = decode({"reads": [read(_encode_sgtin96(*f)) for f in fields]})
    for row, (filt, partition, company, item, serial) in enumerate(fields):
        _, cp_digits, _, ir_digits = SGTIN_PARTITIONS[partition]
        cp, ir = f"{company:0{cp_digits}d}", f"{item:0{ir_digits}d}"
        body = ir[0] + cp + ir[1:]
        assert b.reads["sgtin_filter"][row] == filt
        assert b.reads["sgtin_company_prefix"][row] == cp
        assert b.reads["sgtin_item_ref"][row] == ir
        assert b.reads["sgtin_serial"][row] == serial
        assert b.reads["gtin"][row] == body + str(_gs1_check_digit(body))


@pytest.mark.parametrize("epc", [
    "317A7202CC164BA20B000000",  # SSCC-96
    "E2801160600002084E5C1234",  # a TID-like value, no GS1 header
    "3074257BF7194E4000001A850000",  # header 0x30 but 112 bits: not SGTIN-96
    "301C0000000000000000002A",  # partition 7 does not exist
    f"{0x30 << 88 | 6 << 82 | 10**6 << 62 | 1:024X}",  # 7-digit company prefix in partition 6
    f"{0x30 << 88 | 10 << 38 | 1:024X}",  # 2-digit item reference in partition 0
])
def test_non_sgtin96_epcs_are_kept_without_gs1_fields(epc: str) -> None:
    assert sgtin_of(epc) == (-1, None, None, -1, None)


# --- rows -----------------------------------------------------------------------------

def test_rows_have_exact_values_from_several_readers() -> None:
    b = decode(
        read(epc="3074257bf7194e4000001a85", antenna=4, rssi_dbm=-61.25,
             time="2025-03-01T16:15:29.123456+08:00", phase_deg=87.2, read_count=3),
        {"reads": [read(epc="E2801160600002084E5C1234ABCD0001", antenna=0, rssi_dbm=-120,
                        time=1_740_816_929_001),
                   read(antenna=255, rssi_dbm=0, time="2025-03-01T08:15:29.9999995Z",
                        phase_deg=360)],
         "reader_time": "2025-03-01T08:15:30Z"},
        device=[3, 7], received=[RECV, RECV + 5])
    r = b.reads
    assert not len(b.rejects)
    assert r["time"].tolist() == [us(T0) - 876_544, us(T0) - 999_000, us(T0)]
    assert r["received_at"].tolist() == [RECV, RECV + 5, RECV + 5]
    assert r["device"].tolist() == [3, 7, 7]
    assert r["msg"].tolist() == [0, 1, 1]
    assert r["antenna"].tolist() == [4, 0, 255]
    assert r["rssi_dbm"].tolist() == [-61.25, -120.0, 0.0]
    assert r["phase_deg"][0] == 87.2 and np.isnan(r["phase_deg"][1]) and r["phase_deg"][2] == 360
    assert r["read_count"].tolist() == [3, -1, -1]
    assert r["epc"].tolist() == ["3074257BF7194E4000001A85", "E2801160600002084E5C1234ABCD0001",
                                 "3074257BF7194E4000001A85"]
    assert r["gtin"].tolist() == ["80614141123458", None, "80614141123458"]
    expected = {c.name: c.dtype for c in RFID_COLUMNS} | {
        "device": np.int32, "msg": np.int32, "epc": object, "sgtin_filter": np.int16,
        "sgtin_company_prefix": object, "sgtin_item_ref": object, "sgtin_serial": np.int64,
        "gtin": object}
    assert {k: v.dtype for k, v in r.items()} == {k: np.dtype(v) for k, v in expected.items()}


def test_empty_input_gives_every_column_empty() -> None:
    b = decode()
    assert set(b.reads) == {c.name for c in RFID_COLUMNS} | {"device", "msg", "epc",
                                                              *SGTIN_COLUMNS}
    assert all(v.size == 0 for v in b.reads.values())
    assert len(b.rejects) == 0 and b.rejects.msg.dtype == np.int32


def test_device_and_received_at_need_one_entry_per_payload() -> None:
    with pytest.raises(ValueError, match="one entry per payload"):
        decode_rfid([b"{}"], np.zeros(2, np.int32), np.zeros(1, np.int64))


# --- rejects --------------------------------------------------------------------------

def test_mixed_batch_keeps_good_messages_and_names_each_bad_one() -> None:
    b = decode(
        read(),
        b'{"epc": "3074257BF7194E4000001A85", "antenna": 1, "rssi_dbm": NaN, "time": 0}',
        {"reads": [read(), read(epc="3074257BF7194E4000001A8")]},
        read(antenna="2"),
        {"reads": [read(), read(time="2025-03-01T08:15:30")]},
        read(time=us(T0) // 1000 + 301_000),
        read(time="2025-01-30T08:15:29.999999Z"),
        {"reads": [read()] * 3},
        b"[",
        read(extra=1),
        {"reads": [read()], "reader_time": "noon"},
        read(antenna=2),
        config=RfidConfig(max_reads=2),
    )
    assert rejects(b) == [
        (1, "non_finite", "rssi_dbm: NaN is not allowed"),
        (2, "bad_epc", "reads[1].epc: '3074257BF7194E4000001A8' is not 24 to 124 hex digits "
                       "in groups of 4"),
        (3, "schema", "antenna: expected integer, got string"),
        (4, "bad_time", "reads[1].time: '2025-03-01T08:15:30' is neither an RFC 3339 "
                        "date-time with offset nor epoch milliseconds"),
        (5, "future_time", "time: 1740817231000 is 301.000 s after arrival (tolerance 300 s)"),
        (6, "stale_time", "time: '2025-01-30T08:15:29.999999Z' is 2592000.000 s before arrival "
                          "(tolerance 2592000 s)"),
        (7, "too_many_readings", "reads: 3 reads > 2"),
        (8, "bad_json", "Input data was truncated"),
        (9, "schema", "extra: unknown field"),
        (10, "bad_time", "reader_time: 'noon' is neither an RFC 3339 date-time with offset "
                         "nor epoch milliseconds"),
    ]
    assert b.reads["msg"].tolist() == [0, 11]
    assert b.reads["antenna"].tolist() == [1, 2]
    assert set(REJECT_REASONS) >= set(b.rejects.reason.tolist())


def test_time_window_edges_are_inclusive() -> None:
    config = RfidConfig(future_tolerance_s=10, past_tolerance_s=20)
    ms = us(T0) // 1000
    b = decode(read(time=ms + 10_000), read(time=ms - 20_000), read(time=ms + 10_001),
               read(time=ms - 20_001), config=config)
    assert [(m, r) for m, r, _ in rejects(b)] == [(2, "future_time"), (3, "stale_time")]
    assert b.reads["msg"].tolist() == [0, 1]


def test_reader_time_is_checked_but_not_windowed() -> None:
    b = decode({"reads": [read()], "reader_time": 0},
               {"reads": [read()], "reader_time": "2125-03-01T08:15:30Z"},
               {"reads": [read()], "reader_time": 10**400})
    assert [(m, r) for m, r, _ in rejects(b)] == [(2, "bad_time")]


def test_first_failing_check_names_the_message() -> None:
    b = decode({"reads": [read(time="bad"), read(epc="XYZ"), read(antenna=1.5)]})
    assert rejects(b) == [(0, "schema", "reads[2].antenna: must be an integer")]


@pytest.mark.parametrize("kwargs", [
    {"future_tolerance_s": -1}, {"past_tolerance_s": float("nan")}, {"max_reads": 0}])
def test_config_rejects_impossible_limits(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RfidConfig(**kwargs)  # type: ignore[arg-type]


# --- robustness -----------------------------------------------------------------------

VALID = [
    json.dumps(read(phase_deg=87.2, read_count=3)).encode(),
    json.dumps({"reads": [read(), read(time=1_740_816_930_000)], "reader_time": 0}).encode(),
]


def _accounted(b: RfidBatch, n: int) -> None:
    """Every message either produced rows or exactly one reject, never both."""
    rejected = b.rejects.msg.tolist()
    assert len(set(rejected)) == len(rejected)
    assert not set(rejected) & set(b.reads["msg"].tolist())
    assert set(rejected) | set(b.reads["msg"].tolist()) <= set(range(n))
    assert len(set(rejected) | set(b.reads["msg"].tolist())) == n
    assert all(r in REJECT_REASONS for r in b.rejects.reason.tolist())


@pytest.mark.parametrize("payload", [
    b'{"reads": [{"epc": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}]}",
    b'{"reads": ' + b"[" * 100_000 + b"}",
])
def test_deep_nesting_is_rejected_not_raised(payload: bytes) -> None:
    assert rejects(decode(payload))[0][1] in {"schema", "bad_json"}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_arbitrary_bytes_never_raise(payloads: list[bytes]) -> None:
    _accounted(decode(*payloads), len(payloads))


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.sampled_from(list(b'0123456789.-+eE"{}[],:NaI \\\x00\xff')))
        if op == "insert":
            data.insert(at, byte)
        elif at < len(data):
            if op == "delete":
                del data[at]
            else:
                data[at] = byte
    return bytes(data)


@settings(max_examples=500, deadline=None)
@given(st.lists(_mutated(), min_size=1, max_size=6))
def test_mutated_valid_payloads_never_raise(payloads: list[bytes]) -> None:
    _accounted(decode(*payloads), len(payloads))
