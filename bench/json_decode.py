"""JSON decode throughput: beiflow's RFID and sensor decoders against a per-message
``json.loads`` + ``jsonschema`` validation, same run, same data.

Sensor messages carry one sample of 5 metrics; RFID messages a batch of 20 reads
(SGTIN-96 EPCs of 500 products, RFC 3339 and epoch-millisecond times), from 1000 devices. beiflow
decodes batches of 2,000 messages into columns (SGTIN fields included); the baseline
parses each message with ``json.loads`` and validates it with a Draft 2020-12 validator
with ``date-time`` format checking, producing no columns at all. Three runs; medians.

    python bench/json_decode.py [--messages N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from jsonschema import Draft202012Validator

from beiflow.ingest.rfid import SGTIN_PARTITIONS, decode_rfid
from beiflow.ingest.sensor import MetricTable, decode_sensor

DEVICES = 1000
BATCH = 2000
READS = 20
PRODUCTS = 500
METRICS = ("voltage_v", "current_a", "temp_c", "humidity_pct", "door_open")
BASELINE_MAX = 5000  # the validator is timed on at most this many messages
SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
RECEIVED_US = int((T0 + timedelta(minutes=30)).timestamp()) * 1_000_000


def _time(t: datetime, i: int) -> str | int:
    if i % 2:
        return int(t.timestamp() * 1000)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_sensor(n: int, *, seed: int = 7) -> list[bytes]:
    """``n`` single-sample sensor payloads of 5 metrics each."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = T0 + timedelta(seconds=i // DEVICES, milliseconds=int(rng.integers(0, 1000)))
        values = {"voltage_v": round(rng.normal(230, 2), 2),
                  "current_a": round(rng.uniform(0, 40), 3),
                  "temp_c": round(rng.normal(4, 1), 2),
                  "humidity_pct": round(rng.uniform(30, 90), 1),
                  "door_open": int(rng.integers(0, 2))}
        out.append(json.dumps({"time": _time(t, i), "values": values}).encode())
    return out


def make_rfid(n: int, *, seed: int = 11) -> list[bytes]:
    """``n`` reader payloads of ``READS`` SGTIN-96 reads each: serialised items of
    ``PRODUCTS`` products (GTINs) from three companies, random serials."""
    rng = np.random.default_rng(seed)
    companies = ((5, 614141), (6, 37000), (3, 123456789))  # (partition, company prefix)
    products = []
    for j in range(PRODUCTS):
        part, prefix = companies[j % len(companies)]
        _, _, ir_bits, ir_digits = SGTIN_PARTITIONS[part]
        item = int(rng.integers(0, 10**ir_digits))
        products.append(0x30 << 88 | 3 << 85 | part << 82 | prefix << (38 + ir_bits) | item << 38)
    out = []
    for i in range(n):
        t = T0 + timedelta(seconds=i // DEVICES)
        reads = []
        for k in range(READS):
            epc = products[int(rng.integers(0, PRODUCTS))] | int(rng.integers(0, 2**38))
            reads.append({"epc": f"{epc:024X}", "antenna": k % 4,
                          "rssi_dbm": round(rng.uniform(-80, -30), 1),
                          "time": _time(t + timedelta(milliseconds=25 * k), k),
                          "phase_deg": round(rng.uniform(0, 360), 1), "read_count": 1 + k % 3})
        out.append(json.dumps({"reads": reads, "reader_time": _time(t, i)}).encode())
    return out


def _ours(decode: Callable[[list[bytes], np.ndarray, np.ndarray], int],
          messages: list[bytes]) -> tuple[float, float]:
    device = np.arange(len(messages), dtype=np.int32) % DEVICES
    received = np.full(len(messages), RECEIVED_US, dtype=np.int64)
    rows = 0
    t0 = time.perf_counter()
    for s in range(0, len(messages), BATCH):
        rows += decode(messages[s:s + BATCH], device[s:s + BATCH], received[s:s + BATCH])
    elapsed = time.perf_counter() - t0
    return len(messages) / elapsed, rows / elapsed


def _baseline(validator: Draft202012Validator, messages: list[bytes],
              rows_per_message: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    for payload in messages:
        doc: Any = json.loads(payload)
        if not validator.is_valid(doc):
            raise RuntimeError("the baseline rejected a valid message")
    elapsed = time.perf_counter() - t0
    return len(messages) / elapsed, len(messages) * rows_per_message / elapsed


def run(messages: int) -> dict[str, float]:
    """Median messages/s and rows/s of beiflow and the baseline per stream, and ratios."""
    table = MetricTable()

    def sensor(p: list[bytes], d: np.ndarray, r: np.ndarray) -> int:
        out = decode_sensor(p, d, r, table)
        if len(out.rejects):
            raise RuntimeError(f"sensor rejects: {out.rejects.detail[:3]}")
        return int(out.readings["time"].size)

    def rfid(p: list[bytes], d: np.ndarray, r: np.ndarray) -> int:
        out = decode_rfid(p, d, r)
        if len(out.rejects):
            raise RuntimeError(f"rfid rejects: {out.rejects.detail[:3]}")
        return int(out.reads["time"].size)

    results: dict[str, float] = {}
    for name, make, decode, rows in (("sensor", make_sensor, sensor, len(METRICS)),
                                     ("rfid", make_rfid, rfid, READS)):
        data = make(messages)
        schema = json.loads((SCHEMAS / f"{name}.json").read_text())
        validator = Draft202012Validator(schema,
                                         format_checker=Draft202012Validator.FORMAT_CHECKER)
        _ours(decode, data[:BATCH])  # warm-up
        ours = [_ours(decode, data) for _ in range(3)]
        base = [_baseline(validator, data[:BASELINE_MAX], rows) for _ in range(3)]
        msgs, row_rate = (statistics.median(x) for x in zip(*ours, strict=True))
        bmsgs, brows = (statistics.median(x) for x in zip(*base, strict=True))
        results |= {f"{name}_msgs_per_s": msgs, f"{name}_rows_per_s": row_rate,
                    f"{name}_baseline_msgs_per_s": bmsgs, f"{name}_baseline_rows_per_s": brows,
                    f"{name}_ratio": msgs / bmsgs}
    return results


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000,
                        help="messages per stream to decode (default 50000)")
    args = parser.parse_args()
    r = run(args.messages)
    print(f"messages: {args.messages} per stream in batches of {BATCH} from {DEVICES} devices "
          f"(baseline on {min(args.messages, BASELINE_MAX)}); medians of 3 runs")
    for name, what in (("sensor", f"{len(METRICS)} metrics"), ("rfid", f"{READS} reads")):
        print(f"{name} ({what} per message)")
        print(f"  beiflow            {r[f'{name}_msgs_per_s']:12,.0f} msg/s "
              f"{r[f'{name}_rows_per_s']:14,.0f} rows/s")
        print(f"  json + jsonschema  {r[f'{name}_baseline_msgs_per_s']:12,.0f} msg/s "
              f"{r[f'{name}_baseline_rows_per_s']:14,.0f} rows/s")
        print(f"  ratio              {r[f'{name}_ratio']:12.1f}x")


if __name__ == "__main__":
    main()
