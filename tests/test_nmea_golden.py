"""Golden tests on real receiver output, and pynmea2 as a reference for field values.

Fixtures and their sources: tests/data/nmea/README.md. Expected values are derived here
independently of beiflow: ddmm.mmmm worked by hand with exact fractions, counts and C/N0
values read off the log lines, and pynmea2's typed fields.
"""

from __future__ import annotations

import datetime as dt
import random
from fractions import Fraction
from functools import reduce
from pathlib import Path

import numpy as np
import pynmea2
import pytest

from beiflow.ingest.nmea import NmeaBatch, NmeaState, decode_batch, split_epochs
from beiflow.schemas.columns import DateSource, FixFlag

DATA = Path(__file__).parent / "data" / "nmea"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
KNOT = Fraction(1852, 3600)


def us(t: dt.datetime) -> int:
    return (t - EPOCH) // dt.timedelta(microseconds=1)


def deg(ddmm: str, hemi: str) -> float:
    """Hand-worked (d)ddmm.mmmm: degrees + minutes / 60, exactly, then rounded once."""
    head, _, _ = ddmm.partition(".")
    d = int(ddmm[: len(head) - 2])
    minutes = Fraction(ddmm[len(head) - 2:])
    value = d + minutes / 60
    return float(-value if hemi in "SW" else value)


def log_payloads(name: str) -> list[bytes]:
    """The fixture as `beiflow replay` publishes it: one message per epoch."""
    return split_epochs((DATA / name).read_bytes())


def decode_log(name: str, received: dt.datetime) -> NmeaBatch:
    payloads = log_payloads(name)
    return decode_batch(payloads, np.zeros(len(payloads), np.int32),
                        np.full(len(payloads), us(received), np.int64), NmeaState())


def row(b: NmeaBatch, t: dt.datetime) -> dict[str, object]:
    times = b.positions["time"].tolist()
    i = times.index(us(t))
    return {k: v[i].item() for k, v in b.positions.items()}


def test_sirf_trig_beidou_gb_talker() -> None:
    b = decode_log("gpsd_beidou_gb.log", dt.datetime(2015, 3, 2, 5, 33, tzinfo=dt.UTC))
    assert len(b.rejects) == 0
    assert b.skipped["proprietary"] == 3  # $PSRFEPE
    assert b.positions["time"].tolist() == [
        us(dt.datetime(2015, 3, 2, 5, 32, s, 438_000, tzinfo=dt.UTC)) for s in (31, 32, 33)]

    nofix = row(b, dt.datetime(2015, 3, 2, 5, 32, 31, 438_000, tzinfo=dt.UTC))
    assert nofix["flags"] == FixFlag.NO_FIX
    assert (nofix["fix_quality"], nofix["status"]) == (0, 0)
    assert np.isnan(nofix["lat"])
    # $GPGSV,6,..,21 and $GBGSV,2,..,05 of that epoch; SNRs as printed in the log.
    assert (nofix["sv_gps"], nofix["sv_bds"]) == (21, 5)
    gps_snr = [25, 24, 22, 49, 48, 22, 51, 24, 49, 42, 22, 22, 22, 34]
    assert nofix["cn0_gps_dbhz"] == pytest.approx(sum(gps_snr) / len(gps_snr))
    assert nofix["cn0_bds_dbhz"] == pytest.approx((44 + 35 + 42) / 3)

    fix = row(b, dt.datetime(2015, 3, 2, 5, 32, 32, 438_000, tzinfo=dt.UTC))
    assert fix["lat"] == deg("3114.8789", "N")
    assert fix["lon"] == deg("12135.2442", "E")
    assert (fix["alt_m"], fix["fix_quality"], fix["sats"], fix["hdop"]) == (153.8, 1, 6, 1.2)
    assert (fix["pdop"], fix["vdop"]) == (2.5, 2.2)
    assert fix["speed_mps"] == float(Fraction("0.26") * KNOT)
    assert fix["course_deg"] == 167.42
    assert (fix["status"], fix["mode"], fix["flags"]) == (1, ord("A"), 0)
    assert fix["date_source"] == DateSource.RMC
    assert (fix["sv_gps"], fix["sv_bds"], fix["sv_glo"]) == (21, 11, -1)
    gps_snr = [49, 51, 48, 50, 34, 43, 20, 26, 26, 24, 22, 24, 21, 23, 22]
    assert fix["cn0_gps_dbhz"] == pytest.approx(sum(gps_snr) / len(gps_snr))
    assert fix["cn0_bds_dbhz"] == pytest.approx((44 + 35 + 42) / 3)


