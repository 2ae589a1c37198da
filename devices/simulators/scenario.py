"""The Yantai port scenario: every device kind of the port, with labelled anomalies.

One :class:`Scenario` holds the port's devices and advances them tick by tick:

* Beidou/GNSS terminals on trucks, yard tractors, vessels and cranes (``port.Fleet``
  moves them, ``gnss.ReceiverBank`` turns the true tracks into what each receiver model
  prints: talkers GN/GB/BD/GP, GSA/GSV/VTG/ZDA on some, cold starts, blockage under the
  highway underpass and the cranes, multipath);
* RFID readers at both gates (each truck's tag is read as the truck passes the gate),
  a cold store and a dry warehouse (``rfid_gates.GateReaders``);
* grid nodes and reefer containers (``sensors.GridNodes`` / ``sensors.Reefers``).

:meth:`Scenario.tick` is a pure function of the seed, the start time and the tick times
asked for: the same calls give the same bytes, whatever the clock (tests drive it
directly; :func:`run` drives it on the wall clock and publishes).

Labels (``labels.Label``, one JSON line each): a ``scenario`` record naming the devices,
then every geofence transition the simulator knows to happen (from the positions the
receivers report: no label for a fix the pipeline cannot use, such as one without a fix,
or a multipath spike) and every injected anomaly, stamped when the pipeline should report
it. Injections (with ``anomalies`` on) repeat every ``CYCLE_S`` seconds, each time on
devices drawn from the seed:

============  ==========================================  ===========================
injection     what the devices do                         label kind(s)
============  ==========================================  ===========================
teleport      one epoch reported 2 km away                ``jump``
jamming       C/N0 down 25 dB for 40 s                    ``jamming``
spoofing      uniform strong C/N0, position 1.5 km off    ``spoofing`` (+ ``jump``)
silent        the terminal goes quiet for 330 s           ``offline``
overspeed     a vehicle speeds on the quay apron          ``overspeed`` (geofence)
restricted    a vehicle drives into the dangerous goods   ``enter``/``exit`` (geofence)
              yard
spike, drift  grid readings                               ``statistical``
stuck         a grid temperature freezes                  ``stuck``
excursion     a reefer's cooling fails                    ``cold_chain_excursion``
door_open     a reefer door left open                     ``door_open``
impossible    a cloned truck tag at the other gate        ``impossible_travel``
cold exit     pallets from the cold store to a dry store  ``cold_chain_exit``
malformed     a bad NMEA checksum / truncated JSON        ``bad_checksum`` / ``bad_json``
============  ==========================================  ===========================

Which kind the pipeline reports for each, and when, follows the default detector
configuration (``processing.config``); a changed configuration moves or removes them.
Not labelled, and so scored apart by ``beiflow score``: ``stopped``/``moving`` state
reports, and ``jamming`` reported for blockage (tunnels and crane shadows look the same to
the detector).
"""

from __future__ import annotations

import asyncio
import bisect
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import psycopg

from beiflow.devices.simulators.gnss import ReceiverBank, ReceiverSpec, offset_position
from beiflow.devices.simulators.labels import Label, LabelWriter
from beiflow.devices.simulators.links import (
    DeviceLinks,
    Endpoint,
    Message,
    MuxLinks,
    tls_context,
)
from beiflow.devices.simulators.port import (
    Fleet,
    TransitionTracker,
    build_fleet,
    load_port_fences,
    sky_at,
)
from beiflow.devices.simulators.rfid_gates import GateReaders
from beiflow.devices.simulators.sensors import GridNodes, Reefers
from beiflow.ingest.config import MqttUrl
from beiflow.ingest.geofences import Site, register_sites

#: Injections repeat with this period (s); offsets within a cycle are below.
CYCLE_S = 900.0
#: Device kinds per pipeline kind, as ``[devices.kinds]`` globs for the collector.
DEVICE_KINDS: dict[str, str] = {"*truck-*": "road", "*tractor-*": "road",
                                "*vessel-*": "vessel", "*crane-*": "crane"}
_TELEPORT_M = 2000.0
_SPOOF_M = 1500.0
_JAM_DB = 25.0
_JAM_S = 40.0
_SPOOF_S = 60.0
_SILENT_S = 330.0
_SILENCE_LIMIT_S = 300.0  # processing.config.MovementConfig.offline_silence_s
_RELOCATE_AFTER = 3  # processing.config.MovementConfig.relocate_after


