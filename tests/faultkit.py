"""Fault-suite helpers: uniquely identifiable load, a retrying QoS 1 publisher, `beiflow
ingest` as a killable process, per-run accounting and the five fault scenarios.

Shared by tests/test_faults.py (short form) and bench/fault_suite.py (long form).
Load: the simulator's terminals. Accounting: every good message is one NMEA epoch with a
unique (device, time) -> one ``positions`` row; every poison message goes to a topic of
its own -> at least one ``dead_letters`` row on that topic. lost = published - stored -
dead-lettered.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from beiflow.devices.simulators.scenario import Scenario, ScenarioOptions
from beiflow.ingest.broker import PrivateBroker, free_port
from beiflow.ingest.config import parse_mqtt_url
from tests.tcpproxy import TcpProxy

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- load


@dataclass
class Load:
    """One run's messages: ``items`` (topic, payload) in publish order."""

    tag: str
    root: str
    items: list[tuple[str, bytes]]
    devices: list[str]
    good: int
    poison: int
    poison_topics: list[str] = field(default_factory=list)


def poison_payload(i: int, rng: random.Random) -> bytes:
    """Bytes that crash naive parsers; the counter ``i`` makes each one unique."""
    tag = f"{i:08d}".encode()
    kind = i % 6
    if kind == 0:
        return rng.randbytes(120) + tag                       # random binary
    if kind == 1:
        return b"$GPGGA,123519,4807.038,N,01131." + tag        # truncated sentence
    if kind == 2:
        return b"$" * 300 + tag                                 # '$' flood
    if kind == 3:
        return b"$GPRMC" + b",9" * 2000 + b"," + tag + b"*00\r\n"  # huge field count
    if kind == 4:
        return b"\xff\xfe$GPRMC,\xc3\x28" + tag + b"\xed\xa0\x80"  # invalid UTF-8
    return b""                                                  # 0-byte (unique topic)


def make_load(n: int, *, devices: int = 500, poison_every: int = 0, seed: int = 0) -> Load:
    """``n`` messages on a fresh topic root: the Yantai scenario's terminals (RMC+GGA
    receivers, a fix from the first epoch), one epoch per device and second from two hours
    ago (unique (device, time) keys), with every ``poison_every``-th message replaced by
    poison on a topic of its own."""
    tag = uuid.uuid4().hex[:8]
    root = f"f{tag}"
    rng = random.Random(seed)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    sc = Scenario(ScenarioOptions(devices=devices, seed=seed, root=root, anomalies=False,
                                  lean_receivers=True, cold_start_s=0.0, run_tag=tag),
                  start=base.timestamp())
    epochs = (m for k in itertools.count() for m in sc.tick(base.timestamp() + k).messages
              if m.topic.endswith("/nmea"))
    items: list[tuple[str, bytes]] = []
    poison_topics: list[str] = []
    seen: dict[str, None] = {}
    good = 0
    for i in range(n):
        if poison_every and i % poison_every == poison_every - 1:
            topic = f"{root}/poison/{tag}-p{i}/nmea"
            poison_topics.append(topic)
            items.append((topic, poison_payload(len(poison_topics), rng)))
            continue
        m = next(epochs)
        seen[m.device] = None
        items.append((m.topic, m.payload))
        good += 1
    return Load(tag, root, items, list(seen), good, len(poison_topics), poison_topics)


# ---------------------------------------------------------------------- publisher