def test_sirf_trig_beidou_bd_talker() -> None:
    b = decode_log("gpsd_beidou_bd.log", dt.datetime(2015, 2, 25, 7, 42, tzinfo=dt.UTC))
    assert len(b.rejects) == 0
    assert b.skipped["proprietary"] == 5
    assert len(b.positions["time"]) == 5
    first = row(b, dt.datetime(2015, 2, 25, 7, 41, 55, 799_000, tzinfo=dt.UTC))
    # $GNGGA with one field more than NMEA defines, still read.
    assert first["lat"] == deg("3114.8770", "N") and first["lon"] == deg("12135.2463", "E")
    assert (first["alt_m"], first["sats"], first["hdop"]) == (156.9, 5, 1.3)
    # $GPGSA/$BDGSA,...,5.1,1.3,4.9,3.3: PDOP, HDOP, VDOP, then a field we do not read.
    assert (first["pdop"], first["vdop"]) == (5.1, 4.9)
    assert (first["sv_gps"], first["sv_bds"]) == (20, 12)
    bds_snr = [35, 37, 42, 45]
    assert first["cn0_bds_dbhz"] == pytest.approx(sum(bds_snr) / 4)
    # The $GNRMC behind a leading blank still counts.
    blank = row(b, dt.datetime(2015, 2, 25, 7, 41, 57, 799_000, tzinfo=dt.UTC))
    assert blank["speed_mps"] == float(Fraction("0.32") * KNOT)
    assert blank["course_deg"] == 4.94 and blank["date_source"] == DateSource.RMC


def test_ublox_neo_m8n_gn_with_gps_and_glonass_gsv() -> None:
    received = dt.datetime(2015, 3, 18, 17, 19, 30, tzinfo=dt.UTC)
    b = decode_log("gpsd_neo_m8n.log", received)
    assert len(b.rejects) == 0
    assert b.skipped["no_epoch"] == 3  # the $GLGSV before the first time-bearing sentence
    p = b.positions
    assert p["time"].tolist() == [
        us(dt.datetime(2015, 3, 18, 17, 19, s, tzinfo=dt.UTC)) for s in (25, 26, 27)]
    # The lone $GNGLL of 17:19:25 has no date of its own: taken from the arrival time.
    assert p["date_source"].tolist() == [DateSource.RECEIVE, DateSource.RMC, DateSource.RMC]
    gll = row(b, dt.datetime(2015, 3, 18, 17, 19, 25, tzinfo=dt.UTC))
    assert gll["lat"] == deg("4404.14066", "N") and gll["lon"] == deg("12118.85481", "W")
    fix = row(b, dt.datetime(2015, 3, 18, 17, 19, 26, tzinfo=dt.UTC))
    assert fix["lat"] == deg("4404.14063", "N") and fix["lon"] == deg("12118.85478", "W")
    assert (fix["alt_m"], fix["sats"], fix["hdop"], fix["pdop"], fix["vdop"]) == (
        1147.2, 12, 0.91, 1.56, 1.27)
    assert fix["speed_mps"] == float(Fraction("0.117") * KNOT)
    assert np.isnan(fix["course_deg"])  # empty in both RMC and VTG
    assert (fix["sv_gps"], fix["sv_glo"], fix["sv_bds"]) == (13, 10, -1)
    gps_snr = [36, 24, 37, 16, 29, 30, 25, 22, 24, 31]
    glo_snr = [26, 26, 24, 25, 26, 19, 25, 29]
    assert fix["cn0_gps_dbhz"] == pytest.approx(sum(gps_snr) / len(gps_snr))
    assert fix["cn0_glo_dbhz"] == pytest.approx(sum(glo_snr) / len(glo_snr))


