"""Edge cases of the vectorised NMEA decoder, each with a known input and known output."""

from __future__ import annotations

import datetime as dt
from fractions import Fraction
from functools import reduce

import numpy as np
import pytest

from beiflow.ingest.nmea import (
    REJECT_REASONS,
    NmeaBatch,
    NmeaConfig,
    NmeaRejects,
    NmeaState,
    decode_batch,
)
from beiflow.schemas.columns import POSITION_COLUMN_NAMES, POSITION_COLUMNS, DateSource, FixFlag

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
KNOT = 1852 / 3600


def us(t: dt.datetime) -> int:
    """Microseconds since the Unix epoch, exactly."""
    return (t - EPOCH) // dt.timedelta(microseconds=1)


def s(body: str, *, lower: bool = False) -> str:
    """``$body*hh`` with the XOR checksum."""
    cs = reduce(lambda a, b: a ^ b, body.encode("latin-1"), 0)
    return f"${body}*{cs:02x}" if lower else f"${body}*{cs:02X}"


T0 = dt.datetime(2024, 3, 1, 8, 15, 30, 250_000, tzinfo=dt.UTC)
RECV = us(T0) + 1_500_000
RMC = s("GNRMC,081530.25,A,3110.4567,N,12128.1234,E,10.5,87.25,010324,,,A,V")
GGA = s("GNGGA,081530.25,3110.4567,N,12128.1234,E,1,12,0.85,12.3,M,8.5,M,,")
LAT = 31 + 10.4567 / 60
LON = 121 + 28.1234 / 60


def decode(*payloads: str | bytes, device: list[int] | None = None,
           received: list[int] | None = None, state: NmeaState | None = None,
           config: NmeaConfig | None = None) -> NmeaBatch:
    data = [p.encode("latin-1") if isinstance(p, str) else p for p in payloads]
    dev = np.zeros(len(data), np.int32) if device is None else np.asarray(device, np.int32)
    rec = (np.full(len(data), RECV, np.int64) if received is None
           else np.asarray(received, np.int64))
    return decode_batch(data, dev, rec, NmeaState() if state is None else state,
                        NmeaConfig() if config is None else config)


def rejected(b: NmeaBatch, payloads: list[bytes]) -> list[tuple[str, bytes]]:
    r = b.rejects
    return [(r.reason_name(i), payloads[int(r.msg[i])][int(r.start[i]):int(r.stop[i])])
            for i in range(len(r))]


def test_rmc_and_gga_of_one_epoch_make_one_row() -> None:
    b = decode(RMC + "\r\n" + GGA + "\r\n")
    p = b.positions
    assert p["time"].tolist() == [us(T0)]
    assert p["received_at"].tolist() == [RECV]
    assert p["lat"][0] == pytest.approx(LAT, abs=1e-12)
    assert p["lon"][0] == pytest.approx(LON, abs=1e-12)
    assert p["speed_mps"][0] == pytest.approx(10.5 * KNOT, rel=1e-15)
    assert p["course_deg"][0] == 87.25
    assert p["alt_m"][0] == 12.3
    assert (p["fix_quality"][0], p["sats"][0], p["hdop"][0]) == (1, 12, 0.85)
    assert (p["status"][0], p["mode"][0]) == (1, ord("A"))
    assert p["date_source"][0] == DateSource.RMC
    assert p["flags"][0] == 0
    assert (p["device"][0], p["msg"][0]) == (0, 0)
    assert b.sentences == 2
    assert len(b.rejects) == 0
    assert all(v == 0 for v in b.skipped.values())


def test_positions_carry_every_schema_column_with_its_dtype() -> None:
    for b in (decode(RMC), decode()):
        p = b.positions
        assert list(p) == [*POSITION_COLUMN_NAMES, "device", "msg"]
        for col in POSITION_COLUMNS:
            assert p[col.name].dtype == col.dtype, col.name
        assert p["device"].dtype == np.int32
        assert p["msg"].dtype == np.int32