def _acked(info: mqtt.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


class Publisher(threading.Thread):
    """Publishes a :class:`Load` at full speed, QoS 1, at most ``window`` unacknowledged.

    Tracks the PUBACK of every message; after a reconnect (or when the oldest one is
    stuck) it re-publishes every message not yet acknowledged. Duplicates are harmless
    (the sink is idempotent); a message is never given up.
    """

    def __init__(self, url: str, load: Load, *, window: int = 4000,
                 pause_at: int | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.load, self.window = url, load, window
        self.pause_at = pause_at   # wait for ``gate`` before publishing this index
        self.gate = threading.Event()
        self.sent = 0          # distinct messages handed to the client
        self.resent = 0
        self.connects = 0
        self.error: BaseException | None = None
        self.t_start = self.t_end = 0.0
        self.finished = threading.Event()

    def _on_connect(self, *_a: object) -> None:
        self.connects += 1

    def run(self) -> None:
        """Publish everything, wait for every PUBACK."""
        try:
            self._run()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished.set()

    def _run(self) -> None:
        u = parse_mqtt_url(self.url)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}",
                        protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(1000)
        c.reconnect_delay_set(0.1, 1.0)
        c.on_connect = self._on_connect
        c.connect(u.host, u.port)
        c.loop_start()
        try:
            deadline = time.monotonic() + 10
            while not self.connects and time.monotonic() < deadline:
                time.sleep(0.01)
            pending: collections.OrderedDict[int, tuple[mqtt.MQTTMessageInfo, int]] = \
                collections.OrderedDict()
            self.t_start = time.perf_counter()
            for i in range(len(self.load.items)):
                if i == self.pause_at:
                    self.gate.wait()
                pending[i] = self._publish(c, i)
                self.sent = i + 1
                if len(pending) >= self.window:
                    self._drain(c, pending, self.window // 2)
            self._drain(c, pending, 0)
            self.t_end = time.perf_counter()
        finally:
            c.disconnect()
            c.loop_stop()

    def _publish(self, c: mqtt.Client, i: int) -> tuple[mqtt.MQTTMessageInfo, int]:
        topic, payload = self.load.items[i]
        return c.publish(topic, payload, qos=1), self.connects

    def _drain(self, c: mqtt.Client,
               pending: collections.OrderedDict[int, tuple[mqtt.MQTTMessageInfo, int]],
               target: int) -> None:
        stuck_since = time.monotonic()
        while len(pending) > target:
            progressed = False
            while pending:
                i, (info, _gen) = next(iter(pending.items()))
                if not _acked(info):
                    break
                del pending[i]
                progressed = True
            if len(pending) <= target:
                return
            now = time.monotonic()
            if progressed:
                stuck_since = now
            gen = self.connects
            stale = any(g != gen for _info, g in pending.values()) if not progressed else False
            if c.is_connected() and (stale or now - stuck_since > 5.0):
                for i, (info, _g) in list(pending.items()):
                    if _acked(info):
                        del pending[i]
                    else:
                        pending[i] = self._publish(c, i)
                        self.resent += 1
                stuck_since = now
            if now - stuck_since > 300:
                raise RuntimeError(f"publisher stuck with {len(pending)} unacknowledged")
            time.sleep(0.002)


# ------------------------------------------------------------------ ingest process


class IngestProc:
    """``python -m beiflow ingest`` with BEIFLOW_* settings; restartable, killable."""

    def __init__(self, mqtt_url: str, dsn: str, root: str, client_id: str) -> None:
        self.env = {**os.environ, "BEIFLOW_MQTT_URL": mqtt_url, "BEIFLOW_DB_DSN": dsn,
                    "BEIFLOW_TOPIC_ROOT": root, "BEIFLOW_CLIENT_ID": client_id}
        self.proc: subprocess.Popen[str] | None = None
        self.metrics_port = 0
        self.lines: collections.deque[str] = collections.deque(maxlen=400)
        self.starts = 0

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start (a fresh metrics port each time) and wait for the subscription."""
        self.metrics_port = free_port()
        env = {**self.env, "BEIFLOW_METRICS_ADDR": f"127.0.0.1:{self.metrics_port}"}
        subscribed = threading.Event()
        self.proc = subprocess.Popen([sys.executable, "-m", "beiflow", "ingest"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, cwd=REPO)
        self.starts += 1
        stream = self.proc.stderr

        def read() -> None:
            assert stream is not None
            for line in stream:
                self.lines.append(line)
                if "subscribed to" in line:
                    subscribed.set()

        threading.Thread(target=read, daemon=True).start()
        if wait and not subscribed.wait(timeout):
            raise RuntimeError("ingest did not subscribe: " + "".join(self.lines)[-2000:])

    @property
    def pid(self) -> int:
        """Process id of the running ingest."""
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        """SIGKILL and reap."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def sigterm(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds until exit)."""
        assert self.proc is not None
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        return rc, time.perf_counter() - t0

    def rss_kb(self) -> int:
        """VmRSS of the process in KiB."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def readyz(self) -> int:
        """HTTP status of /readyz (0 if unreachable)."""
        try:
            return urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=5).status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def close(self) -> None:
        """Stop whatever still runs."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sigterm(20)
            self.kill9()


# ----------------------------------------------------------------------- accounting


@dataclass
class Result:
    """Accounting of one scenario run."""

    scenario: str
    published: int
    stored: int
    dead: int
    duplicated: int
    lost: int
    seconds: float
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Messages per second, first publish to everything accounted."""
        return self.published / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing doubled."""
        return self.lost == 0 and self.duplicated == 0

    def line(self) -> str:
        """One summary line."""
        extra = "".join(f" {k}={v}" for k, v in self.notes.items())
        return (f"{self.scenario:<14} published {self.published} / stored {self.stored} / "
                f"dead-lettered {self.dead} / duplicated {self.duplicated} / lost {self.lost}"
                f"  {self.seconds:.1f} s {self.rate:,.0f} msg/s{extra}")


def counts(dsn: str, load: Load) -> tuple[int, int, int]:
    """(position rows, distinct (device, time) keys, poison topics with a dead letter)."""
    with psycopg.connect(dsn) as conn:
        rows, keys = conn.execute(
            "SELECT count(*), count(DISTINCT (device_id, time)) FROM positions"
            " WHERE device_id = ANY(%s)", (load.devices,)).fetchone() or (0, 0)
        (dead,) = conn.execute(
            "SELECT count(DISTINCT topic) FROM dead_letters WHERE topic = ANY(%s)",
            (load.poison_topics,)).fetchone() or (0,)
    return int(rows), int(keys), int(dead)


def settle(dsn: str, load: Load, published: int, *, timeout: float) -> tuple[int, int, int]:
    """Poll until every published message is accounted for (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        rows, keys, dead = counts(dsn, load)
        if keys + dead >= published or time.monotonic() > deadline:
            return rows, keys, dead
        time.sleep(0.25)


def account(name: str, dsn: str, load: Load, pub: Publisher, t0: float, *,
            timeout: float) -> Result:
    """Wait for the publisher and the sink, then count."""
    pub.finished.wait(timeout)
    if pub.error:
        raise RuntimeError(f"publisher failed: {pub.error!r}")
    published = pub.sent
    rows, keys, dead = settle(dsn, load, published, timeout=timeout)
    seconds = time.perf_counter() - t0
    dup = (rows - keys) + max(0, keys - load.good) + max(0, dead - load.poison)
    lost = published - min(keys, load.good) - min(dead, load.poison)
    return Result(name, published, keys, dead, dup, lost, seconds,
                  {"resent": pub.resent} if pub.resent else {})


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _when_sent(pub: Publisher, fraction: float, timeout: float) -> None:
    target = int(len(pub.load.items) * fraction)
    _wait(lambda: pub.sent >= target or pub.finished.is_set(), timeout, f"{target} published")


@contextlib.contextmanager
def _running(ing: IngestProc) -> Iterator[IngestProc]:
    try:
        yield ing
    finally:
        ing.close()


# ------------------------------------------------------------------------ scenarios


def scenario_kill9(broker_url: str, dsn: str, n: int, *, kills: int = 3, seed: int = 1,
                   timeout: float = 120.0) -> Result:
    """kill -9 the ingest at random moments under load, restart with the same client id."""
    rng = random.Random(seed)
    load = make_load(n, seed=seed)
    ing = IngestProc(broker_url, dsn, load.root, f"ing-{load.tag}")
    with _running(ing):
        ing.start()
        pub = Publisher(broker_url, load)
        t0 = time.perf_counter()
        pub.start()
        moments = sorted(rng.uniform(0.1, 0.9) for _ in range(kills))
        for m in moments:
            _when_sent(pub, m, timeout)
            ing.kill9()
            ing.start()
        res = account("kill-9", dsn, load, pub, t0, timeout=timeout)
    res.notes["kills"] = kills
    return res


def scenario_db_outage(broker_url: str, dsn: str, n: int, *, outage_s: float = 5.0,
                       timeout: float = 120.0) -> Result:
    """PostgreSQL unreachable through a cut TCP proxy under load: 503, bounded RSS."""
    load = make_load(n, seed=2)
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    proxy = TcpProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
    via = psycopg.conninfo.make_conninfo(dsn, host="127.0.0.1", port=proxy.port)
    ing = IngestProc(broker_url, via, load.root, f"ing-{load.tag}")
    try:
        with _running(ing):
            ing.start()
            # a fifth lands first; the rest is published during the outage
            pub = Publisher(broker_url, load, pause_at=n // 5)
            t0 = time.perf_counter()
            pub.start()
            _wait(lambda: counts(dsn, load)[1] >= n // 5, timeout, "first fifth stored")
            rss_before = ing.rss_kb()
            proxy.cut()
            pub.gate.set()
            t_cut = time.monotonic()
            statuses = set()
            rss_peak = rss_before
            while time.monotonic() - t_cut < outage_s:
                statuses.add(ing.readyz())
                rss_peak = max(rss_peak, ing.rss_kb())
                time.sleep(0.2)
            not_ready = 503 in statuses
            if not not_ready:  # the outage must show; wait for it before restoring
                _wait(lambda: ing.readyz() == 503, 30, "/readyz 503 during the outage")
                not_ready = True
            rss_peak = max(rss_peak, ing.rss_kb())
            proxy.restore()
            res = account("db-outage", dsn, load, pub, t0, timeout=timeout)
            _wait(lambda: ing.readyz() == 200, 30, "/readyz 200 after recovery")
    finally:
        proxy.close()
    res.notes.update(readyz_503=not_ready, rss_before_mb=round(rss_before / 1024, 1),
                     rss_peak_mb=round(rss_peak / 1024, 1), outage_s=outage_s)
    return res


def scenario_broker_restart(dsn: str, n: int, *, down_s: float = 1.0, restarts: int = 1,
                            timeout: float = 120.0, workdir: Path | None = None) -> Result:
    """Restart a private broker (same port and persistence) while publishing QoS 1."""
    load = make_load(n, seed=3)
    broker = PrivateBroker(binary=os.environ.get("BEIFLOW_MOSQUITTO"), workdir=workdir)
    broker.start()
    try:
        ing = IngestProc(broker.url, dsn, load.root, f"ing-{load.tag}")
        with _running(ing):
            ing.start()
            pub = Publisher(broker.url, load)
            t0 = time.perf_counter()
            pub.start()
            for k in range(restarts):
                _when_sent(pub, (k + 1) / (restarts + 1), timeout)
                broker.stop()
                time.sleep(down_s)
                broker.start()
            res = account("broker-restart", dsn, load, pub, t0, timeout=timeout)
            if not res.ok:
                res.notes["ingest_log"] = "".join(list(ing.lines)[-15:])
                res.notes["broker_log"] = (broker.workdir / "mosquitto.log").read_text()[-2500:]
    finally:
        broker.close()
    res.notes["restarts"] = restarts
    return res


def scenario_poison(broker_url: str, dsn: str, n: int, *, timeout: float = 120.0) -> Result:
    """1% poison mixed into the stream: all dead-lettered, every good one lands."""
    load = make_load(n, poison_every=100, seed=4)
    ing = IngestProc(broker_url, dsn, load.root, f"ing-{load.tag}")
    with _running(ing):
        ing.start()
        pub = Publisher(broker_url, load)
        t0 = time.perf_counter()
        pub.start()
        res = account("poison-1%", dsn, load, pub, t0, timeout=timeout)
    res.notes["poison"] = load.poison
    return res


def scenario_sigterm(broker_url: str, dsn: str, n: int, *, timeout: float = 120.0) -> Result:
    """SIGTERM under load: exit 0 within a bounded time, restart, account for all."""
    load = make_load(n, seed=5)
    ing = IngestProc(broker_url, dsn, load.root, f"ing-{load.tag}")
    with _running(ing):
        ing.start()
        pub = Publisher(broker_url, load)
        t0 = time.perf_counter()
        pub.start()
        _when_sent(pub, 0.5, timeout)
        rc, exit_s = ing.sigterm(60)
        ing.start()
        res = account("sigterm", dsn, load, pub, t0, timeout=timeout)
    res.notes.update(exit_status=rc, exit_s=round(exit_s, 2))
    return res


SCENARIOS = ("kill9", "db_outage", "broker_restart", "poison", "sigterm")