def test_ublox_zed_f9p_nmea_411_multi_constellation() -> None:
    b = decode_log("ublox_zed_f9p_nmea411.log", dt.datetime(2021, 2, 26, 18, 33, tzinfo=dt.UTC))
    assert len(b.rejects) == 0
    assert b.skipped == {"proprietary": 4, "unknown_type": 23, "long_sentence": 2,
                         "no_epoch": 14, "empty": 0, "missing_checksum": 0}
    assert b.sentences == 53
    p = b.positions
    assert p["time"].tolist() == [
        us(dt.datetime(2021, 2, 26, 18, 32, s, tzinfo=dt.UTC)) for s in (46, 47, 48)]
    assert p["date_source"].tolist() == [DateSource.ZDA, DateSource.RMC, DateSource.RMC]
    gll = row(b, dt.datetime(2021, 2, 26, 18, 32, 46, tzinfo=dt.UTC))
    assert gll["lat"] == deg("2938.52571", "N") and gll["lon"] == deg("08223.77912", "W")
    assert (gll["status"], gll["mode"], gll["fix_quality"]) == (1, ord("D"), -1)

    fix = row(b, dt.datetime(2021, 2, 26, 18, 32, 47, tzinfo=dt.UTC))
    assert fix["lat"] == deg("2938.52568", "N") and fix["lon"] == deg("08223.77905", "W")
    assert (fix["fix_quality"], fix["sats"], fix["hdop"], fix["alt_m"]) == (2, 12, 0.88, 26.6)
    assert (fix["pdop"], fix["vdop"]) == (2.24, 2.06)
    assert fix["speed_mps"] == float(Fraction("0.125") * KNOT)
    assert np.isnan(fix["course_deg"])
    assert (fix["status"], fix["mode"], fix["flags"]) == (1, ord("D"), 0)
    # GSV grouped by signal id: in view is the larger group, C/N0 the mean of what is printed.
    assert (fix["sv_gps"], fix["sv_glo"], fix["sv_gal"], fix["sv_bds"], fix["sv_qzss"]) == (
        9, 6, 5, 4, -1)
    for c, snr in (("gps", [21, 27, 26, 30, 17, 8, 31, 30, 30]), ("glo", [28, 10, 29]),
                   ("gal", [15, 16, 23, 30, 17]), ("bds", [17, 33, 27, 23])):
        assert fix[f"cn0_{c}_dbhz"] == pytest.approx(sum(snr) / len(snr)), c
    # The log ends inside the third epoch: it is still emitted with what arrived.
    last = row(b, dt.datetime(2021, 2, 26, 18, 32, 48, tzinfo=dt.UTC))
    assert (last["sv_gps"], last["sv_glo"], last["sv_gal"]) == (9, 2, -1)


def test_pynmea2_documented_sentences() -> None:
    data = (DATA / "pynmea2_types.nmea").read_bytes()
    b = decode_batch([data], np.zeros(1, np.int32),
                     np.array([us(dt.datetime(1994, 11, 20, tzinfo=dt.UTC))]), NmeaState())
    assert b.rejects.reason_names() == ["missing_checksum"]  # the ZDA pynmea2 reads unchecked
    rmc = row(b, dt.datetime(1994, 11, 19, 22, 54, 46, tzinfo=dt.UTC))
    assert rmc["lat"] == 49.274166666666666  # the values pynmea2's test asserts
    assert rmc["lon"] == -123.18533333333333
    gll = row(b, dt.datetime(1994, 11, 19, 22, 54, 44, tzinfo=dt.UTC))
    assert gll["date_source"] == DateSource.PREVIOUS and gll["hdop"] == 1.6


# -- pynmea2 as the reference -----------------------------------------------------------


def _sentence(body: str) -> str:
    return f"${body}*{reduce(lambda a, b: a ^ b, body.encode(), 0):02X}"