@dataclass(frozen=True, slots=True)
class ScenarioOptions:
    """What to simulate. ``devices`` counts terminals and sensor nodes (readers are extra)."""

    devices: int = 40
    rate_hz: float = 1.0
    seed: int = 7
    site: str = "yantai"
    root: str = "telemetry"
    anomalies: bool = True
    #: Share of messages sent malformed (with ``anomalies`` on).
    malformed: float = 0.001
    #: Sensor nodes report every this many seconds.
    sensor_period_s: float = 10.0
    #: Silenced devices announce ``offline`` through their last will (one connection per
    #: device); otherwise only their silence tells.
    wills: bool = True
    cold_start_s: float = 35.0
    #: Prefix of every device id (``{run_tag}-truck-0001``): another run's devices to the
    #: pipeline, which keeps fence memberships and baselines per device id.
    run_tag: str = ""
    #: Receivers print GGA and RMC only (fleet terminals), not the scenario's mix with
    #: GSA/GSV/VTG/ZDA (jamming and spoofing injections need GSV: none then).
    lean_receivers: bool = False
    #: Fences the labels are computed against (default: the shipped Yantai fences; import
    #: the same file into beiflow). The roads are Yantai's whatever the fences.
    fences: Path | None = None

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError("devices must be >= 1")
        if not 0 < self.rate_hz <= 10:
            raise ValueError("rate must be within (0, 10] Hz")
        if not 0 <= self.malformed < 1:
            raise ValueError("malformed must be within [0, 1)")
        if self.run_tag and not re.fullmatch(r"[A-Za-z0-9_.]{1,16}", self.run_tag):
            raise ValueError("run tag must be 1-16 of [A-Za-z0-9_.]")


@dataclass(slots=True)
class Tick:
    """What one tick publishes and what it labels."""

    messages: list[Message] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    #: Devices that go quiet / come back at this tick.
    silenced: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Window:
    """A GNSS injection on terminal ``device`` over [start, end): a position offset, a
    C/N0 drop, a spoofer's sky."""

    kind: str  # teleport, jamming or spoofing
    device: int
    start: float
    end: float
    north_m: float = 0.0
    east_m: float = 0.0
    jam_db: float = 0.0


def _mix(n: int) -> dict[str, int]:
    """Split ``n`` devices over the kinds: mostly road vehicles, some of everything."""
    shares = {"truck": 0.40, "tractor": 0.20, "vessel": 0.06, "crane": 0.10,
              "grid": 0.12, "reefer": 0.12}
    counts = {k: int(n * s) for k, s in shares.items()}
    for k in ("truck", "grid", "reefer", "tractor", "vessel", "crane"):
        if sum(counts.values()) >= n:
            break
        if counts[k] == 0 or k == "truck":
            counts[k] += 1
    counts["truck"] += n - sum(counts.values())
    return counts


def _specs(n: int, rate_hz: float, rng: np.random.Generator,
           lean: bool) -> list[ReceiverSpec]:
    """Receiver models: every talker; most print GSA/GSV (needed for integrity checks),
    none with ``lean``."""
    talkers = ("GN", "GB", "BD", "GP")
    extras = (frozenset({"GSA", "GSV"}), frozenset({"GSA", "GSV", "VTG", "ZDA"}),
              frozenset({"GSV"}), frozenset())
    pick = rng.choice(len(extras), size=n, p=[0, 0, 0, 1.0] if lean else
                      [0.5, 0.2, 0.15, 0.15])
    return [ReceiverSpec(talker=talkers[i % 4], extras=extras[int(k)], rate_hz=rate_hz)
            for i, k in enumerate(pick)]