def test_status_v_with_empty_fields_is_a_row_without_fix() -> None:
    b = decode(s("GPRMC,081530.25,V,,,,,,,010324,,,N") + "\n"
               + s("GPGGA,081530.25,,,,,0,00,99.99,,,,,,") + "\n")
    p = b.positions
    assert p["time"].tolist() == [us(T0)]
    for name in ("lat", "lon", "speed_mps", "course_deg", "alt_m"):
        assert np.isnan(p[name][0]), name
    assert (p["status"][0], p["fix_quality"][0], p["sats"][0]) == (0, 0, 0)
    assert p["hdop"][0] == 99.99
    assert p["flags"][0] == FixFlag.NO_FIX
    assert p["date_source"][0] == DateSource.RMC


def test_quality_zero_is_no_fix_even_with_coordinates() -> None:
    b = decode(s("GPGGA,081530.25,3110.4567,N,12128.1234,E,0,04,5.0,10.0,M,,M,,"))
    assert b.positions["flags"][0] & FixFlag.NO_FIX
    assert b.positions["lat"][0] == pytest.approx(LAT, abs=1e-12)


def test_lf_crlf_and_missing_final_newline_decode_alike() -> None:
    variants = [RMC + "\n" + GGA + "\n", RMC + "\r\n" + GGA + "\r\n", RMC + "\r\n" + GGA]
    results = [decode(v) for v in variants]
    for b in results:
        assert len(b.rejects) == 0 and b.sentences == 2
        for name, col in b.positions.items():
            np.testing.assert_array_equal(col, results[0].positions[name], err_msg=name)


def test_one_epoch_spread_over_two_messages_names_the_first() -> None:
    b = decode(RMC + "\r\n", GGA + "\r\n")
    p = b.positions
    assert p["msg"].tolist() == [0]
    assert (p["fix_quality"][0], p["course_deg"][0]) == (1, 87.25)


def test_cut_off_sentence_is_rejected_as_truncated_with_its_bytes() -> None:
    payloads = [(RMC + "\r\n" + GGA[:30]).encode()]
    b = decode(*payloads)
    assert rejected(b, payloads) == [("truncated", GGA[:30].encode())]
    assert b.sentences == 1
    assert b.positions["course_deg"].tolist() == [87.25]


def test_sentence_cut_off_by_the_next_one_on_the_same_line() -> None:
    payloads = [("$GPGGA,081530.25,3110.4" + RMC + "\r\n").encode()]
    b = decode(*payloads)
    assert rejected(b, payloads) == [("truncated", b"$GPGGA,081530.25,3110.4")]
    assert len(b.positions["time"]) == 1


def test_lowercase_hex_checksum_is_accepted() -> None:
    lower = s("GNGGA,081530.25,3110.4567,N,12128.1234,E,1,12,0.85,12.8,M,8.5,M,,", lower=True)
    assert lower.endswith("*4d")
    b = decode(lower)
    assert len(b.rejects) == 0
    assert b.positions["alt_m"].tolist() == [12.8]


def test_bad_checksum_is_rejected_with_the_exact_sentence() -> None:
    wrong = RMC[:-2] + ("00" if RMC[-2:] != "00" else "01")
    payloads = [(wrong + "\r\n" + GGA + "\r\n").encode()]
    b = decode(*payloads)
    assert rejected(b, payloads) == [("bad_checksum", wrong.encode())]
    assert b.positions["fix_quality"].tolist() == [1]


@pytest.mark.parametrize("tail", ["*4", "*4G", "*123"])
def test_malformed_checksum_field(tail: str) -> None:
    sentence = "$GPGGA,081530.25,3110.4567,N,12128.1234,E,1,12,0.85,12.3,M,8.5,M,," + tail
    payloads = [(sentence + "\r\n").encode()]
    expected = "truncated" if tail == "*4" else "bad_checksum"
    assert rejected(decode(*payloads), payloads) == [(expected, sentence.encode())]


def test_missing_checksum_is_rejected_unless_allowed() -> None:
    bare = RMC.split("*")[0]
    payloads = [(bare + "\r\n").encode()]
    strict = decode(*payloads)
    assert rejected(strict, payloads) == [("missing_checksum", bare.encode())]
    assert len(strict.positions["time"]) == 0
    lax = decode(*payloads, config=NmeaConfig(require_checksum=False))
    assert len(lax.rejects) == 0
    assert lax.skipped["missing_checksum"] == 1
    assert lax.positions["lat"][0] == pytest.approx(LAT, abs=1e-12)


