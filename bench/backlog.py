"""Backlog drain: N queued NMEA messages (GGA+RMC each) waiting in a persistent session.

Measured in one run, on the same private broker and the same TimescaleDB:
  (a) limit     bare paho-mqtt subscriber, QoS 1, manual ack, doing nothing else
  (b) beiflow   the full pipeline: decode, processing, binary COPY + upsert, ack after commit
  (c) baseline  paho auto-ack, pynmea2 per sentence, executemany in batches of 1,000 rows
  (d) decoder   beiflow's NMEA decoder alone against pynmea2 alone, per fix
  live          beiflow while a publisher sends at full speed (reported, no target)
Targets on 2 cores: b/a >= 0.8, b/c >= 3, d >= 10.

    python bench/backlog.py [--messages N] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nmea_decode  # bench/ sibling: run as `python bench/backlog.py`
import paho.mqtt.client as mqtt
import psycopg
import pynmea2
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from beiflow.devices.simulators.nmea_encode import gga, rmc
from beiflow.ingest.broker import PrivateBroker
from beiflow.ingest.collector import BatchReport
from beiflow.ingest.config import Config, load_config, parse_mqtt_url
from beiflow.ingest.metrics import Metrics
from beiflow.ingest.runner import start_ingest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests` from the repo root
from tests.scratchdb import scratch_database

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def make_messages(n: int, devices: int = 1000) -> list[tuple[str, bytes]]:
    """(device id, payload) with RMC+GGA per message, 1 Hz per device, GN/BD/GB talkers."""
    out = []
    for i in range(n):
        dev, k = i % devices, i // devices
        t = T0 + timedelta(seconds=k, milliseconds=dev % 1000)
        lat = 37.54 + (dev % 100) * 1e-4 + k * 1e-5
        lon = 121.38 + (dev // 100) * 1e-4 + k * 1e-5
        talker = ("GN", "BD", "GB")[dev % 3]
        payload = (rmc(talker, t, lat, lon, 8.5, 45.0) + "\r\n"
                   + gga(talker, t, lat, lon, 1, 14, 0.9, 12.0) + "\r\n").encode()
        out.append((f"dev{dev:05d}", payload))
    return out


def _connect(url: str, client_id: str, *, manual_ack: bool,
             on_message: Callable[..., None] | None = None) -> mqtt.Client:
    u = parse_mqtt_url(url)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                    manual_ack=manual_ack)
    if on_message:
        c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 65535
    c.connect(u.host, u.port, clean_start=False, properties=props)
    return c


def queue_backlog(url: str, client_id: str, root: str, msgs: list[tuple[str, bytes]], *,
                  stream: str = "nmea") -> None:
    """Create the persistent session, go away, and publish the backlog into it."""
    subscribed = threading.Event()
    c = _connect(url, client_id, manual_ack=True)
    c.on_subscribe = lambda *_a: subscribed.set()
    c.loop_start()
    c.subscribe(f"{root}/+/+/+", options=SubscribeOptions(qos=1))
    if not subscribed.wait(10):
        raise RuntimeError("no SUBACK")
    c.disconnect()
    c.loop_stop()
    publish_fleet(url, root, msgs, stream=stream)


def publish_fleet(url: str, root: str, msgs: list[tuple[str, bytes]], *,
                  stream: str = "nmea") -> None:
    """Publish each device's messages on its own topic, QoS 1, devices interleaved in
    time order as a fleet publishes; at most 5,000 outstanding (paho drops beyond its
    queue while publish() still reports success)."""
    u = parse_mqtt_url(url)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.max_inflight_messages_set(1000)
    publisher.connect(u.host, u.port)
    publisher.loop_start()
    publish_bounded(publisher, ((f"{root}/bench/{dev}/{stream}", payload)
                                for dev, payload in msgs))
    publisher.disconnect()
    publisher.loop_stop()


def publish_bounded(client: mqtt.Client, items: Iterable[tuple[str, bytes]]) -> None:
    """QoS 1 publishes from a running paho loop, waiting for every 5,000 queued (paho
    drops beyond its queue while publish() still reports success)."""
    infos = []
    for topic, payload in items:
        infos.append(client.publish(topic, payload, qos=1))
        if len(infos) >= 5000:
            for info in infos:
                info.wait_for_publish(30)
            infos.clear()
    for info in infos:
        info.wait_for_publish(30)


def drain_bare(url: str, client_id: str, n: int) -> float:
    """(a) seconds for a bare paho subscriber to receive and ack the backlog."""
    done = threading.Event()
    got = 0

    def on_message(client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal got
        client.ack(msg.mid, msg.qos)
        got += 1
        if got >= n:
            done.set()

    t0 = time.perf_counter()
    c = _connect(url, client_id, manual_ack=True, on_message=on_message)
    c.loop_start()
    if not done.wait(600):
        raise RuntimeError(f"bare subscriber got {got}/{n}")
    elapsed = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return elapsed


def drain_beiflow(cfg: Config, n: int) -> float:
    """(b) seconds for beiflow to commit and ack the backlog."""
    done = threading.Event()
    acked = 0

    def on_batch(rep: BatchReport) -> None:
        nonlocal acked
        acked += rep.acked
        if acked >= n:
            done.set()

    t0 = time.perf_counter()
    ing = start_ingest(cfg, metrics=Metrics(), on_batch=on_batch)
    try:
        if not done.wait(600):
            raise RuntimeError(f"beiflow acked {acked}/{n}")
        return time.perf_counter() - t0
    finally:
        ing.close()


_BASELINE_INSERT = (
    "INSERT INTO positions_baseline (time, device_id, lat, lon, alt_m, speed_mps, course_deg,"
    " fix_quality, sats, hdop, date_source, flags, received_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1, 0, now())"
)


def drain_baseline(url: str, client_id: str, dsn: str, n: int) -> float:
    """(c) a typical consumer: paho auto-ack, pynmea2 per sentence, and executemany of
    every 1,000 rows from the message callback, as the usual examples are written."""
    done = threading.Event()
    rows: list[tuple[object, ...]] = []
    got = 0
    conn = psycopg.connect(dsn)

    def flush() -> None:
        with conn.cursor() as cur:
            cur.executemany(_BASELINE_INSERT, rows)
        conn.commit()
        rows.clear()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal got
        device = msg.topic.split("/")[2]
        fix: dict[str, object] = {}
        for line in msg.payload.decode("ascii", "replace").splitlines():
            try:
                s = pynmea2.parse(line, check=True)
            except pynmea2.ParseError:
                continue
            if isinstance(s, pynmea2.types.talker.RMC):
                fix["time"] = datetime.combine(s.datestamp, s.timestamp)
                fix["lat"], fix["lon"] = s.latitude, s.longitude
                fix["speed"] = float(s.spd_over_grnd) * 1852 / 3600
                fix["course"] = float(s.true_course)
            elif isinstance(s, pynmea2.types.talker.GGA):
                fix["alt"] = float(s.altitude)
                fix["q"], fix["sats"] = int(s.gps_qual), int(s.num_sats)
                fix["hdop"] = float(s.horizontal_dil)
        rows.append((fix["time"], device, fix["lat"], fix["lon"], fix["alt"], fix["speed"],
                     fix["course"], fix["q"], fix["sats"], fix["hdop"]))
        got += 1
        if len(rows) >= 1000 or got >= n:
            flush()
        if got >= n:
            done.set()

    t0 = time.perf_counter()
    c = _connect(url, client_id, manual_ack=False, on_message=on_message)
    c.loop_start()
    if not done.wait(900):
        raise RuntimeError(f"baseline got {got}/{n}")
    elapsed = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    conn.close()
    return elapsed


def live_rate(cfg: Config, msgs: list[tuple[str, bytes]]) -> float:
    """Fixes/s committed while a fleet publisher sends ``msgs`` as fast as it can, on the
    same two cores: first publish to last commit."""
    n = len(msgs)
    done = threading.Event()
    acked = 0

    def on_batch(rep: BatchReport) -> None:
        nonlocal acked
        acked += rep.acked
        if acked >= n:
            done.set()

    ing = start_ingest(cfg, metrics=Metrics(), on_batch=on_batch)
    try:
        deadline = time.monotonic() + 10
        while not ing.collector.ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # SUBACK
        t0 = time.perf_counter()
        publish_fleet(cfg.mqtt.url, cfg.mqtt.topic_root, msgs)
        if not done.wait(600):
            raise RuntimeError(f"live: acked {acked}/{n}")
        return n / (time.perf_counter() - t0)
    finally:
        ing.close()


@contextmanager
def bench_database(admin_dsn: str) -> Iterator[str]:
    """A fresh migrated database with a baseline table shaped like positions."""
    with scratch_database(admin_dsn, f"beiflow_bench_{os.getpid()}") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE positions_baseline (LIKE positions INCLUDING ALL)")
            conn.execute("SELECT create_hypertable('positions_baseline', by_range('time'))")
        yield dsn


def _truncate(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE positions, positions_baseline, devices, dead_letters")


def one_run(broker: PrivateBroker, dsn: str, msgs: list[tuple[str, bytes]]) -> dict[str, float]:
    """Every measurement once; fixes per second."""
    n = len(msgs)
    tag = uuid.uuid4().hex[:6]
    out: dict[str, float] = {}

    root = f"a{tag}"
    queue_backlog(broker.url, f"bare-{tag}", root, msgs)
    out["a_limit"] = n / drain_bare(broker.url, f"bare-{tag}", n)

    root = f"b{tag}"
    _truncate(dsn)
    cfg = load_config(env={}, overrides={
        "mqtt.url": broker.url, "db.dsn": dsn, "mqtt.topic_root": root,
        "mqtt.client_id": f"beiflow-{tag}", "metrics.addr": "127.0.0.1:0"})
    cfg = replace(cfg, nmea=replace(cfg.nmea, past_tolerance_s=1e10))
    queue_backlog(broker.url, cfg.mqtt.client_id, root, msgs)
    out["b_beiflow"] = n / drain_beiflow(cfg, n)
    with psycopg.connect(dsn) as conn:
        (rows,) = conn.execute("SELECT count(*) FROM positions").fetchone() or (0,)
    if rows != n:
        raise RuntimeError(f"beiflow stored {rows} rows for {n} messages")

    root = f"c{tag}"
    _truncate(dsn)
    queue_backlog(broker.url, f"base-{tag}", root, msgs)
    out["c_baseline"] = n / drain_baseline(broker.url, f"base-{tag}", dsn, n)

    d = nmea_decode.run(min(n, 100_000))
    out["d_decoder"] = d["beiflow_fixes_per_s"]
    out["d_pynmea2"] = d["pynmea2_fixes_per_s"]

    _truncate(dsn)
    live_cfg = replace(cfg, mqtt=replace(cfg.mqtt, topic_root=f"l{tag}",
                                         client_id=f"live-{tag}"))
    out["live"] = live_rate(live_cfg, msgs[: min(n, 50_000)])
    return out


def main() -> int:
    """Run the benchmark and print medians and ratios."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    admin = os.environ.get("BEIFLOW_ADMIN_DSN", "postgresql://root@127.0.0.1:5432/postgres")
    msgs = make_messages(args.messages)
    runs: list[dict[str, float]] = []
    with PrivateBroker() as broker, bench_database(admin) as dsn:
        for i in range(args.runs):
            r = one_run(broker, dsn, msgs)
            runs.append(r)
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in r.items()),
                  flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"\nmedians over {args.runs} runs, {args.messages:,} messages (GGA+RMC each):")
    print(f"  (a) bare paho subscriber      {med['a_limit']:>12,.0f} fixes/s")
    print(f"  (b) beiflow full pipeline     {med['b_beiflow']:>12,.0f} fixes/s")
    print(f"  (c) baseline                  {med['c_baseline']:>12,.0f} fixes/s")
    print(f"  (d) decoder alone             {med['d_decoder']:>12,.0f} fixes/s"
          f"   pynmea2 {med['d_pynmea2']:,.0f} fixes/s")
    print(f"  live (publisher running)      {med['live']:>12,.0f} fixes/s")
    print(f"  b/a = {med['b_beiflow'] / med['a_limit']:.2f}  (target >= 0.8)")
    print(f"  b/c = {med['b_beiflow'] / med['c_baseline']:.2f}  (target >= 3)")
    print(f"  d   = {med['d_decoder'] / med['d_pynmea2']:.1f}x (target >= 10)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
