"""The MQTT collector: paho-mqtt with manual acks, micro-batching, ack after commit.

Two threads: paho's network thread appends messages to a buffer; the batch thread
takes the buffer when it is full or old enough, runs the pipeline, commits, and only
then acknowledges. While the database is down nothing is acknowledged, so the broker
stops sending once the MQTT v5 Receive Maximum is reached: memory stays bounded and
everything unacknowledged is redelivered from the persistent session.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from beiflow.ingest.config import Config, mqtt_endpoint, parse_mqtt_url
from beiflow.ingest.geofences import (
    FenceWatcher,
    load_devices,
    load_membership,
    load_sites,
)
from beiflow.ingest.metrics import Metrics
from beiflow.ingest.pipeline import Pipeline, RawBatch
from beiflow.ingest.sink import TimescaleSink, WriteBatch, WriteResult

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one committed batch did (for summaries and tests)."""

    messages: int
    rows: dict[str, int]
    dead_letters: int
    acked: int


class _FastPublishClient(mqtt.Client):
    """paho's client with a lean path for the PUBLISH packets a collector lives on.

    Stock paho builds a v5 ``Properties`` object, an ``MQTTMessage`` and runs callback
    topic matching for every message: more CPU than everything else a message costs
    us. For QoS 0/1 PUBLISH packets without properties (what devices send) this hands
    topic bytes, payload and packet id straight to ``on_publish_fast``; anything else
    (properties present, QoS 2, a short packet) takes paho's own path unchanged.
    Relies on paho 2.x internals (``_handle_publish``, ``_in_packet``), pinned in
    pyproject and exercised by every end-to-end test.
    """

    on_publish_fast: Callable[[bytes, bytes, int, int, bool], None] | None = None
    #: Why the last connection attempt failed (TLS verification, refused, unreachable).
    last_connect_error: OSError | None = None

    def reconnect(self) -> mqtt.MQTTErrorCode:
        """paho's reconnect, remembering the error paho's retry loop would swallow."""
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_connect_error = exc
            raise

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        fast = self.on_publish_fast
        header = self._in_packet["command"]
        packet = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        if fast is None or qos > 1:
            return super()._handle_publish()
        n = len(packet)
        if n < 3:
            return super()._handle_publish()
        topic_end = 2 + ((packet[0] << 8) | packet[1])
        pos, mid = topic_end, 0
        if qos:
            if pos + 2 > n:
                return super()._handle_publish()
            mid = (packet[pos] << 8) | packet[pos + 1]
            pos += 2
        if pos >= n or packet[pos] != 0:  # v5 properties present (or malformed)
            return super()._handle_publish()
        fast(bytes(packet[2:topic_end]), bytes(packet[pos + 1:]), mid, qos,
             bool(header & 0x08))
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