def test_proprietary_and_unknown_sentences_are_counted_not_rejected() -> None:
    b = decode("\r\n".join([
        s("PUBX,00,081530.25,3110.4567,N,12128.1234,E,10.0,G3,2.1,2.0,0.0,0.0,0.0,,1.0,1.0,"
          "1.0,8,0,0"),
        s("GPTXT,01,01,02,ANTENNA OK"),
        s("GNGST,081530.25,1.0,0.5,0.4,10.0,0.5,0.4,1.0"),
        s("IIRMC,081530.25,A,3110.4567,N,12128.1234,E,10.5,87.25,010324,,,A"),
        "!AIVDM,1,1,,A,13aEOK?P00PD2wVMdLDRhgvL289?,0*26",
        RMC,
    ]))
    assert b.skipped["proprietary"] == 1
    assert b.skipped["unknown_type"] == 4
    assert b.skipped["long_sentence"] == 1  # the PUBX line is 87 characters with CRLF
    assert len(b.rejects) == 0
    assert b.sentences == 1
    assert len(b.positions["time"]) == 1


def test_device_clock_far_ahead_or_behind_is_flagged() -> None:
    cfg = NmeaConfig(future_tolerance_s=300.0, past_tolerance_s=86400.0)
    ahead = decode(RMC, received=[us(T0) - 301_000_000], config=cfg)
    assert ahead.positions["flags"][0] == FixFlag.CLOCK_FUTURE
    behind = decode(RMC, received=[us(T0) + 86_401_000_000], config=cfg)
    assert behind.positions["flags"][0] == FixFlag.CLOCK_PAST
    fine = decode(RMC, received=[us(T0) + 86_399_000_000], config=cfg)
    assert fine.positions["flags"][0] == 0
    assert decode(RMC, received=[us(T0) - 299_000_000]).positions["flags"][0] == 0


def test_sentence_over_82_characters_is_counted_and_over_the_limit_rejected() -> None:
    long_gga = s("GNGGA,081530.25,3110.4567,N,12128.1234,E,1,12,0.85,12.3,M,8.5,M,,0000"
                 + ",extra" * 3)
    assert 82 < len(long_gga) + 2 <= 164
    b = decode(long_gga)
    assert b.skipped["long_sentence"] == 1
    assert len(b.rejects) == 0 and b.positions["sats"].tolist() == [12]
    payloads = [long_gga.encode()]
    strict = decode(*payloads, config=NmeaConfig(max_sentence_len=82))
    assert rejected(strict, payloads) == [("too_long", long_gga.encode())]
    huge = s("GNGGA,081530.25,3110.4567,N,12128.1234,E,1,12,0.85,12.3,M,8.5,M,," + "9" * 120)
    assert rejected(decode(huge), [huge.encode()]) == [("too_long", huge.encode())]


def test_non_ascii_bytes_reject_the_sentence() -> None:
    body = "GPGGA,081530.25,3110.4567,N,12128.1234,E,1,12,0.85,12.3,M,8.5,M,,\xe9"
    sentence = s(body).encode("latin-1")
    payloads = [sentence + b"\r\n" + RMC.encode()]
    b = decode(*payloads)
    assert rejected(b, payloads) == [("non_ascii", sentence)]
    assert b.sentences == 1


def test_message_without_any_sentence_is_rejected_whole() -> None:
    junk = b"\x00\xff\xfe binary junk \x81"
    payloads = [junk, b'{"lat": 31.2}', b"   \r\n"]
    b = decode(*payloads)
    assert rejected(b, payloads) == [("not_nmea", junk), ("not_nmea", b'{"lat": 31.2}')]
    assert b.rejects.msg.tolist() == [0, 1]
    assert b.skipped["empty"] == 1


