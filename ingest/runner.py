"""Wires config, metrics endpoint, pipeline, sink and collector into a running ingest."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from beiflow.ingest.collector import BatchReport, Collector
from beiflow.ingest.config import Config, parse_hostport
from beiflow.ingest.metrics import Metrics, MetricsServer
from beiflow.ingest.pipeline import Pipeline
from beiflow.ingest.sink import TimescaleSink
from beiflow.ingest.web import WebApp

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Ingest:
    """A running ingest: its collector thread, metrics and HTTP endpoint."""

    collector: Collector
    metrics: Metrics
    server: MetricsServer
    stop: threading.Event
    thread: threading.Thread

    def close(self, timeout_s: float = 15.0) -> None:
        """Stop: commit and ack what is buffered, disconnect, stop serving."""
        self.stop.set()
        self.thread.join(timeout_s)
        self.server.close()


def start_ingest(config: Config, *, metrics: Metrics | None = None,
                 on_batch: Callable[[BatchReport], None] | None = None) -> Ingest:
    """Start the collector in a background thread; serve /metrics, /healthz, /readyz, the map."""
    metrics = metrics or Metrics()
    sink = TimescaleSink(config.db.dsn)
    collector = Collector(config, pipeline=Pipeline(config, metrics), sink=sink,
                          metrics=metrics, on_batch=on_batch)
    host, port = parse_hostport(config.metrics.addr, "metrics.addr")
    server = MetricsServer(metrics, host, port, ready=collector.ready,
                           extra=WebApp(config.db.dsn, metrics)).start()
    stop = threading.Event()
    collector.start()
    thread = threading.Thread(target=collector.run, args=(stop,), name="collector")
    thread.start()
    return Ingest(collector, metrics, server, stop, thread)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM/SIGINT for the duration of the block."""
    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
