"""`beiflow decode` output (write_decoded_fixes) and `beiflow replay` chunking (split_epochs)."""

from __future__ import annotations

import datetime as dt
import io
import json
from functools import reduce
from pathlib import Path

import numpy as np

from beiflow.ingest.nmea import NmeaState, decode_batch, split_epochs, write_decoded_fixes

DATA = Path(__file__).parent / "data" / "nmea"
KEYS = ["time", "lat", "lon", "alt_m", "speed_mps", "course_deg", "fix_quality", "sats", "hdop"]


def s(body: str) -> str:
    return f"${body}*{reduce(lambda a, b: a ^ b, body.encode(), 0):02X}"


def run(data: bytes, date: dt.date | None = None) -> tuple[list[dict[str, object]], list[str], int]:
    out, err = io.StringIO(), io.StringIO()
    n = write_decoded_fixes(data, out, err, date=date)
    fixes = [json.loads(line) for line in out.getvalue().splitlines()]
    return fixes, err.getvalue().splitlines(), n


def test_one_json_line_per_epoch_with_exact_keys_in_order() -> None:
    fixes, problems, n = run((DATA / "gpsd_beidou_gb.log").read_bytes())
    assert (problems, n) == ([], 0)
    assert [list(f) for f in fixes] == [KEYS] * 3
    assert fixes[0] == {"time": "2015-03-02T05:32:31.438Z", "lat": None, "lon": None,
                        "alt_m": None, "speed_mps": None, "course_deg": None, "fix_quality": 0,
                        "sats": 0, "hdop": None}
    second = fixes[1]
    assert second["time"] == "2015-03-02T05:32:32.438Z"
    assert abs(second["lat"] - (31 + 14.8789 / 60)) < 1e-12
    assert abs(second["lon"] - (121 + 35.2442 / 60)) < 1e-12
    assert (second["alt_m"], second["course_deg"], second["fix_quality"], second["sats"],
            second["hdop"]) == (153.8, 167.42, 1, 6, 1.2)
    assert abs(second["speed_mps"] - 0.26 * 1852 / 3600) < 1e-15


def test_problems_are_human_lines_with_line_numbers() -> None:
    good = s("GNRMC,081530.25,A,3110.4567,N,12128.1234,E,10.5,87.25,010324,,,A,V")
    bad = good[:-2] + "00"
    data = (f"# a comment\r\n{good}\r\n{bad}\r\nnot nmea at all\r\n$GPGGA,0815\r\n"
            "$GPRMC,08").encode()
    fixes, problems, n = run(data)
    assert n == 4
    # A terminated line without '*' lacks its checksum; text cut off at the end is truncated.
    assert problems == [f"line 3: bad_checksum: {bad}", "line 4: not_nmea: not nmea at all",
                        "line 5: missing_checksum: $GPGGA,0815", "line 6: truncated: $GPRMC,08"]
    assert [f["time"] for f in fixes] == ["2024-03-01T08:15:30.250Z"]


def test_gga_only_log_needs_a_date_and_never_uses_the_clock() -> None:
    data = "\n".join([
        s("GPGGA,235959.00,3110.4567,N,12128.1234,E,1,08,1.0,5.0,M,,M,,"),
        s("GPGGA,000000.00,3110.4567,N,12128.1234,E,1,08,1.0,5.0,M,,M,,"),
    ]).encode()
    undated, _, _ = run(data)
    assert [f["time"] for f in undated] == [None, None]
    assert undated[0]["sats"] == 8
    dated, _, _ = run(data, date=dt.date(2024, 2, 28))
    assert [f["time"] for f in dated] == ["2024-02-28T23:59:59.000Z", "2024-02-29T00:00:00.000Z"]


def test_a_date_in_the_log_beats_the_given_one() -> None:
    rmc = s("GPRMC,120000.5,A,3110.4567,N,12128.1234,E,0.0,,150624,,,A")
    fixes, _, _ = run(rmc.encode(), date=dt.date(2000, 1, 1))
    assert fixes[0]["time"] == "2024-06-15T12:00:00.500Z"