def test_garbage_line_inside_a_message_is_rejected_alone() -> None:
    payloads = [("hello world\r\n" + RMC + "\r\n" + "  " + GGA + "\r\n").encode()]
    b = decode(*payloads)
    assert rejected(b, payloads) == [("not_nmea", b"hello world")]
    assert b.sentences == 2  # the blanks before the GGA are tolerated


def test_empty_payload_and_blank_lines_are_counted() -> None:
    b = decode(b"", RMC + "\r\n\r\n\n" + GGA + "\r\n")
    assert b.skipped["empty"] == 3
    assert len(b.rejects) == 0 and b.sentences == 2


@pytest.mark.parametrize("body", [
    "GNGGA,081530.25,31x0.4567,N,12128.1234,E,1,12,0.85,12.3,M,8.5,M,,",  # not a number
    "GNGGA,081530.25,3110.4567,Q,12128.1234,E,1,12,0.85,12.3,M,8.5,M,,",  # hemisphere
    "GNGGA,081530.25,9110.4567,N,12128.1234,E,1,12,0.85,12.3,M,8.5,M,,",  # latitude > 90
    "GNGGA,081530.25,3160.0000,N,12128.1234,E,1,12,0.85,12.3,M,8.5,M,,",  # 60 minutes
    "GNGGA,081530.25,3110.4567,N,18128.1234,E,1,12,0.85,12.3,M,8.5,M,,",  # longitude > 180
    "GNGGA,251530.25,3110.4567,N,12128.1234,E,1,12,0.85,12.3,M,8.5,M,,",  # hour 25
    "GNGGA,08153.25,3110.4567,N,12128.1234,E,1,12,0.85,12.3,M,8.5,M,,",  # hhmmss too short
    "GNGGA,081530.25,3110.4567,N,12128.1234,E,1,1.5,0.85,12.3,M,8.5,M,,",  # sats not integer
    "GNGGA,081530.25,3110.4567,N,12128.1234,E,1,12,0.85,1.2.3,M,8.5,M,,",  # two dots
    "GNRMC,081530.25,A,3110.4567,N,12128.1234,E,10.5,87.25,310224,,,A",  # 31 February
    "GNGGA,081530.2500000000000000000000,3110.4567,N,12128.1234,E,1,12,0.85,12.3,M,,M,,",
    "GNGGA,081530.25,3110.4567000000000000000000000,N,12128.1234,E,1,12,0.85,12.3,M,,M,,",
])
def test_bad_field_rejects_the_sentence(body: str) -> None:
    sentence = s(body)
    payloads = [(sentence + "\r\n").encode()]
    b = decode(*payloads)
    assert rejected(b, payloads) == [("bad_field", sentence.encode())]
    assert len(b.positions["time"]) == 0


def test_too_few_fields_is_truncated() -> None:
    short = s("GPGGA,081530.25,3110.4567,N")
    assert rejected(decode(short), [short.encode()]) == [("truncated", short.encode())]


def test_gga_only_epochs_roll_over_midnight_from_the_previous_date() -> None:
    state = NmeaState()
    day = dt.datetime(2024, 2, 29, tzinfo=dt.UTC)  # a leap day
    first = decode(s("GPRMC,235958.00,A,3110.4567,N,12128.1234,E,0.0,,290224,,,A"),
                   state=state, received=[us(day) + 86_398_500_000])
    assert first.positions["time"].tolist() == [us(day) + 86_398_000_000]
    later = decode(s("GPGGA,235959.00,3110.4567,N,12128.1234,E,1,08,1.0,5.0,M,,M,,"),
                   s("GPGGA,000000.50,3110.4567,N,12128.1234,E,1,08,1.0,5.0,M,,M,,"),
                   s("GPGGA,000001.00,3110.4567,N,12128.1234,E,1,08,1.0,5.0,M,,M,,"),
                   state=state, received=[us(day) + 86_401_000_000] * 3)
    p = later.positions
    assert p["time"].tolist() == [us(day) + 86_399_000_000, us(day) + 86_400_500_000,
                                  us(day) + 86_401_000_000]
    assert p["date_source"].tolist() == [DateSource.PREVIOUS] * 3
    assert p["flags"].tolist() == [0, 0, 0]
    # The chain continues in the next batch, twelve hours later, without a new RMC.
    noon = decode(s("GPGGA,120001.00,3110.4567,N,12128.1234,E,1,08,1.0,5.0,M,,M,,"),
                  state=state, received=[us(day) + 86_400_000_000 + 43_201_000_000])
    assert noon.positions["time"].tolist() == [us(day) + 86_400_000_000 + 43_201_000_000]