def _generated(n: int, seed: int = 11) -> list[str]:
    """RMC/GGA/GNS/GLL with varied precision, hemispheres and talkers (seeded)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        talker = rng.choice(["GP", "BD", "GB", "GN", "GL", "GA", "GQ"])
        t = f"{rng.randrange(24):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
        t += rng.choice(["", ".0", ".25", ".123", ".5"])
        md = rng.randrange(1, 8)  # decimals of minutes (pynmea2 needs at least one)
        lat_min = f"{rng.randrange(60 * 10**md) / 10**md:0{3 + md}.{md}f}"
        lon_min = f"{rng.randrange(60 * 10**md) / 10**md:0{3 + md}.{md}f}"
        lat = f"{rng.randrange(90):02d}{lat_min}"
        lon = f"{rng.randrange(180):03d}{lon_min}"
        ns, ew = rng.choice("NS"), rng.choice("EW")
        speed = f"{rng.uniform(0, 200):.{rng.randrange(4)}f}"
        course = f"{rng.uniform(0, 360):.{rng.randrange(1, 3)}f}"
        alt = f"{rng.uniform(-400, 9000):.{rng.randrange(1, 4)}f}"
        hdop = f"{rng.uniform(0.5, 30):.{rng.randrange(1, 3)}f}"
        sats = f"{rng.randrange(0, 40):02d}"
        date = f"{rng.randrange(1, 29):02d}{rng.randrange(1, 13):02d}{rng.randrange(60):02d}"
        kind = rng.choice(["RMC", "GGA", "GNS", "GLL"])
        if kind == "RMC":
            out.append(_sentence(f"{talker}RMC,{t},A,{lat},{ns},{lon},{ew},{speed},{course},"
                                 f"{date},,,A"))
        elif kind == "GGA":
            out.append(_sentence(f"{talker}GGA,{t},{lat},{ns},{lon},{ew},1,{sats},{hdop},"
                                 f"{alt},M,0.0,M,,"))
        elif kind == "GNS":
            out.append(_sentence(f"GNGNS,{t},{lat},{ns},{lon},{ew},AA,{sats},{hdop},{alt},"
                                 f"0.0,,"))
        else:
            out.append(_sentence(f"{talker}GLL,{lat},{ns},{lon},{ew},{t},A,A"))
    return out


def _corpus() -> list[str]:
    recorded = []
    for path in sorted(DATA.glob("*.*")):
        if path.suffix == ".md":
            continue
        for line in path.read_text().splitlines():
            line = line.strip()
            if line[3:6] in ("RMC", "GGA", "GNS", "GLL") and line.startswith("$"):
                msg = pynmea2.parse(line)
                if msg.timestamp is not None and msg.lat:
                    recorded.append(line)
    return recorded + _generated(400)


def _tod_us(t: dt.time) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond


def test_fields_match_pynmea2_on_recorded_and_generated_sentences() -> None:
    corpus = _corpus()
    assert len(corpus) > 430
    payloads = [(line + "\r\n").encode() for line in corpus]
    n = len(payloads)
    received = us(dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC))
    b = decode_batch(payloads, np.arange(n, dtype=np.int32), np.full(n, received, np.int64),
                     NmeaState())
    assert len(b.rejects) == 0
    p = b.positions
    assert p["msg"].tolist() == list(range(n))  # one row per sentence (one device each)
    for i, line in enumerate(corpus):
        msg = pynmea2.parse(line)
        assert p["lat"][i] == pytest.approx(msg.latitude, abs=1e-9), line
        assert p["lon"][i] == pytest.approx(msg.longitude, abs=1e-9), line
        assert p["time"][i] % 86_400_000_000 == _tod_us(msg.timestamp), line
        kind = line[3:6]
        if kind in ("GGA", "GNS"):
            assert p["alt_m"][i] == float(msg.altitude), line
            assert p["sats"][i] == int(msg.num_sats), line
            hdop = msg.horizontal_dil if kind == "GGA" else msg.hdop
            assert p["hdop"][i] == float(hdop), line
        if kind == "RMC":
            assert p["speed_mps"][i] == pytest.approx(float(msg.spd_over_grnd) * 1852 / 3600,
                                                      rel=1e-15, abs=1e-15), line
            if msg.true_course is None:
                assert np.isnan(p["course_deg"][i]), line
            else:
                assert p["course_deg"][i] == float(msg.true_course), line
            day = (msg.datestamp - dt.date(1970, 1, 1)).days
            assert p["time"][i] // 86_400_000_000 == day, line