class Collector:
    """Subscribes, batches, writes through the pipeline and sink, and acks after commit."""

    def __init__(self, config: Config, *, pipeline: Pipeline, sink: TimescaleSink,
                 metrics: Metrics, on_batch: Callable[[BatchReport], None] | None = None) -> None:
        self._cfg = config
        self._pipeline = pipeline
        self._sink = sink
        self._metrics = metrics
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._buf = RawBatch()
        self._mids: list[int] = []
        self._first_at = 0.0
        #: Connection generation: packet ids are only valid on the connection that got them.
        self._gen = 0
        self._connected = False
        self._db_ok = True
        # QoS 0 has no redelivery and no Receive Maximum: beyond this it is shed and counted.
        self._max_buffered = max(config.mqtt.receive_maximum, config.batch.max_messages) * 2
        self._shutdown_timeout_s = 10.0
        self._fences = FenceWatcher()
        self._fences_loaded = False
        #: The devices table counted toward the per-site limits (once, at start).
        self._devices_loaded = False
        self._client = self._make_client()
        self._writing = 0
        self._batches = 0
        metrics.db_up.set(1)  # nothing has failed yet; a failed write sets it to 0
        metrics.queue_depth.labels("collector").set_function(
            lambda: self.buffered() + self.in_flight())

    # -- MQTT side (paho's network thread) -------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self._cfg.mqtt
        client = _FastPublishClient(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                                    protocol=mqtt.MQTTv5, manual_ack=True)
        mqtt_endpoint(cfg).configure(client)  # credentials, TLS with verification
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish_fast = self._on_publish
        return client

    def _on_connect(self, client: mqtt.Client, _userdata: object, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, _props: Properties | None) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        cfg = self._cfg.mqtt
        topic = self._pipeline.topics.subscription()
        if cfg.shared_group:
            topic = f"$share/{cfg.shared_group}/{topic}"
        client.subscribe(topic, options=SubscribeOptions(qos=cfg.qos))
        with self._lock:
            self._connected = True
        self._metrics.mqtt_connected.set(1)
        log.info("connected to %s:%s (session present: %s), subscribed to %s",
                 *self._hostport(), flags.session_present, topic)

    def _on_connect_fail(self, client: mqtt.Client, _userdata: object) -> None:
        exc = getattr(client, "last_connect_error", None)
        self._metrics.mqtt_connected.set(0)
        log.error("cannot connect to broker %s:%s: %s", *self._hostport(),
                  exc if exc is not None else "connection failed")

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object,
                       _flags: mqtt.DisconnectFlags, reason: ReasonCode,
                       _props: Properties | None) -> None:
        with self._lock:
            self._connected = False
            self._gen += 1
            # These packet ids die with the connection; the broker redelivers the messages.
            self._mids.clear()
        self._metrics.mqtt_connected.set(0)
        log.warning("disconnected from broker: %s", reason)

    def _on_message(self, _client: mqtt.Client, _userdata: object,
                    msg: mqtt.MQTTMessage) -> None:
        """paho's regular path (messages carrying v5 properties)."""
        self._on_publish(msg.topic.encode(), bytes(msg.payload), msg.mid, msg.qos, msg.dup)

    def _on_publish(self, topic: bytes, payload: bytes, mid: int, qos: int, dup: bool) -> None:
        now_us = time.time_ns() // 1000
        with self._lock:
            buf = self._buf
            if qos == 0 and len(buf) >= self._max_buffered:
                self._metrics.messages_rejected.labels("unknown", "overflow_qos0").inc()
                return
            if not buf.topics:
                self._first_at = time.monotonic()
                self._wake.set()
            buf.topics.append(topic)
            buf.payloads.append(payload)
            buf.received_us.append(now_us)
            if dup:
                buf.redelivered.append(len(buf.topics) - 1)
            if qos:
                self._mids.append(mid)
            if len(buf) >= self._cfg.batch.max_messages:
                self._wake.set()

    def _hostport(self) -> tuple[str, int]:
        url = parse_mqtt_url(self._cfg.mqtt.url)
        return url.host, url.port

    # -- lifecycle -------------------------------------------------------------------------

    def buffered(self) -> int:
        """Messages received and waiting for the next batch."""
        return len(self._buf)

    def in_flight(self) -> int:
        """Messages of the batch being written, not yet acknowledged."""
        return self._writing

    def ready(self) -> bool:
        """Connected to the broker and the last database write succeeded."""
        return self._connected and self._db_ok

    def start(self) -> None:
        """Connect (persistent session, large Receive Maximum) and start the network thread."""
        cfg = self._cfg.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry_s
        props.ReceiveMaximum = cfg.receive_maximum
        host, port = self._hostport()
        self._client.connect_async(host, port, keepalive=cfg.keepalive_s, clean_start=False,
                                   properties=props)
        self._client.loop_start()

    def run(self, stop: threading.Event, *, shutdown_timeout_s: float = 10.0) -> None:
        """Process batches until ``stop`` is set, then commit and ack what is buffered.

        Shutdown is bounded: a final write still failing after ``shutdown_timeout_s`` is
        abandoned unacknowledged (the broker redelivers it to the next collector).
        """
        self._shutdown_timeout_s = shutdown_timeout_s
        max_age = self._cfg.batch.max_age_ms / 1000
        next_poll = next_idle = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_poll:
                self._poll_fences()
                next_poll = now + self._cfg.geofence.poll_s
            with self._lock:
                n, first = len(self._buf), self._first_at
            age = now - first
            if n >= self._cfg.batch.max_messages or (n and age >= max_age):
                self._flush(stop)
                next_idle = time.monotonic() + 1.0
                continue
            if not n and now >= next_idle:
                idle = self._pipeline.idle(time.time_ns() // 1000)
                if idle is not None:
                    self._write(idle, stop)
                else:
                    self._check_db()  # keep /readyz truthful while no batch is written
                next_idle = now + 1.0
            self._wake.wait(max_age - age if n else 0.25)
            self._wake.clear()
        self._flush(stop)
        self._client.disconnect()
        self._client.loop_stop()
        self._sink.close()

    def _check_db(self) -> None:
        """Idle: ping the database so readiness reflects it without waiting for a write."""
        ok = self._sink.ping()
        if ok != self._db_ok:
            log.warning("database %s", "reachable again" if ok else "unreachable")
        self._db_ok = ok
        self._metrics.db_up.set(1 if ok else 0)

    def _poll_fences(self) -> None:
        """Pick up fence and reader-site changes."""
        try:
            with psycopg.connect(self._cfg.db.dsn, connect_timeout=5) as conn:
                if not self._devices_loaded:
                    self._pipeline.devices.preload(load_devices(conn))
                    self._devices_loaded = True
                self._pipeline.set_sites(load_sites(conn))
                fences = self._fences.poll(conn)
        except psycopg.Error as exc:
            log.warning("cannot load geofences yet: %s", str(exc).strip().splitlines()[0])
            return
        if fences is not None:
            self._pipeline.set_fences(fences)
            log.info("geofences: %d loaded", len(fences))
            self._fences_loaded = True

    def _restore_first_seen(self, raw: RawBatch, stop: threading.Event) -> bool:
        """Rebuild fence memberships of devices this collector has not seen before (after
        a restart, or handed over by the broker), before their fixes are processed; False
        only when stopping while the database is unreachable."""
        ids, upto = self._pipeline.unrestored(raw)
        if not ids:
            return True
        for _ in self._attempts(stop):
            try:
                if not self._fences_loaded:
                    self._poll_fences()
                if self._fences_loaded:
                    with psycopg.connect(self._cfg.db.dsn, connect_timeout=5) as conn:
                        found = self._pipeline.restore_membership(
                            load_membership(conn, ids), upto)
                    if found:
                        log.info("restored %d fence memberships of %d new devices", found,
                                 len(ids))
                    return True
            except psycopg.Error as exc:
                log.warning("cannot restore fence memberships yet: %s",
                            str(exc).strip().splitlines()[0])
        return False

    def _attempts(self, stop: threading.Event) -> Iterator[None]:
        """Yield before each database attempt: at once, then after a delay doubling from
        ``db.retry_s`` up to 10 s. Once ``stop`` is set, attempts end when the next wait
        would outlast the shutdown timeout."""
        delay = self._cfg.db.retry_s
        deadline: float | None = None
        while True:
            yield
            if stop.is_set() and deadline is None:
                deadline = time.monotonic() + self._shutdown_timeout_s
            if deadline is not None and time.monotonic() + delay > deadline:
                return
            if deadline is None:
                stop.wait(delay)
            else:
                time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _take(self) -> tuple[RawBatch, list[int], int]:
        with self._lock:
            raw, mids, gen = self._buf, self._mids, self._gen
            self._buf, self._mids = RawBatch(), []
        return raw, mids, gen

    def _flush(self, stop: threading.Event) -> None:
        raw, mids, gen = self._take()
        if not raw.topics:
            return
        t0 = time.perf_counter()
        self._batches += 1
        self._writing = len(raw)
        try:
            if not self._restore_first_seen(raw, stop):
                log.warning("shutdown: %d messages not processed; the broker will redeliver "
                            "them", len(raw))
                return
            try:
                batch = self._pipeline.process(raw)
            except Exception as exc:  # a bug must not stall ingest nor lose the messages
                log.exception("batch of %d messages failed in the pipeline; storing them as"
                              " dead letters", len(raw),
                              extra={"batch": self._batches, "messages": len(raw)})
                batch = self._pipeline.quarantine(raw, exc)
            result = self._write(batch, stop)
            if result is None:
                log.warning("shutdown: %d messages not committed; the broker will redeliver "
                            "them", len(raw))
                return
            acked = self._ack(mids, gen)
        finally:
            self._writing = 0
        m = self._metrics
        m.batch_duration.observe(time.perf_counter() - t0)
        m.batch_messages.observe(len(raw))
        m.db_write_duration.observe(result.db_seconds)
        for table, count in result.rows.items():
            m.rows_written.labels(table).inc(count)
        if batch.positions is not None:
            m.lag.observe_many((result.commit_time_us - batch.positions["time"]) / 1e6)
        if self._on_batch is not None:
            self._on_batch(BatchReport(len(raw), result.rows, len(batch.dead_letters), acked))

    def _write(self, batch: WriteBatch, stop: threading.Event) -> WriteResult | None:
        for _ in self._attempts(stop):
            try:
                result = self._sink.write(batch)
            except psycopg.Error as exc:
                self._metrics.db_errors.inc()
                self._metrics.db_up.set(0)
                if self._db_ok:
                    log.error("database write failed, holding acks and retrying: %s",
                              str(exc).strip().splitlines()[0] if str(exc) else exc,
                              extra={"batch": self._batches})
                self._db_ok = False
                continue
            if not self._db_ok:
                log.info("database writes resumed")
            self._db_ok = True
            self._metrics.db_up.set(1)
            return result
        return None

    def _ack(self, mids: list[int], gen: int) -> int:
        with self._lock:
            if gen != self._gen:
                return 0  # that connection is gone; its messages are being redelivered
            ack = self._client.ack
            for mid in mids:
                ack(mid, 1)
        self._metrics.acked.inc(len(mids))
        return len(mids)