def test_rollover_inside_one_batch() -> None:
    day = dt.datetime(2024, 12, 31, tzinfo=dt.UTC)
    b = decode(s("GPRMC,235959.50,A,3110.4567,N,12128.1234,E,0.0,,311224,,,A") + "\r\n"
               + s("GPGGA,000000.50,3110.4567,N,12128.1234,E,1,08,1.0,5.0,M,,M,,"),
               received=[us(day) + 86_401_000_000])
    assert b.positions["time"].tolist() == [us(day) + 86_399_500_000, us(day) + 86_400_500_000]
    assert b.positions["date_source"].tolist() == [DateSource.RMC, DateSource.PREVIOUS]


def test_date_from_receive_time_picks_the_nearest_day() -> None:
    state = NmeaState()
    mar2 = us(dt.datetime(2024, 3, 2, tzinfo=dt.UTC))
    gga = s("GPGGA,235958.00,3110.4567,N,12128.1234,E,1,08,1.0,5.0,M,,M,,")
    b = decode(gga, state=state, received=[mar2 + 3_000_000])  # just after midnight
    assert b.positions["time"].tolist() == [mar2 - 2_000_000]
    assert b.positions["date_source"].tolist() == [DateSource.RECEIVE]
    assert b.positions["flags"].tolist() == [FixFlag.DATE_FROM_RECEIVE]
    early = s("GPGGA,000001.00,3110.4567,N,12128.1234,E,1,08,1.0,5.0,M,,M,,")
    b2 = decode(early, state=state, received=[mar2 - 1_000_000])  # just before midnight
    assert b2.positions["time"].tolist() == [mar2 + 1_000_000]
    assert b2.positions["date_source"].tolist() == [DateSource.RECEIVE]  # never remembered


def test_epoch_split_across_two_batches_gives_two_rows_of_the_same_time() -> None:
    state = NmeaState()
    one = decode(RMC + "\r\n", state=state)
    two = decode(s("GNGSV,1,1,01,05,40,100,30") + "\r\n" + GGA + "\r\n"
                 + s("GNGSA,A,3,01,02,03,04,,,,,,,,,1.9,0.85,1.6") + "\r\n", state=state)
    assert one.positions["time"].tolist() == two.positions["time"].tolist() == [us(T0)]
    assert np.isnan(one.positions["hdop"][0])
    assert (two.positions["hdop"][0], two.positions["pdop"][0]) == (0.85, 1.9)
    assert two.positions["date_source"].tolist() == [DateSource.PREVIOUS]
    assert two.skipped["no_epoch"] == 1  # the GSV came before any time in batch two


def test_interleaved_devices_keep_their_epochs_apart() -> None:
    rmc1 = s("GBRMC,081531.00,A,3000.0000,S,01000.0000,W,1.0,180.00,010324,,,A,V")
    gga1 = s("GBGGA,081531.00,3000.0000,S,01000.0000,W,4,20,0.5,100.0,M,,M,,")
    gga2 = s("BDGGA,081530.25,0100.0000,N,00100.0000,E,2,05,2.0,-3.5,M,,M,,")
    b = decode(RMC, rmc1, GGA, gga2, gga1, device=[0, 1, 0, 2, 1])
    p = b.positions
    assert p["device"].tolist() == [0, 1, 2]
    assert p["msg"].tolist() == [0, 1, 3]
    assert p["lat"].tolist() == pytest.approx([LAT, -30.0, 1.0], abs=1e-12)
    assert p["fix_quality"].tolist() == [1, 4, 2]
    assert p["course_deg"][:2].tolist() == [87.25, 180.0]
    assert p["alt_m"].tolist() == [12.3, 100.0, -3.5]
    assert p["date_source"].tolist() == [DateSource.RMC, DateSource.RMC, DateSource.RECEIVE]