class Scenario:
    """The Yantai port's devices; :meth:`tick` advances them to a given time."""

    def __init__(self, opts: ScenarioOptions, start: float) -> None:
        self.opts = opts
        self.start = start
        rng = np.random.default_rng(opts.seed)
        mix = _mix(opts.devices)
        fences = load_port_fences(opts.fences)
        vehicles = mix["truck"] + mix["tractor"]
        inject = opts.anomalies and vehicles >= 3
        self.fleet: Fleet = build_fleet(
            trucks=mix["truck"], tractors=mix["tractor"], vessels=mix["vessel"],
            cranes=mix["crane"], seed=opts.seed, fences=fences, start=start,
            overspeed=max(1, vehicles // 10) if inject else 0,
            restricted=1 if inject else 0)
        ids = self.fleet.device_ids
        self.specs = _specs(len(ids), opts.rate_hz, rng, opts.lean_receivers)
        self.bank = ReceiverBank(ids, self.specs, seed=opts.seed + 1,
                                 cold_start_s=opts.cold_start_s,
                                 kinds=self.fleet.pipeline_kinds,
                                 multipath_per_hour=2.0 if opts.anomalies else 0.0)
        self.tracker = TransitionTracker(fences, ids)
        self.grid = GridNodes([f"grid-{i + 1:04d}" for i in range(mix["grid"])],
                              seed=opts.seed + 2, start=start, period_s=opts.sensor_period_s)
        self.reefers = Reefers([f"reefer-{i + 1:04d}" for i in range(mix["reefer"])],
                               seed=opts.seed + 3, start=start, period_s=opts.sensor_period_s)
        self.readers = GateReaders(seed=opts.seed + 4, site=opts.site)
        self._gate_reader = {"Main gate": "rfid-gate-main", "East gate": "rfid-gate-east"}
        self._rng = np.random.default_rng(opts.seed + 5)
        self._cycle = -1
        self._pending: list[tuple[float, Callable[[float], None]]] = []
        self._windows: list[_Window] = []  # GNSS injections, by start
        self._silent: dict[str, float] = {}  # device -> back at
        self._labels: list[Label] = []
        self._truck = np.array([k == "truck" for k in self.fleet.kinds])
        self._gsv = np.array(["GSV" in s.extras for s in self.specs])
        self._next_epoch = start
        self._now = start
        self._just_silenced: list[str] = []
        self._terminal = {d: k for k, d in enumerate(self.fleet.device_ids)}
        self._prefix = f"{opts.run_tag}-" if opts.run_tag else ""

    # -- devices ---------------------------------------------------------------------

    @property
    def device_ids(self) -> list[str]:
        """Every device that publishes, as the pipeline sees it: terminals, sensor nodes,
        readers."""
        return [self.public(d) for d in (*self.fleet.device_ids, *self.grid.device_ids,
                                         *self.reefers.device_ids, *self.readers.readers)]

    def public(self, device: str) -> str:
        """The id a device publishes under: ``{run_tag}-{device}`` when the run has a tag."""
        return self._prefix + device

    def topic(self, device: str, stream: str) -> str:
        """``{root}/{site}/{device}/{stream}`` of a device's public id."""
        return f"{self.opts.root}/{self.opts.site}/{device}/{stream}"

    def sites(self) -> list[Site]:
        """Where the fixed readers stand (for ``devices``: lat, lon, zone, zone_kind)."""
        return [replace(s, device_id=self.public(s.device_id)) for s in self.readers.sites()]

    def header(self) -> Label:
        """The ``scenario`` record that opens a labels file."""
        o = self.opts
        return Label(self.start, "*", "scenario", {
            "scenario": "yantai-port", "seed": o.seed, "site": o.site, "rate_hz": o.rate_hz,
            "anomalies": o.anomalies, "devices": self.device_ids})

    # -- the clock -------------------------------------------------------------------

    def tick(self, t: float) -> Tick:
        """Everything due at Unix time ``t`` (ticks must not go back in time)."""
        out = Tick()
        self._now = t
        if self.opts.anomalies:
            self._plan_cycles(t)
        self._run_due(t, out)
        if t >= self._next_epoch:
            self._next_epoch = t + 1.0 / self.opts.rate_hz - 1e-9
            self._gnss(t, out)
        for device, payload in (*self.grid.sample(t), *self.reefers.sample(t)):
            self._emit(out, device, "sensor", payload)
        for device, payload in self.readers.poll(t):
            self._emit(out, device, "rfid", payload)
        for device in map(self.public, self.readers.heartbeats(t)):
            out.messages.append(Message(device, self.topic(device, "status"), b"online",
                                        retain=True))
        # labels of planned events are written when the event is due: a run that ends
        # first never claims them
        self._labels.sort(key=lambda lb: lb.time)
        cut = bisect.bisect_right([lb.time for lb in self._labels], t)
        out.labels += self._labels[:cut]
        self._labels = self._labels[cut:]
        if self._prefix:
            out.labels = [replace(lb, device=self.public(lb.device)) for lb in out.labels]
            out.silenced = [self.public(d) for d in out.silenced]
            out.resumed = [self.public(d) for d in out.resumed]
        out.labels.sort(key=lambda lb: (lb.time, lb.device, lb.kind))
        return out

    def _emit(self, out: Tick, device: str, stream: str, payload: bytes) -> None:
        if device in self._silent:
            return
        if self.opts.anomalies and self._rng.random() < self.opts.malformed:
            payload, kind = _malform(payload, stream, self._rng)
            out.labels.append(Label(self._now, device, kind, {"injected": "malformed"}))
        public = self.public(device)
        out.messages.append(Message(public, self.topic(public, stream), payload))

    def _gnss(self, t: float, out: Tick) -> None:
        ids = self.fleet.device_ids
        quiet = [self._terminal[d] for d in self._silent if d in self._terminal]
        idx = np.delete(np.arange(len(ids)), quiet)
        if not idx.size:
            return
        truth = self.fleet.state(t, idx)
        n = idx.size
        off_n, off_e = np.zeros(n), np.zeros(n)
        jam, spoof = np.zeros(n), np.zeros(n, dtype=bool)
        teleported = np.zeros(n, dtype=bool)
        pos = {int(d): k for k, d in enumerate(idx)}
        self._windows = [w for w in self._windows if w.end > t]
        for w in self._windows:
            k = pos.get(w.device)
            if k is None or t < w.start:
                continue
            off_n[k] += w.north_m
            off_e[k] += w.east_m
            jam[k] += w.jam_db
            spoof[k] |= w.kind == "spoofing"
            teleported[k] |= w.kind == "teleport"
        sky = sky_at(truth.lat, truth.lon)
        payloads, labels = self.bank.epoch(
            t, idx, truth.lat, truth.lon, truth.alt_m, truth.speed_mps, truth.course_deg,
            sky=sky, jam_db=jam, spoof=spoof, offset_n_m=off_n, offset_e_m=off_e)
        out.labels += labels
        # geofence truth from what the receivers claim (a spoofed position is where the
        # pipeline will put the device once it relocates); unusable fixes are not seen
        seen = self.bank.usable & ~teleported
        lat, lon = offset_position(truth.lat, truth.lon, off_n, off_e)
        fence_labels = self.tracker.step(t, idx[seen], lat[seen], lon[seen],
                                         truth.speed_mps[seen])
        out.labels += fence_labels
        for lb in fence_labels:
            reader = self._gate_reader.get(lb.details.get("fence", ""))
            k = self._terminal[lb.device]
            if lb.kind == "enter" and reader and self._truck[k]:
                self.readers.passage(t + 2.0, reader, [self.readers.truck_epc(lb.device)])
        for k, device in enumerate(ids[i] for i in idx.tolist()):
            self._emit(out, device, "nmea", payloads[k])

    def shutdown(self, t: float) -> list[Label]:
        """Labels of the ``offline`` status every device not silent announces at ``t``."""
        internal = (*self.fleet.device_ids, *self.grid.device_ids, *self.reefers.device_ids,
                    *self.readers.readers)
        return [Label(t, self.public(d), "offline", {"injected": "shutdown",
                                                     "reason": "status"})
                for d in internal if d not in self._silent]

    # -- injections ------------------------------------------------------------------

    def _plan_cycles(self, t: float) -> None:
        cycle = math.floor((t - self.start) / CYCLE_S)
        while self._cycle < cycle:
            self._cycle += 1
            self._plan(self.start + self._cycle * CYCLE_S)

    def _at(self, t: float, action: Callable[[float], None]) -> None:
        self._pending.append((t, action))
        self._pending.sort(key=lambda p: p[0])

    def _run_due(self, t: float, out: Tick) -> None:
        while self._pending and self._pending[0][0] <= t:
            _, action = self._pending.pop(0)
            action(t)
        for device, back in list(self._silent.items()):
            if t >= back:
                del self._silent[device]
                out.resumed.append(device)
        out.silenced += self._just_silenced
        self._just_silenced = []

    def _plan(self, c0: float) -> None:
        """Schedule one cycle's injections, devices drawn from the seed and the cycle."""
        rng = np.random.default_rng([self.opts.seed, self._cycle])
        ids = self.fleet.device_ids
        n = len(ids)
        sky_ok = np.flatnonzero(self._gsv)
        if n:
            d = int(rng.integers(n))
            ang = rng.uniform(0, 2 * math.pi)
            t = c0 + 90.0
            self._windows.append(_Window("teleport", d, t, t + 0.5 / self.opts.rate_hz,
                                         _TELEPORT_M * math.cos(ang),
                                         _TELEPORT_M * math.sin(ang)))
            self._labels.append(Label(t, ids[d], "jump", {"injected": "teleport",
                                                         "offset_m": _TELEPORT_M}))
        if sky_ok.size:
            d = int(rng.choice(sky_ok))
            t = c0 + 150.0
            self._windows.append(_Window("jamming", d, t, t + _JAM_S, jam_db=_JAM_DB))
            self._labels.append(Label(t, ids[d], "jamming", {"injected": "jamming",
                                                            "cn0_drop_db": _JAM_DB}))
            d = int(rng.choice(sky_ok))
            t = c0 + 240.0
            ang = rng.uniform(0, 2 * math.pi)
            self._windows.append(_Window("spoofing", d, t, t + _SPOOF_S,
                                         _SPOOF_M * math.cos(ang), _SPOOF_M * math.sin(ang)))
            # the first fixes of a new place are jumps until it is confirmed (the
            # movement check's ``relocate_after``); those at the spoofed place are spoofing
            dt = 1.0 / self.opts.rate_hz
            for k in range(_RELOCATE_AFTER - 1):
                self._labels += [
                    Label(t + k * dt, ids[d], "spoofing", {"injected": "spoofing",
                                                          "offset_m": _SPOOF_M}),
                    Label(t + k * dt, ids[d], "jump", {"injected": "spoofing"}),
                    Label(t + _SPOOF_S + k * dt, ids[d], "jump", {"injected": "spoofing_end"})]
        if n:
            device = ids[int(rng.integers(n))]
            t = c0 + 330.0
            self._at(t, lambda now, dev=device: self._silence(now, dev))
        self._plan_rfid(c0, rng)
        self._plan_sensors(c0, rng)

    def _silence(self, t: float, device: str) -> None:
        if device in self._silent:
            return
        self._silent[device] = t + _SILENT_S
        self._just_silenced.append(device)
        when = t if self.opts.wills else t - 1.0 / self.opts.rate_hz + _SILENCE_LIMIT_S
        self._labels.append(Label(when, device, "offline", {
            "injected": "silent", "silent_s": _SILENT_S,
            "reason": "status" if self.opts.wills else "silence"}))

    def _plan_rfid(self, c0: float, rng: np.random.Generator) -> None:
        trucks = [d for d, k in zip(self.fleet.device_ids, self.fleet.kinds, strict=True)
                  if k == "truck"]
        if trucks:
            epc = self.readers.truck_epc(trucks[int(rng.integers(len(trucks)))])
            self._labels += self.readers.impossible_travel(
                c0 + 120.0, epc, "rfid-gate-main", "rfid-gate-east")
        pallets = self.readers.pallet_epcs(int(rng.integers(2, 6)), cold=True)
        self._labels += self.readers.cold_chain_exit(c0 + 300.0, pallets)

    def _plan_sensors(self, c0: float, rng: np.random.Generator) -> None:
        grid, reefers = self.grid.device_ids, self.reefers.device_ids
        plans: list[tuple[Sequence[str], float, Callable[[float, str], list[Label]]]] = [
            (grid, 450.0, self.grid.spike), (grid, 600.0, self.grid.drift),
            (grid, 700.0, self.grid.stuck), (reefers, 480.0, self.reefers.door_open),
            (reefers, 500.0, self.reefers.excursion)]
        for devices, offset, inject in plans:
            for k in rng.permutation(len(devices)).tolist():
                try:
                    self._labels += inject(c0 + offset, devices[k])
                    break
                except ValueError:
                    continue  # that node is busy with an earlier injection


def _malform(payload: bytes, stream: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """A corrupted copy of ``payload`` and the dead-letter reason it must get."""
    if stream == "nmea":
        star = payload.index(b"*")
        digit = payload[star + 1:star + 3]
        bad = f"{(int(digit, 16) + 1 + int(rng.integers(254))) % 256:02X}".encode()
        return payload[:star + 1] + bad + payload[star + 3:], "bad_checksum"
    return payload[: max(1, len(payload) // 2)], "bad_json"


@dataclass(slots=True)
class RunStats:
    """What :func:`run` published."""

    messages: int = 0
    labels: int = 0
    late_ticks: int = 0


async def run(scenario: Scenario, links: DeviceLinks | MuxLinks, *, duration_s: float,
              labels: LabelWriter) -> RunStats:
    """Drive ``scenario`` on the wall clock for ``duration_s`` and publish through
    ``links``; labels go to ``labels`` as they become known."""
    stats = RunStats()
    labels.write([scenario.header()])
    await links.open()
    step = 1.0 / max(1.0, scenario.opts.rate_hz)
    end = scenario.start + duration_s
    k = 0
    try:
        while (t := scenario.start + k * step) < end:
            wait = t - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -step:
                stats.late_ticks += 1
            tick = scenario.tick(t)
            for device in tick.silenced:
                await links.silence(device)
            for device in tick.resumed:
                await links.resume(device)
            await links.send(tick.messages)
            labels.write(tick.labels)
            stats.messages += len(tick.messages)
            stats.labels += len(tick.labels)
            k += 1
    finally:
        # closing announces every device offline (retained status): the pipeline reports
        # each one that is not silent already
        bye = scenario.shutdown(time.time())
        labels.write(bye)
        stats.labels += len(bye)
        await links.close()
    return stats


def make_links(scenario: Scenario, endpoint: Endpoint, connections: int) -> DeviceLinks | MuxLinks:
    """One connection per device (``connections`` 0) or ``connections`` shared ones."""
    status = {d: scenario.topic(d, "status") for d in scenario.device_ids}
    if connections:
        return MuxLinks(endpoint, status, connections)
    return DeviceLinks(endpoint, status)


def bench_payloads(n_devices: int, seed: int, *, lean: bool = False
                   ) -> Callable[[float], list[tuple[str, bytes]]]:
    """One tick's (topic, payload) pairs of a scenario of ``n_devices`` at wall time ``t``
    from now on (anomalies off; ``lean``: RMC+GGA receivers): what
    ``bench/simulator.py`` publishes."""
    sc = Scenario(ScenarioOptions(devices=n_devices, seed=seed, anomalies=False,
                                  lean_receivers=lean), start=time.time())

    def at(t: float) -> list[tuple[str, bytes]]:
        return [(m.topic, m.payload) for m in sc.tick(t).messages]

    return at


def endpoint_of(url: MqttUrl, qos: int = 1) -> Endpoint:
    """The simulator's view of a broker URL with credentials and TLS files resolved
    (``ingest.config.mqtt_endpoint``): TLS verifies the broker as ingest does."""
    tls = tls_context(url.ca_file, url.cert_file, url.key_file) if url.tls else None
    return Endpoint(url.host, url.port, url.username, url.password, tls, qos)


@contextmanager
def open_labels(path: Path | None, keep: list[Label] | None = None) -> Iterator[LabelWriter]:
    """A label writer on ``path`` (truncated), or one that only counts; labels are also
    appended to ``keep`` when given."""
    if path is None:
        yield LabelWriter(None, keep)
        return
    with path.open("w", encoding="utf-8") as f:
        yield LabelWriter(f, keep)


@dataclass(frozen=True, slots=True)
class SimulateStats:
    """What ``simulate`` did."""

    devices: int
    messages: int
    labels: int
    #: Ticks that started more than a tick late (the process could not keep up).
    late_ticks: int


def simulate(opts: ScenarioOptions, endpoint: Endpoint, labels: LabelWriter, *,
             duration_s: float, connections: int = 0,
             register_dsn: str | None = None) -> SimulateStats:
    """Run the scenario from now for ``duration_s`` (Ctrl-C stops it cleanly)."""
    scenario = Scenario(opts, start=time.time())
    if register_dsn is not None:
        with psycopg.connect(register_dsn) as conn:
            register_sites(conn, scenario.sites())
    links = make_links(scenario, endpoint, connections)
    stats = asyncio.run(run(scenario, links, duration_s=duration_s, labels=labels))
    return SimulateStats(len(scenario.device_ids), stats.messages, stats.labels,
                         stats.late_ticks)
