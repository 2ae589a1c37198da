"""Backlog drain for the sensor and RFID streams (the NMEA one is bench/backlog.py).

N queued messages wait in a persistent session; measured in one run, same broker and
database:
  limit     bare paho-mqtt subscriber, QoS 1, manual ack, doing nothing else
  beiflow   the full pipeline: decode, core, binary COPY + upsert, ack after commit
  baseline  paho auto-ack, json.loads plus a JSON Schema validator per message,
            executemany of every 1,000 rows from the message callback
Sensor messages carry 5 metrics, RFID messages 20 reads. Targets on 2 cores:
beiflow >= 0.7x the limit in messages/s and >= 10x the baseline.

    python bench/streams.py [--messages N] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import psycopg
from backlog import _connect, bench_database, drain_bare, drain_beiflow, queue_backlog

from beiflow.ingest.broker import PrivateBroker
from beiflow.ingest.config import load_config

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
EPCS = [f"30742{i:019X}" for i in range(500)]


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sensor_messages(n: int, start: datetime, devices: int = 1000) -> list[tuple[str, bytes]]:
    """Grid and cold-chain samples: 5 metrics per message, 1 Hz per device."""
    out = []
    for i in range(n):
        dev, k = i % devices, i // devices
        t = start + timedelta(seconds=k, milliseconds=dev)
        out.append((f"sn{dev:05d}", json.dumps({"time": _iso(t), "values": {
            "voltage_v": 229.5 + (i % 7) / 10, "current_a": 12.0 + dev % 5,
            "temp_c": 4.0 + (k % 10) / 10, "humidity_pct": 61.5, "door_open": i % 2,
        }}).encode()))
    return out


def rfid_messages(n: int, start: datetime, devices: int = 200) -> list[tuple[str, bytes]]:
    """Gate readers: batches of 20 reads of tagged pallets."""
    out = []
    for i in range(n):
        dev, k = i % devices, i // devices
        t = start + timedelta(seconds=k)
        reads = [{"epc": EPCS[(i + j) % len(EPCS)], "antenna": j % 4 + 1,
                  "rssi_dbm": -48.5 - j, "time": _iso(t + timedelta(milliseconds=j * 10))}
                 for j in range(20)]
        out.append((f"rf{dev:04d}", json.dumps({"reads": reads}).encode()))
    return out


def drain_naive(url: str, client_id: str, dsn: str, n: int, stream: str) -> float:
    """The baseline consumer: auto-ack, json.loads + jsonschema, executemany per 1,000."""
    schema = json.loads((SCHEMAS / f"{stream}.json").read_text())
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    table = f"{stream}_baseline"
    done = threading.Event()
    rows: list[tuple[Any, ...]] = []
    got = 0
    conn = psycopg.connect(dsn)
    insert = (f"INSERT INTO {table} (time, device_id, metric, value, received_at)"
              " VALUES (%s, %s, %s, %s, now())" if stream == "sensor" else
              f"INSERT INTO {table} (time, device_id, epc, antenna, rssi_dbm, received_at)"
              " VALUES (%s, %s, %s, %s, %s, now())")

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal got
        device = msg.topic.split("/")[2]
        doc = json.loads(msg.payload)
        validator.validate(doc)
        if stream == "sensor":
            t = datetime.fromisoformat(doc["time"])
            rows.extend((t, device, k, float(v)) for k, v in doc["values"].items())
        else:
            rows.extend((datetime.fromisoformat(r["time"]), device, r["epc"], r["antenna"],
                         r["rssi_dbm"]) for r in doc["reads"])
        got += 1
        if len(rows) >= 1000 or got >= n:
            with conn.cursor() as cur:
                cur.executemany(insert, rows)
            conn.commit()
            rows.clear()
        if got >= n:
            done.set()

    t0 = time.perf_counter()
    c = _connect(url, client_id, manual_ack=False, on_message=on_message)
    c.loop_start()
    if not done.wait(1800):
        raise RuntimeError(f"baseline got {got}/{n}")
    elapsed = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    conn.close()
    return elapsed


def one_run(broker: PrivateBroker, dsn: str, stream: str, msgs: list[tuple[str, bytes]],
            rows_per_msg: int) -> dict[str, float]:
    """limit, beiflow and baseline once, in messages per second."""
    n = len(msgs)
    tag = uuid.uuid4().hex[:6]
    out: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE sensor_readings, rfid_reads, sensor_baseline, rfid_baseline,"
                     " devices, dead_letters, anomalies")

    queue_backlog(broker.url, f"bare-{tag}", f"a{tag}", msgs, stream=stream)
    out["limit"] = n / drain_bare(broker.url, f"bare-{tag}", n)

    cfg = load_config(env={}, overrides={
        "mqtt.url": broker.url, "db.dsn": dsn, "mqtt.topic_root": f"b{tag}",
        "mqtt.client_id": f"beiflow-{tag}", "metrics.addr": "127.0.0.1:0"})
    cfg = replace(cfg, sensor=replace(cfg.sensor, past_tolerance_s=1e9),
                  rfid=replace(cfg.rfid, past_tolerance_s=1e9))
    queue_backlog(broker.url, cfg.mqtt.client_id, f"b{tag}", msgs, stream=stream)
    out["beiflow"] = n / drain_beiflow(cfg, n)
    table = "sensor_readings" if stream == "sensor" else "rfid_reads"
    with psycopg.connect(dsn) as conn:
        (stored,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone() or (0,)
    if stored != n * rows_per_msg:
        raise RuntimeError(f"beiflow stored {stored} rows for {n * rows_per_msg}")

    queue_backlog(broker.url, f"naive-{tag}", f"c{tag}", msgs, stream=stream)
    out["baseline"] = n / drain_naive(broker.url, f"naive-{tag}", dsn, n, stream)
    return out


def main() -> int:
    """Run both streams and print medians and ratios."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=30_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    admin = os.environ.get("BEIFLOW_ADMIN_DSN", "postgresql://root@127.0.0.1:5432/postgres")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    streams = {"sensor": (sensor_messages(args.messages, start), 5),
               "rfid": (rfid_messages(args.messages, start), 20)}
    with PrivateBroker() as broker, bench_database(admin) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for s in ("sensor_readings", "rfid_reads"):
                base = "sensor_baseline" if s == "sensor_readings" else "rfid_baseline"
                conn.execute(f"CREATE TABLE {base} (LIKE {s} INCLUDING DEFAULTS)")
        for stream, (msgs, per) in streams.items():
            runs = []
            for i in range(args.runs):
                r = one_run(broker, dsn, stream, msgs, per)
                runs.append(r)
                print(f"{stream} run {i + 1}: " + ", ".join(f"{k} {v:,.0f} msg/s"
                                                            for k, v in r.items()), flush=True)
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"\n{stream}: medians over {args.runs} runs, {args.messages:,} messages of "
                  f"{per} rows")
            for k in ("limit", "beiflow", "baseline"):
                print(f"  {k:<9} {med[k]:>10,.0f} msg/s {med[k] * per:>12,.0f} rows/s")
            print(f"  beiflow/limit    = {med['beiflow'] / med['limit']:.2f}  (target >= 0.7)")
            print(f"  beiflow/baseline = {med['beiflow'] / med['baseline']:.1f}  "
                  f"(target >= 10)\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