def test_a_new_time_closes_the_epoch_and_gsa_joins_the_open_one() -> None:
    t2 = s("GNRMC,081531.25,A,3110.4567,N,12128.1234,E,10.5,87.25,010324,,,A,V")
    b = decode("\r\n".join([RMC, s("GNGSA,A,3,01,02,03,,,,,,,,,,2.0,1.0,1.7"),
                            t2, s("GNGSA,A,3,01,02,03,,,,,,,,,,3.0,1.5,2.6")]))
    p = b.positions
    assert p["time"].tolist() == [us(T0), us(T0) + 1_000_000]
    assert p["pdop"].tolist() == [2.0, 3.0]
    assert p["hdop"].tolist() == [1.0, 1.5]  # no GGA/GNS: HDOP from GSA
    assert p["vdop"].tolist() == [1.7, 2.6]


def test_gsv_in_view_is_the_maximum_over_signal_groups_and_cn0_the_mean() -> None:
    b = decode("\r\n".join([
        GGA,
        s("GPGSV,2,1,05,01,40,083,46,02,17,308,41,12,07,344,,14,22,228,45,1"),
        s("GPGSV,2,2,05,15,10,100,40,1"),
        s("GPGSV,1,1,02,03,05,010,,04,06,020,,0"),
        s("GBGSV,1,1,03,201,49,147,44,202,23,250,35,204,35,123,,1"),
        s("BDGSV,1,1,01,205,10,100,31"),
        s("GLGSV,1,1,01,65,40,200,42,3"),
        s("GAGSV,1,1,00,7"),
    ]))
    p = b.positions
    assert p["sv_gps"][0] == 5 and p["cn0_gps_dbhz"][0] == pytest.approx((46 + 41 + 45 + 40) / 4)
    assert p["sv_bds"][0] == 3 and p["cn0_bds_dbhz"][0] == pytest.approx((44 + 35 + 31) / 3)
    assert p["sv_glo"][0] == 1 and p["cn0_glo_dbhz"][0] == 42
    assert p["sv_gal"][0] == 0 and np.isnan(p["cn0_gal_dbhz"][0])
    assert p["sv_qzss"][0] == -1 and np.isnan(p["cn0_qzss_dbhz"][0])


def test_gn_gsv_uses_the_nmea_411_system_id() -> None:
    b = decode(GGA + "\r\n" + s("GNGSV,1,1,02,05,40,100,30,07,50,200,40,3") + "\r\n"
               + s("GNGSV,1,1,01,05,40,100,30") + "\r\n")
    p = b.positions
    assert p["sv_gal"][0] == 2 and p["cn0_gal_dbhz"][0] == 35
    assert all(p[f"sv_{c}"][0] == -1 for c in ("gps", "bds", "glo", "qzss"))


@pytest.mark.parametrize(("mode", "quality"), [
    ("ANDR", 4), ("AAD", 2), ("NN", 0), ("F", 5), ("EN", 6), ("P", 3), ("S", 8), ("M", 7),
    ("A", 1), ("AANNNN", 1),
])
def test_gns_mode_letters_map_to_a_gga_quality(mode: str, quality: int) -> None:
    gns = s(f"GNGNS,081530.25,3110.4567,N,12128.1234,E,{mode},14,0.9,12.3,8.5,,,V")
    p = decode(gns).positions
    assert p["fix_quality"].tolist() == [quality]
    assert (p["sats"][0], p["hdop"][0], p["alt_m"][0]) == (14, 0.9, 12.3)
    assert bool(p["flags"][0] & FixFlag.NO_FIX) == (quality == 0)


def test_vtg_gives_speed_and_course_when_there_is_no_rmc() -> None:
    p = decode(GGA + "\r\n" + s("GNVTG,45.5,T,,M,3.0,N,5.6,K,A")).positions
    assert p["speed_mps"][0] == pytest.approx(3.0 * KNOT, rel=1e-15)
    assert (p["course_deg"][0], p["mode"][0]) == (45.5, ord("A"))
    kmh = decode(GGA + "\r\n" + s("GNVTG,,T,,M,,N,36.0,K,A")).positions
    assert kmh["speed_mps"][0] == pytest.approx(10.0, rel=1e-15)
    # RMC wins over VTG.
    both = decode(RMC + "\r\n" + s("GNVTG,45.5,T,,M,3.0,N,5.6,K,A")).positions
    assert both["course_deg"][0] == 87.25