def test_empty_input_prints_nothing() -> None:
    assert run(b"") == ([], [], 0)


def test_split_epochs_cuts_before_each_epochs_first_time_bearing_line() -> None:
    data = (DATA / "ublox_zed_f9p_nmea411.log").read_bytes()
    chunks = split_epochs(data)
    assert len(chunks) == 3
    assert chunks[0].startswith(b"$GNGSA,A,3,26,35")  # comments dropped, leading GSV kept
    assert chunks[1].startswith(b"$GNRMC,183247.00")
    assert chunks[2].startswith(b"$GNRMC,183248.00")
    assert all(c.endswith(b"\r\n") for c in chunks)
    without_comments = b"".join(line for line in data.splitlines(keepends=True)
                                if not line.startswith(b"#"))
    assert b"".join(chunks) == without_comments


def test_chunks_decode_like_the_whole_log() -> None:
    data = (DATA / "gpsd_neo_m8n.log").read_bytes()
    chunks = split_epochs(data)
    assert len(chunks) == 3
    received = 1_426_699_170_000_000
    whole = decode_batch([b"".join(chunks)], np.zeros(1, np.int32), np.array([received]),
                         NmeaState())
    parts = decode_batch(chunks, np.zeros(len(chunks), np.int32),
                         np.full(len(chunks), received), NmeaState())
    assert parts.positions["msg"].tolist() == [0, 1, 2]
    for name, col in whole.positions.items():
        if name != "msg":
            np.testing.assert_array_equal(parts.positions[name], col, err_msg=name)
    assert parts.skipped == whole.skipped


def test_split_epochs_without_epochs() -> None:
    assert split_epochs(b"") == []
    gsv = (s("GPGSV,1,1,01,05,40,100,30") + "\n").encode()
    assert split_epochs(gsv) == [gsv]
    one = (s("GPGGA,120000,,,,,0,00,,,M,,M,,") + "\n" + s("GPGGA,120001,,,,,0,00,,,M,,M,,")
           + "\n").encode()
    assert split_epochs(one) == [line + b"\n" for line in one.splitlines()]


def test_long_logs_decode_in_blocks_like_one_block() -> None:
    from beiflow.ingest.nmea import _decode_log, _file_lines

    gga = [s(f"GPGGA,{t},3110.4567,N,12128.1234,E,1,08,1.0,5.0,M,,M,,")
           for t in ("225959.00", "235959.00", "000001.00")]
    logs = [(DATA / name).read_bytes() for name in sorted(p.name for p in DATA.glob("*.*"))
            if not name.endswith(".md")]
    logs.append(("\r\n".join([*gga, "garbage", gga[0][:20]]) + "\r\n").encode())

    def decoded(data: bytes, block: int) -> tuple[dict[str, np.ndarray], list[tuple[str, int]],
                                                   list[int]]:
        clean, line_starts = _file_lines(data)
        parts = list(_decode_log(clean, line_starts, 19_800, block=block))
        rows = {k: np.concatenate([p.positions[k] for p in parts]) for k in parts[0].positions}
        problems = [(name, int(start)) for p in parts
                    for name, start in zip(p.rejects.reason_names(), p.rejects.start,
                                           strict=True)]
        return rows, problems, [int(x) for p in parts for x in p.epoch_first]

    f9p = (DATA / "ublox_zed_f9p_nmea411.log").read_bytes()
    assert len(list(_decode_log(*_file_lines(f9p), block=3000))) > 1  # really in blocks
    for data in logs:
        whole = decoded(data, 10**9)
        for block in (3000, 5000):  # each larger than any epoch of these logs
            rows, problems, firsts = decoded(data, block)
            assert (problems, firsts) == whole[1:]
            for name, col in whole[0].items():
                np.testing.assert_array_equal(rows[name], col, err_msg=name)
