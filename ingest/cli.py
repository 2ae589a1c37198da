"""The ``beiflow`` command line: the one place that ties ingest, processing and simulators."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from beiflow import __version__
from beiflow.ingest.config import (
    Config,
    ConfigError,
    as_dict,
    load_config,
    mqtt_endpoint,
)
from beiflow.ingest.logs import redact, setup_logging

log = logging.getLogger("beiflow")

_EPILOG = """\
Settings come from flags, then the environment (BEIFLOW_MQTT_URL, BEIFLOW_DB_DSN,
BEIFLOW_METRICS_ADDR, ...), then --config FILE (TOML, see deploy/beiflow.example.toml),
then built-in defaults.
"""


def _connection_flags(p: argparse.ArgumentParser, *, mqtt: bool = True, db: bool = True,
                      metrics: bool = False) -> None:
    g = p.add_argument_group("connections")
    if mqtt:
        g.add_argument("--mqtt-url", help="broker, mqtt[s]://user:pass@host:port "
                                          "(env BEIFLOW_MQTT_URL)")
        g.add_argument("--topic-root", help="topic root (default telemetry)")
    if db:
        g.add_argument("--db-dsn", help="libpq DSN or URL (env BEIFLOW_DB_DSN)")
    if metrics:
        g.add_argument("--metrics-addr", help="host:port of /metrics, /healthz, /readyz; port 0"
                                              " picks a free one (env BEIFLOW_METRICS_ADDR)")


def _scenario_flags(p: argparse.ArgumentParser, *, devices: int) -> None:
    p.add_argument("--devices", type=int, default=devices,
                   help=f"terminals and sensor nodes, readers come on top (default {devices})")
    p.add_argument("--rate", type=float, default=1.0,
                   help="NMEA epochs per second per terminal, up to 10 (default 1)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--labels", type=Path, help="write the ground-truth labels here (JSON lines)")
    p.add_argument("--no-anomalies", action="store_true",
                   help="no injected anomalies or malformed payloads")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="beiflow", description="IoT and Beidou (BDS) telemetry: MQTT -> NumPy -> "
        "TimescaleDB, with Prometheus metrics.", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"beiflow {__version__}")
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-format", default=os.environ.get("BEIFLOW_LOG_FORMAT", "text"),
                        choices=["text", "json"],
                        help="text, or one JSON object per line (env BEIFLOW_LOG_FORMAT)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole pipeline here with simulated terminals",
                       description="Start a private broker (unless --mqtt-url/BEIFLOW_MQTT_URL "
                       "names one), migrate the database, run ingest and simulated Beidou "
                       "terminals around Yantai port, and print a summary line periodically.")
    _connection_flags(p, metrics=True)
    _scenario_flags(p, devices=40)
    p.add_argument("--duration", type=float, default=0,
                   help="seconds to run; 0 runs until Ctrl-C (default)")
    p.add_argument("--summary-every", type=float, default=5.0, help="seconds between summaries")

    p = sub.add_parser("ingest", help="run the collectors until SIGTERM/Ctrl-C",
                       description="Subscribe to {root}/+/+/+ (persistent session, QoS 1, "
                       "manual acks), decode, write to TimescaleDB, ack after commit.")
    _connection_flags(p, metrics=True)
    p.add_argument("--client-id", help="MQTT client id (default beiflow-ingest)")
    p.add_argument("--shared-group", help="share the subscription with collectors in this "
                                          "group ($share/GROUP/...)")
    p.add_argument("--batch-size", type=int, help="flush after this many messages")
    p.add_argument("--batch-age-ms", type=int, help="flush after this many milliseconds")

    p = sub.add_parser("simulate", help="run device simulators against a broker",
                       description="The Yantai port: Beidou terminals on trucks, yard "
                       "tractors, vessels and cranes, RFID gate and door readers, grid nodes "
                       "and reefer containers, each device its own MQTT client (client id = "
                       "device id, last will on its status topic) unless --connections "
                       "multiplexes them. Deterministic for a seed. Injected anomalies and "
                       "the geofence transitions the simulator knows of go to --labels "
                       "(JSON lines) for `beiflow score`. TLS and login come from "
                       "BEIFLOW_MQTT_URL / the config file, as for ingest.")
    p.add_argument("scenario", choices=["yantai-port"])
    _connection_flags(p)
    _scenario_flags(p, devices=40)
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds; 0 runs until Ctrl-C (default 60)")
    p.add_argument("--site", default="yantai")
    p.add_argument("--qos", type=int, choices=[0, 1], default=1)
    p.add_argument("--connections", type=int, default=0, metavar="K",
                   help="multiplex all devices over K connections (load tests; no per-device "
                   "will); 0, the default, gives each device its own connection")
    p.add_argument("--run-tag", default="", metavar="TAG",
                   help="prefix every device id with TAG- (the pipeline keeps fence "
                   "memberships and movement baselines per device id: a rerun under the same "
                   "ids continues from where the last run left its devices)")
    p.add_argument("--lean-receivers", action="store_true",
                   help="terminals print RMC and GGA only (load tests; no GSV, so no "
                   "jamming or spoofing injections)")
    p.add_argument("--fences", type=Path,
                   help="GeoJSON fences the labels are computed against (default: the "
                   "shipped Yantai fences; import the same file into beiflow)")
    p.add_argument("--register-readers", action="store_true",
                   help="record where the RFID readers stand in the database (--db-dsn / "
                   "BEIFLOW_DB_DSN), as an operator would, for impossible-travel checks")

    p = sub.add_parser("replay", help="publish a recorded NMEA log as one device",
                       description="One MQTT message per epoch, in order, QoS 1.")
    p.add_argument("file", type=Path)
    p.add_argument("--device", required=True, help="device id (1-64 of [A-Za-z0-9_.-])")
    p.add_argument("--site", default="replay")
    p.add_argument("--rate", type=float, default=1.0,
                   help="epochs per second; 0 publishes as fast as the broker takes them")
    _connection_flags(p, db=False)

    p = sub.add_parser("decode", help="print the fixes decoded from an NMEA log as JSON lines",
                       description="One JSON object per epoch: time, lat, lon, alt_m, "
                       "speed_mps, course_deg, fix_quality, sats, hdop (null where the log "
                       "has no value). Problems go to stderr; exit status 1 if there were any.")
    p.add_argument("file", type=Path, help="NMEA log ('-' for stdin)")
    p.add_argument("--date", type=date.fromisoformat,
                   help="UTC date (YYYY-MM-DD) for epochs before the log's first RMC/ZDA")

    p = sub.add_parser("db", help="database schema")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    m = dbsub.add_parser("migrate", help="create or upgrade the schema",
                         description="Apply the versioned SQL under schemas/migrations and "
                         "enable compression where the TimescaleDB edition has it.")
    _connection_flags(m, mqtt=False)
    m = dbsub.add_parser("grant-ingest", help="grant a role what `beiflow ingest` needs",
                         description="Run as the schema owner after `db migrate`: gives ROLE "
                         "(which must exist) CONNECT and TEMPORARY on the database and "
                         "INSERT/SELECT (UPDATE only on the upserted devices, positions and "
                         "rfid_tags) on the tables ingest writes, and nothing else: no "
                         "DELETE, no DDL. Run ingest as that role.")
    m.add_argument("role", help="an existing PostgreSQL role (or a NOLOGIN group role)")
    _connection_flags(m, mqtt=False)

    p = sub.add_parser("geofence", help="geofences")
    gsub = p.add_subparsers(dest="geofence_command", required=True, metavar="GEOFENCE_COMMAND")
    g = gsub.add_parser("import", help="load GeoJSON fences",
                        description="Load a GeoJSON FeatureCollection into `geofences`: Polygon "
                        "and MultiPolygon (holes allowed), circles as Point with "
                        "properties.radius_m, corridors as LineString with properties.width_m. "
                        "Feature id = geofence_id; properties.name, speed_limit_kmh and "
                        "dwell_s are honoured. Re-importing updates fences in place; running "
                        "collectors pick changes up without a restart.")
    g.add_argument("file", type=Path)
    g.add_argument("--prune", action="store_true",
                   help="delete stored fences that are not in FILE")
    _connection_flags(g, mqtt=False)

    p = sub.add_parser("score", help="precision and recall of stored events against labels",
                       description="Compare what landed in geofence_events, anomalies and "
                       "dead_letters with a simulator's labels file (JSON lines): a detection "
                       "matches a label of the same device, kind (and fence) within --window "
                       "seconds, one to one. Prints precision and recall per kind; exit status "
                       "1 when a kind misses --min-precision/--min-recall, 2 on a bad labels "
                       "file.")
    p.add_argument("--labels", type=Path, required=True, help="labels file (JSON lines)")
    p.add_argument("--window", type=float, default=30.0,
                   help="seconds between a label and its detection (default 30)")
    p.add_argument("--kinds", help="comma-separated kinds to score (default: labelled kinds)")
    p.add_argument("--all-kinds", action="store_true",
                   help="also score kinds that were detected but never labelled")
    p.add_argument("--min-precision", type=float, metavar="P", help="fail below P (0..1)")
    p.add_argument("--min-recall", type=float, metavar="R", help="fail below R (0..1)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _connection_flags(p, mqtt=False)

    p = sub.add_parser("config", help="print the effective configuration as JSON")
    _connection_flags(p, metrics=True)
    return parser


def _config(args: argparse.Namespace) -> Config:
    overrides = {
        "mqtt.url": getattr(args, "mqtt_url", None),
        "mqtt.topic_root": getattr(args, "topic_root", None),
        "db.dsn": getattr(args, "db_dsn", None),
        "metrics.addr": getattr(args, "metrics_addr", None),
        "mqtt.client_id": getattr(args, "client_id", None),
        "mqtt.shared_group": getattr(args, "shared_group", None),
        "batch.max_messages": getattr(args, "batch_size", None),
        "batch.max_age_ms": getattr(args, "batch_age_ms", None),
    }
    return load_config(args.config, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"beiflow: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "decode":
        return _decode(args)
    cfg = _config(args)
    if cmd == "config":
        print(json.dumps(as_dict(cfg), indent=2))
        return 0
    if cmd == "db":
        return _grant_ingest(cfg, args.role) if args.db_command == "grant-ingest" \
            else _migrate(cfg)
    if cmd == "geofence":
        return _geofence_import(cfg, args)
    if cmd == "ingest":
        return _ingest(cfg)
    if cmd == "replay":
        return _replay(cfg, args)
    if cmd == "simulate":
        return _simulate(cfg, args)
    if cmd == "score":
        return _score(cfg, args)
    if cmd == "demo":
        from beiflow.ingest.demo import run_demo

        explicit = bool(args.mqtt_url or os.environ.get("BEIFLOW_MQTT_URL") or args.config)
        return run_demo(cfg, args, explicit_broker=explicit)
    raise AssertionError(cmd)


def _decode(args: argparse.Namespace) -> int:
    from beiflow.ingest.nmea import write_decoded_fixes

    try:
        data = sys.stdin.buffer.read() if str(args.file) == "-" else args.file.read_bytes()
    except OSError as exc:
        print(f"beiflow decode: {exc}", file=sys.stderr)
        return 2
    problems = write_decoded_fixes(data, sys.stdout, sys.stderr, date=args.date)
    return 1 if problems else 0


def _migrate(cfg: Config) -> int:
    import psycopg

    from beiflow.ingest.db import MigrationError, migrate, schema_version

    try:
        applied = migrate(cfg.db.dsn)
        version = schema_version(cfg.db.dsn)
    except (psycopg.Error, MigrationError) as exc:
        print(f"beiflow db migrate: {exc}", file=sys.stderr)
        return 1
    print(f"schema at version {version}; applied {applied or 'nothing (up to date)'}")
    return 0


def _grant_ingest(cfg: Config, role: str) -> int:
    import psycopg

    from beiflow.ingest.db import grant_ingest

    try:
        done = grant_ingest(cfg.db.dsn, role)
    except psycopg.Error as exc:
        print(f"beiflow db grant-ingest: {str(exc).strip()}", file=sys.stderr)
        return 1
    print("\n".join(done))
    return 0


def _geofence_import(cfg: Config, args: argparse.Namespace) -> int:
    import psycopg

    from beiflow.ingest.geofences import import_fences, read_geojson
    from beiflow.processing.geofence import GeofenceError

    try:
        fences = read_geojson(args.file)
        result = import_fences(cfg.db.dsn, fences, prune=args.prune)
    except OSError as exc:
        print(f"beiflow geofence import: {exc}", file=sys.stderr)
        return 2
    except GeofenceError as exc:
        print(f"beiflow geofence import: {args.file}: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"beiflow geofence import: {exc}", file=sys.stderr)
        return 1
    print(f"{result.fences} fences in {args.file}: {result.changed} added or changed, "
          f"{result.removed} removed")
    return 0


def _score(cfg: Config, args: argparse.Namespace) -> int:
    import psycopg

    from beiflow.ingest.score import LabelFileError, format_json, format_report, load_labels, score

    if args.window < 0:
        print("beiflow score: --window must be >= 0", file=sys.stderr)
        return 2
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
    try:
        labels = load_labels(args.labels)
        with psycopg.connect(cfg.db.dsn) as conn:
            report = score(conn, labels, window_s=args.window, kinds=kinds,
                           all_kinds=args.all_kinds)
    except LabelFileError as exc:
        print(f"beiflow score: {exc}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"beiflow score: {str(exc).strip()}", file=sys.stderr)
        return 1
    print(format_json(report) if args.json else format_report(report))
    misses = report.misses(min_precision=args.min_precision, min_recall=args.min_recall)
    for miss in misses:
        print(f"beiflow score: below the minimum: {miss}", file=sys.stderr)
    return 1 if misses else 0


def _ingest(cfg: Config) -> int:
    from beiflow.ingest.runner import start_ingest, stop_on_signals

    ingest = start_ingest(cfg)
    log.info("ingest running; SIGTERM or Ctrl-C stops it after committing what is buffered")
    with stop_on_signals(ingest.stop):
        while ingest.thread.is_alive():
            ingest.thread.join(0.5)
    ingest.server.close()
    return 0


def _replay(cfg: Config, args: argparse.Namespace) -> int:
    from beiflow.ingest.nmea import split_epochs
    from beiflow.ingest.replay import PublishError, publish_in_order
    from beiflow.ingest.topics import NAME_RE

    for name, value in (("--device", args.device), ("--site", args.site)):
        if not NAME_RE.fullmatch(value):
            print(f"beiflow replay: {name} must be 1-64 of [A-Za-z0-9_.-]", file=sys.stderr)
            return 2
    try:
        epochs = split_epochs(args.file.read_bytes())
    except OSError as exc:
        print(f"beiflow replay: {exc}", file=sys.stderr)
        return 2
    topic = f"{cfg.mqtt.topic_root}/{args.site}/{args.device}/nmea"
    t0 = time.perf_counter()
    try:
        n = publish_in_order(mqtt_endpoint(cfg.mqtt), topic, epochs, rate_hz=args.rate)
    except (OSError, PublishError, ConfigError) as exc:
        print(f"beiflow replay: {exc}", file=sys.stderr)
        return 1
    print(f"published {n} epochs to {topic} in {time.perf_counter() - t0:.2f} s")
    log.debug("replayed to %s", redact(cfg.mqtt.url))
    return 0


def _simulate(cfg: Config, args: argparse.Namespace) -> int:
    import math

    import psycopg

    from beiflow.devices.simulators.mqttwire import WireError
    from beiflow.devices.simulators.scenario import (
        ScenarioOptions,
        endpoint_of,
        open_labels,
        simulate,
    )

    try:
        opts = ScenarioOptions(devices=args.devices, rate_hz=args.rate, seed=args.seed,
                               site=args.site, root=cfg.mqtt.topic_root,
                               anomalies=not args.no_anomalies, fences=args.fences,
                               wills=not args.connections,
                               lean_receivers=args.lean_receivers, run_tag=args.run_tag)
        endpoint = endpoint_of(mqtt_endpoint(cfg.mqtt), qos=args.qos)
    except (ValueError, OSError) as exc:
        print(f"beiflow simulate: {exc}", file=sys.stderr)
        return 2
    try:
        with open_labels(args.labels) as labels:
            stats = simulate(opts, endpoint, labels, duration_s=args.duration or math.inf,
                             connections=args.connections,
                             register_dsn=cfg.db.dsn if args.register_readers else None)
    except (OSError, WireError, psycopg.Error) as exc:
        print(f"beiflow simulate: {exc}", file=sys.stderr)
        return 1
    print(f"published {stats.messages} messages from {stats.devices} devices, "
          f"{stats.labels} labels" + (f" to {args.labels}" if args.labels else "")
          + (f"; {stats.late_ticks} ticks late: too many devices for this process"
             if stats.late_ticks else ""))
    return 0