def test_gll_and_zda_make_a_dated_epoch() -> None:
    p = decode(s("GNGLL,3110.4567,N,12128.1234,E,081530.25,A,D") + "\r\n"
               + s("GNZDA,081530.25,01,03,2024,00,00")).positions
    assert p["time"].tolist() == [us(T0)]
    assert p["lat"][0] == pytest.approx(LAT, abs=1e-12)
    assert (p["status"][0], p["mode"][0]) == (1, ord("D"))
    assert p["date_source"][0] == DateSource.ZDA


@pytest.mark.parametrize("talker", ["GP", "BD", "GB", "GN", "GL", "GA", "GQ"])
def test_every_supported_talker_is_decoded(talker: str) -> None:
    p = decode(s(f"{talker}RMC,081530.25,A,3110.4567,N,12128.1234,E,10.5,87.25,010324,,,A,V"))
    assert p.positions["lat"][0] == pytest.approx(LAT, abs=1e-12)


def test_rejects_are_ordered_and_point_at_exact_bytes() -> None:
    bad1 = RMC[:-2] + "00"
    bad2 = "$GPGGA,1"
    payloads = [b"junk", ("\r\n".join([GGA, bad1, bad2])).encode(), RMC.encode()]
    b = decode(*payloads)
    assert b.rejects.msg.tolist() == [0, 1, 1]
    assert rejected(b, payloads) == [("not_nmea", b"junk"), ("bad_checksum", bad1.encode()),
                                     ("truncated", bad2.encode())]
    assert b.rejects.reason_names() == ["not_nmea", "bad_checksum", "truncated"]
    assert b.rejects.start.dtype == b.rejects.stop.dtype == np.int64


def test_reject_reason_names_are_stable() -> None:
    assert REJECT_REASONS == NmeaRejects.NAMES == (
        "bad_checksum", "missing_checksum", "truncated", "too_long", "non_ascii", "bad_field",
        "not_nmea", "too_many_sentences")


def test_decimals_are_converted_exactly() -> None:
    b = decode(s("GNRMC,081530.123456,A,3110.4567891,S,12128.1234567,W,0.5,,010324,,,A"))
    p = b.positions
    assert p["time"][0] == us(T0.replace(microsecond=123_456))
    assert p["lat"][0] == -float(31 + Fraction("10.4567891") / 60)
    assert p["lon"][0] == -float(121 + Fraction("28.1234567") / 60)
    assert p["speed_mps"][0] == float(Fraction("0.5") * 1852 / 3600)


def test_state_grows_for_new_devices_and_keeps_their_dates() -> None:
    state = NmeaState()
    decode(RMC, device=[4999], state=state)
    assert len(state) >= 5000
    assert state.date_days[4999] == (dt.date(2024, 3, 1) - dt.date(1970, 1, 1)).days
    assert state.date_days[:4999].max() == -1
    p = decode(GGA, device=[4999], state=state).positions
    assert p["date_source"].tolist() == [DateSource.PREVIOUS]


def test_epoch_without_any_time_never_becomes_a_row() -> None:
    b = decode(s("GNGSA,A,3,01,02,03,,,,,,,,,,2.0,1.0,1.7") + "\r\n"
               + s("GNVTG,45.5,T,,M,3.0,N,5.6,K,A") + "\r\n"
               + s("GPGGA,,,,,,0,00,,,M,,M,,") + "\r\n")
    assert len(b.positions["time"]) == 0
    assert b.skipped["no_epoch"] == 3
    assert b.sentences == 3


def test_arrays_must_match_the_payloads() -> None:
    with pytest.raises(ValueError, match="one entry per payload"):
        decode_batch([RMC.encode()], np.zeros(2, np.int32), np.zeros(2, np.int64), NmeaState())
