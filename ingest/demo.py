"""``beiflow demo``: broker, database, ingest and simulated terminals on this machine."""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from importlib import resources

import psycopg
from prometheus_client.samples import Sample

from beiflow.devices.simulators.labels import Label
from beiflow.devices.simulators.scenario import (
    DEVICE_KINDS,
    Scenario,
    ScenarioOptions,
    endpoint_of,
    make_links,
    open_labels,
    run,
)
from beiflow.ingest.broker import PrivateBroker
from beiflow.ingest.config import Config, mqtt_endpoint
from beiflow.ingest.db import migrate
from beiflow.ingest.geofences import import_fences, read_geojson, register_sites
from beiflow.ingest.logs import redact
from beiflow.ingest.metrics import Metrics
from beiflow.ingest.runner import start_ingest
from beiflow.ingest.score import score
from beiflow.ingest.sink import us_to_datetime

log = logging.getLogger(__name__)


def summary_line(dsn: str, metrics: Metrics, since_us: int, elapsed_s: float) -> str:
    """One line on what has landed since the demo started, read back from the database."""
    with psycopg.connect(dsn) as conn:
        since = us_to_datetime(since_us)
        n_pos, n_dev = conn.execute(
            "SELECT count(*), count(DISTINCT device_id) FROM positions WHERE received_at >= %s",
            (since,)).fetchone() or (0, 0)
        (n_dead,) = conn.execute(
            "SELECT count(*) FROM dead_letters WHERE received_at >= %s", (since,)
        ).fetchone() or (0,)
    r = metrics.registry
    lag_n = r.get_sample_value("beiflow_end_to_end_lag_seconds_count") or 0
    lag_sum = r.get_sample_value("beiflow_end_to_end_lag_seconds_sum") or 0.0
    lag = f"{lag_sum / lag_n * 1000:.0f} ms" if lag_n else "n/a"
    events = int(sum(s.value for s in _samples(metrics, "beiflow_geofence_events_total")))
    anomalies = int(sum(s.value for s in _samples(metrics, "beiflow_anomalies_total")))
    return (f"[{elapsed_s:6.0f} s] positions {n_pos} from {n_dev} devices "
            f"({n_pos / max(elapsed_s, 1e-9):.1f}/s), geofence events {events}, "
            f"anomalies {anomalies}, dead letters {n_dead}, mean lag device->commit {lag}")


def _samples(metrics: Metrics, name: str) -> list[Sample]:
    return [s for family in metrics.registry.collect() for s in family.samples
            if s.name == name]


def _ensure_fences(dsn: str) -> None:
    """Load the bundled Yantai port fences when the database has none yet."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM geofences").fetchone()
    if row and row[0]:
        return
    path = resources.files("beiflow.devices.simulators").joinpath("data/yantai_port.geojson")
    with resources.as_file(path) as p:
        result = import_fences(dsn, read_geojson(p))
    log.info("loaded %d Yantai port geofences", result.fences)


def _base36(n: int, width: int = 4) -> str:
    """The last ``width`` base-36 digits of ``n``."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "".join(digits[n // 36**k % 36] for k in reversed(range(width)))


def score_line(dsn: str, labels: Sequence[Label], now: float) -> str:
    """Live precision/recall per family (geofence events, anomalies, dead letters) of the
    labels due by ``now``."""
    with psycopg.connect(dsn) as conn:
        report = score(conn, labels, now=now)
    parts = []
    for table, name in (("geofence_events", "geofence"), ("anomalies", "anomalies"),
                        ("dead_letters", "dead letters")):
        rows = [r for r in report.rows if r.table == table]
        n_lab = sum(r.labels for r in rows)
        n_det = sum(r.detections for r in rows)
        matched = sum(r.matched for r in rows)
        if n_lab or n_det:
            p = f"{matched / n_det:.2f}" if n_det else "n/a"
            r = f"{matched / n_lab:.2f}" if n_lab else "n/a"
            parts.append(f"{name} P {p} R {r} ({n_lab} labels)")
    return "         precision/recall: " + (", ".join(parts) or "nothing due yet")


def run_demo(cfg: Config, args: argparse.Namespace, *, explicit_broker: bool) -> int:
    """Run until ``--duration`` elapses or Ctrl-C; print a summary every few seconds."""
    broker = None if explicit_broker else PrivateBroker().start()
    if broker is not None:
        cfg = replace(cfg, mqtt=replace(cfg.mqtt, url=broker.url,
                                        client_id=f"beiflow-demo-{broker.port}"))
        log.info("private broker on %s (our limits: see deploy/mosquitto)", broker.url)
    # the scenario's device kinds, unless the configuration says otherwise
    cfg = replace(cfg, devices=replace(cfg.devices, kinds={**DEVICE_KINDS,
                                                           **cfg.devices.kinds}))
    migrate(cfg.db.dsn)
    _ensure_fences(cfg.db.dsn)
    start = time.time()
    # a tag per run: the pipeline keeps fence memberships and baselines per device id, and
    # this run's devices are not where the last run left theirs
    scenario = Scenario(ScenarioOptions(
        devices=args.devices, rate_hz=args.rate, seed=args.seed, root=cfg.mqtt.topic_root,
        anomalies=not args.no_anomalies, run_tag=_base36(int(start))), start=start)
    with psycopg.connect(cfg.db.dsn) as conn:
        register_sites(conn, scenario.sites())  # readers, before ingest loads the sites
    metrics = Metrics()
    ingest = start_ingest(cfg, metrics=metrics)
    started_us = time.time_ns() // 1000
    t0 = time.monotonic()
    done = threading.Event()
    labels: list[Label] = []
    lag_s = cfg.batch.max_age_ms / 1000 + 5.0  # what may still be in flight

    def summaries() -> None:
        while not done.wait(args.summary_every):
            print(summary_line(cfg.db.dsn, metrics, started_us, time.monotonic() - t0),
                  flush=True)
            print(score_line(cfg.db.dsn, list(labels), time.time() - lag_s), flush=True)

    threading.Thread(target=summaries, name="summary", daemon=True).start()
    links = make_links(scenario, endpoint_of(mqtt_endpoint(cfg.mqtt)), connections=0)
    print(f"demo: {len(scenario.device_ids)} devices of Yantai port (terminals, readers, "
          f"grid nodes, reefers) -> {redact(cfg.mqtt.url)}; live map on "
          f"http://{ingest.server.host}:{ingest.server.port}/ (metrics at /metrics)"
          + (f"; labels in {args.labels}" if args.labels else "") + "; Ctrl-C stops",
          flush=True)
    try:
        with open_labels(args.labels, keep=labels) as writer:
            asyncio.run(run(scenario, links, duration_s=args.duration or float("inf"),
                            labels=writer))
        time.sleep(lag_s)  # let the last batches commit
    except KeyboardInterrupt:
        print("demo: stopping", flush=True)
    finally:
        done.set()
        ingest.close()
        print(summary_line(cfg.db.dsn, metrics, started_us, time.monotonic() - t0), flush=True)
        print(score_line(cfg.db.dsn, labels, time.time()), flush=True)
        if broker is not None:
            broker.close()
    return 0
