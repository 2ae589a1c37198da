"""NMEA decode throughput: beiflow's vectorised decoder against pynmea2, same run, same data.

Each message is one fix (GGA + RMC, GN/BD/GB talkers, 1000 devices), decoded in batches
of 2,000 as the collector does. The baseline parses each sentence with pynmea2 and reads
the typed fields a fix needs (lat, lon, time, date, altitude, satellites, HDOP, quality,
speed, course, status). Three runs; medians reported.

    python bench/nmea_decode.py [--messages N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from functools import reduce

import numpy as np
import pynmea2

from beiflow.ingest.nmea import NmeaState, decode_batch

DEVICES = 1000
BATCH = 2000
BASELINE_MAX = 30_000  # pynmea2 is timed on at most this many messages (a rate is a rate)
_TALKERS = ("GN", "BD", "GB")


def _sentence(body: str) -> str:
    return f"${body}*{reduce(lambda a, b: a ^ b, body.encode(), 0):02X}\r\n"


def _ddmm(value: float, width: int) -> str:
    v = abs(value)
    deg = int(v)
    return f"{deg:0{width}d}{(v - deg) * 60:08.5f}"


def make_messages(n: int, *, seed: int = 7) -> list[bytes]:
    """``n`` GGA+RMC payloads, round-robin over ``DEVICES`` devices, one second apart."""
    rng = np.random.default_rng(seed)
    lat0 = rng.uniform(20.0, 45.0, DEVICES)
    lon0 = rng.uniform(100.0, 125.0, DEVICES)
    start = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    out = []
    for i in range(n):
        d, k = i % DEVICES, i // DEVICES
        t = start + timedelta(seconds=k, milliseconds=int(rng.integers(0, 10)) * 100)
        hms = f"{t:%H%M%S}.{t.microsecond // 10_000:02d}"
        lat = lat0[d] + k * 1e-5
        lon = lon0[d] + k * 1e-5
        la, lo = _ddmm(lat, 2), _ddmm(lon, 3)
        talker = _TALKERS[d % 3]
        speed, course = rng.uniform(0, 30), rng.uniform(0, 360)
        gga = _sentence(f"{talker}GGA,{hms},{la},N,{lo},E,1,{rng.integers(4, 24):02d},"
                        f"{rng.uniform(0.5, 2.5):.2f},{rng.uniform(-10, 900):.1f},M,"
                        f"{rng.uniform(-30, 30):.1f},M,,")
        rmc = _sentence(f"{talker}RMC,{hms},A,{la},N,{lo},E,{speed:.3f},{course:.2f},"
                        f"{t:%d%m%y},,,A,V")
        out.append((rmc + gga).encode())
    return out


def _beiflow(messages: list[bytes]) -> float:
    state = NmeaState()
    device = np.arange(len(messages), dtype=np.int32) % DEVICES
    received = np.full(len(messages), int(datetime(2024, 3, 1, 8, 30, tzinfo=UTC).timestamp()
                                          * 1e6), dtype=np.int64)
    rows = 0
    t0 = time.perf_counter()
    for s in range(0, len(messages), BATCH):
        out = decode_batch(messages[s:s + BATCH], device[s:s + BATCH],
                           received[s:s + BATCH], state)
        rows += out.positions["time"].size
    elapsed = time.perf_counter() - t0
    if rows != len(messages):
        raise RuntimeError(f"beiflow decoded {rows} fixes from {len(messages)} messages")
    return len(messages) / elapsed


def _pynmea2(messages: list[bytes]) -> float:
    t0 = time.perf_counter()
    for payload in messages:
        fix: dict[str, object] = {}
        for line in payload.decode("ascii").splitlines():
            msg = pynmea2.parse(line, check=True)
            fix["lat"], fix["lon"], fix["time"] = msg.latitude, msg.longitude, msg.timestamp
            if msg.sentence_type == "GGA":
                fix["alt_m"] = float(msg.altitude)
                fix["sats"] = int(msg.num_sats)
                fix["hdop"] = float(msg.horizontal_dil)
                fix["quality"] = int(msg.gps_qual)
            else:
                fix["date"] = msg.datestamp
                fix["speed_mps"] = float(msg.spd_over_grnd) * 1852 / 3600
                fix["course_deg"] = float(msg.true_course)
                fix["status"] = msg.status
    return len(messages) / (time.perf_counter() - t0)


def run(messages: int) -> dict[str, float]:
    """Median fixes/s of beiflow and pynmea2 over three runs, and their ratio."""
    data = make_messages(messages)
    baseline = data[:BASELINE_MAX]
    _beiflow(data[:BATCH * 5])  # warm-up: first-call costs, allocator growth
    ours, theirs = [], []
    for _ in range(3):
        ours.append(_beiflow(data))
        theirs.append(_pynmea2(baseline))
    b, p = statistics.median(ours), statistics.median(theirs)
    return {"beiflow_fixes_per_s": b, "pynmea2_fixes_per_s": p, "ratio": b / p}


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000,
                        help="messages (fixes) to decode (default 200000)")
    args = parser.parse_args()
    r = run(args.messages)
    print(f"messages: {args.messages} in batches of {BATCH} from {DEVICES} devices "
          f"(pynmea2 on {min(args.messages, BASELINE_MAX)}); medians of 3 runs")
    print(f"beiflow decode_batch: {r['beiflow_fixes_per_s']:12,.0f} fixes/s")
    print(f"pynmea2 typed fields: {r['pynmea2_fixes_per_s']:12,.0f} fixes/s")
    print(f"ratio:                {r['ratio']:12.1f}x")


if __name__ == "__main__":
    main()
