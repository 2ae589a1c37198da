"""Prometheus metrics (defined once, injected through a registry) and the HTTP endpoint."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
_SKEW_BUCKETS = (-3600.0, -60.0, -5.0, -1.0, -0.1, 0.0, 0.1, 1.0, 5.0, 60.0, 3600.0, 86400.0)


class BulkHistogram(Collector):
    """A histogram fed a whole NumPy array at a time (one call per batch, not per row)."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...],
                 registry: CollectorRegistry) -> None:
        self._name, self._doc = name, doc
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Count every finite value of ``values`` into its bucket."""
        v = values[np.isfinite(values)]
        if v.size == 0:
            return
        idx = np.searchsorted(self._bounds, v, side="left")
        add = np.bincount(idx, minlength=self._counts.size)
        with self._lock:
            self._counts += add
            self._sum += float(v.sum())

    def collect(self) -> list[HistogramMetricFamily]:
        """Cumulative buckets in the Prometheus exposition form."""
        with self._lock:
            cum = np.cumsum(self._counts)
            total = self._sum
        bounds = [*(repr(float(b)) for b in self._bounds), "+Inf"]
        family = HistogramMetricFamily(self._name, self._doc)
        family.add_metric([], list(zip(bounds, (int(c) for c in cum), strict=True)), total)
        return [family]


class Metrics:
    """All beiflow metrics on one registry. Never labelled per device (cardinality)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages_received = Counter(
            "beiflow_messages_received", "MQTT messages received", ["stream"], registry=r)
        self.messages_rejected = Counter(
            "beiflow_messages_rejected",
            "Rejected inputs (sentences or messages) stored as dead letters, by reason",
            ["stream", "reason"], registry=r)
        self.sentences = Counter(
            "beiflow_nmea_sentences", "NMEA sentences accepted", registry=r)
        self.skipped = Counter(
            "beiflow_nmea_skipped", "NMEA sentences counted and skipped, by reason",
            ["reason"], registry=r)
        self.fix_flags = Counter(
            "beiflow_fix_flags", "Positions stored with a quality flag", ["flag"], registry=r)
        self.rows_written = Counter(
            "beiflow_rows_written", "Rows committed, by table", ["table"], registry=r)
        self.batch_duration = Histogram(
            "beiflow_batch_duration_seconds", "Time to process one micro-batch end to end",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_messages = Histogram(
            "beiflow_batch_messages", "Messages per micro-batch",
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 65535), registry=r)
        self.db_write_duration = Histogram(
            "beiflow_db_write_duration_seconds", "Time of one database write transaction",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.db_errors = Counter(
            "beiflow_db_errors", "Failed database write attempts (retried)", registry=r)
        self.lag = BulkHistogram(
            "beiflow_end_to_end_lag_seconds", "Device time to commit, per row",
            _LAG_BUCKETS, r)
        self.clock_skew = BulkHistogram(
            "beiflow_clock_skew_seconds", "Arrival time minus device time, per row",
            _SKEW_BUCKETS, r)
        self.queue_depth = Gauge(
            "beiflow_queue_depth", "Messages received and not yet acknowledged",
            ["queue"], registry=r)
        self.redelivered = Counter(
            "beiflow_messages_redelivered", "Messages the broker flagged DUP (redeliveries)",
            registry=r)
        self.acked = Counter(
            "beiflow_messages_acked", "Messages acknowledged to the broker after commit",
            registry=r)
        self.mqtt_connected = Gauge(
            "beiflow_mqtt_connected", "1 while the collector is connected", registry=r)
        self.db_up = Gauge(
            "beiflow_db_up", "1 while the last database write succeeded", registry=r)
        self.geofence_events = Counter(
            "beiflow_geofence_events", "Geofence events, by event", ["event"], registry=r)
        self.anomalies = Counter(
            "beiflow_anomalies", "Anomalies detected, by kind", ["kind"], registry=r)


class MetricsServer:
    """``/metrics``, ``/healthz`` (process alive) and ``/readyz`` (broker and database up)."""

    def __init__(self, metrics: Metrics, host: str, port: int,
                 ready: Callable[[], bool] = lambda: True,
                 extra: Callable[[str, str], tuple[int, bytes, str] | None] | None = None,
                 ) -> None:
        """``extra(path, query)`` answers other paths (the live map) or returns None."""
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                reply = extra(path, query) if extra is not None and path not in (
                    "/metrics", "/healthz", "/readyz") else None
                if reply is not None:
                    self._reply(*reply)
                elif path == "/metrics":
                    self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._reply(200, b"ok\n")
                elif path == "/readyz":
                    ok = ready()
                    self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._reply(404, b"not found\n")

            def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]  # type: ignore[misc]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        """Serve in a daemon thread."""
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
