"""Simulator publishing capacity: one process pinned to one core, Mosquitto on the other.

(a) throughput  QoS 1 NMEA epochs on per-device topics telemetry/yantai/<dev>/nmea over K
                multiplexed WireClient connections, payloads pre-generated (transport
                alone) and generated on the fly by the payload source; baselines in the
                same run: aiomqtt (one client, up to 1,000 publishes awaiting PUBACK) and
                paho-mqtt's loop thread (1,000 in flight, waiting every 5,000 as DESIGN.md
                requires). Target >= 50k msg/s.
(b) connections C devices, each its own WireClient (client id = device id, will "offline"
                retained on its status topic, retained "online" at start), one epoch per
                second at QoS 1 for S seconds; the same with one aiomqtt client per device.
                Target >= 5,000 sustained. Its epochs are generated before the clock starts
                (the generator's cost is what (a) measures).

Payload source: ``beiflow.devices.simulators.scenario.bench_payloads``, the Yantai
scenario's terminals with its mix of receivers (half print GSA+GSV, some VTG/ZDA too) and,
as a second generated variant, with RMC+GGA receivers only (the common fleet terminal).
The broker has no subscriber: it receives, stores nothing and acknowledges.

    python bench/simulator.py [--part throughput|connections|all] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import statistics
import time
import uuid
from collections.abc import Callable, Iterable, Iterator

import aiomqtt
import paho.mqtt.client as mqtt
from backlog import publish_bounded  # bench/ sibling: run as `python bench/simulator.py`
from paho.mqtt.enums import CallbackAPIVersion

from beiflow.devices.simulators.mqttwire import Will, WireClient, WireError
from beiflow.devices.simulators.scenario import bench_payloads
from beiflow.ingest.broker import PrivateBroker

Tick = list[tuple[str, bytes]]
Source = Callable[[float], Tick]
TARGET_RATE = 50_000
TARGET_CONNECTIONS = 5_000
#: aiomqtt warns once per publish beyond 10 pending; logging that would cost more than MQTT
QUIET = logging.getLogger("bench.simulator.aiomqtt")
QUIET.setLevel(logging.ERROR)


def payload_source(n_devices: int, seed: int, lean: bool) -> tuple[str, Source]:
    """(name, source): one tick's (topic, payload) pairs per call, for wall time ``t``."""
    name = "scenario.bench_payloads" + (" (RMC+GGA receivers)" if lean else
                                        " (mixed receivers)")
    return name, bench_payloads(n_devices, seed, lean=lean)


def ticks(source: Source, n_messages: int) -> Iterator[Tick]:
    """Consecutive 1 s ticks from ``source``, starting now (the scenario runs on the wall
    clock), until ``n_messages`` pairs (the last tick cut)."""
    left, k, start = n_messages, 0, time.time()
    while left > 0:
        tick = source(start + k)[:left]
        left -= len(tick)
        k += 1
        yield tick


def pin() -> tuple[int, int]:
    """(simulator core, broker core); the broker started after this inherits its core."""
    cpus = sorted(os.sched_getaffinity(0))
    sim, broker = cpus[0], cpus[-1]
    os.sched_setaffinity(0, {broker})
    return sim, broker


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (the broker, a child, inherits it)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


# -- (a) throughput --------------------------------------------------------------------------

def _timed(fn: Callable[[], int]) -> dict[str, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    n = fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"rate": n / wall, "us_cpu": cpu / n * 1e6}


def wire_throughput(port: int, feed: Iterable[Tick], links: int,
                    max_inflight: int) -> dict[str, float]:
    """Publish every tick spread over ``links`` connections, each topic always on the same
    one (so per-topic order holds)."""
    async def go() -> int:
        tag = uuid.uuid4().hex[:6]
        clients = [WireClient("127.0.0.1", port, client_id=f"wire-{tag}-{i}",
                              max_inflight=max_inflight) for i in range(links)]
        await asyncio.gather(*(c.connect() for c in clients))
        n = 0
        for tick in feed:
            groups: list[Tick] = [[] for _ in clients]
            for item in tick:
                groups[hash(item[0]) % links].append(item)
            for c, group in zip(clients, groups, strict=True):
                await c.publish_many(group)
            n += len(tick)
        await asyncio.gather(*(c.flush() for c in clients))
        if sum(c.acked for c in clients) != n:
            raise RuntimeError(f"acked {sum(c.acked for c in clients)} of {n}")
        await asyncio.gather(*(c.disconnect() for c in clients))
        return n

    return _timed(lambda: asyncio.run(go()))


def aiomqtt_throughput(port: int, msgs: Tick, window: int = 1000) -> dict[str, float]:
    """One aiomqtt client, QoS 1, ``window`` concurrent publishes awaiting their PUBACK."""
    async def go() -> int:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"aio-{uuid.uuid4().hex[:6]}",
                                  max_inflight_messages=window, logger=QUIET) as c:
            for i in range(0, len(msgs), window):
                await asyncio.gather(*(c.publish(t, p, qos=1) for t, p in msgs[i:i + window]))
        return len(msgs)

    return _timed(lambda: asyncio.run(go()))


def paho_throughput(port: int, msgs: Tick) -> dict[str, float]:
    """paho loop thread, 1,000 in flight, waiting for every 5,000 queued (DESIGN.md)."""
    def go() -> int:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"paho-{uuid.uuid4().hex[:6]}")
        c.max_inflight_messages_set(1000)
        c.connect("127.0.0.1", port)
        c.loop_start()
        publish_bounded(c, msgs)
        c.disconnect()
        c.loop_stop()
        return len(msgs)

    return _timed(go)


def throughput_run(port: int, pregen: list[Tick], n_devices: int, seed: int, links: int,
                   max_inflight: int) -> dict[str, float]:
    """Every (a) measurement once: msg/s and CPU us/msg per variant."""
    msgs = [m for tick in pregen for m in tick]
    out: dict[str, float] = {}
    for name, result in (
        ("wire_pregen", lambda: wire_throughput(port, pregen, links, max_inflight)),
        ("wire_generated", lambda: wire_throughput(
            port, ticks(payload_source(n_devices, seed, False)[1], len(msgs)), links,
            max_inflight)),
        ("wire_generated_lean", lambda: wire_throughput(
            port, ticks(payload_source(n_devices, seed, True)[1], len(msgs)), links,
            max_inflight)),
        ("aiomqtt", lambda: aiomqtt_throughput(port, msgs)),
        ("paho", lambda: paho_throughput(port, msgs)),
    ):
        r = result()
        out[f"{name}_rate"], out[f"{name}_us"] = r["rate"], r["us_cpu"]
    return out


# -- (b) connections -------------------------------------------------------------------------

class Device:
    """What (b) needs of a device client, whichever library speaks MQTT."""

    def __init__(self, status: str, client: WireClient | aiomqtt.Client) -> None:
        self.status, self.client = status, client
        self.ok = False
        self.sent = self.acked = 0


async def _wire_device(port: int, dev: str, status: str) -> Device:
    c = WireClient("127.0.0.1", port, client_id=dev, will=Will(status, b"offline"),
                   max_inflight=100)
    d = Device(status, c)
    await c.connect()
    c.publish_nowait(status, b"online", retain=True)
    d.ok = True
    return d


async def _aiomqtt_device(port: int, dev: str, status: str) -> Device:
    c = aiomqtt.Client("127.0.0.1", port, identifier=dev, max_inflight_messages=100, logger=QUIET,
                       will=aiomqtt.Will(status, b"offline", qos=1, retain=True))
    d = Device(status, c)
    await c.__aenter__()
    d.ok = True
    await _aiomqtt_publish(d, status, b"online", retain=True)
    return d


async def _aiomqtt_publish(d: Device, topic: str, payload: bytes, retain: bool = False
                           ) -> None:
    assert isinstance(d.client, aiomqtt.Client)
    d.sent += 1
    try:
        await d.client.publish(topic, payload, qos=1, retain=retain, timeout=30)
        d.acked += 1
    except aiomqtt.MqttError:
        d.ok = False


async def connections_run(port: int, epochs: list[Tick], clients: int, library: str,
                          concurrency: int = 200) -> dict[str, float]:
    """Connect ``clients`` devices, publish each second's messages from their own client,
    report. Devices of the scenario come first; ids it did not use in the window are
    idle devices (status only). Sent and acked count the retained "online" status too."""
    dev_of = {topic: topic.split("/")[2] for tick in epochs for topic, _ in tick}
    devices = sorted(set(dev_of.values()))[:clients]
    devices += [f"idle-{i:05d}" for i in range(clients - len(devices))]
    make = _wire_device if library == "wire" else _aiomqtt_device
    gate = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def join(dev: str) -> Device | None:
        async with gate:
            try:
                return await make(port, dev, f"telemetry/yantai/{dev}/status")
            except (WireError, aiomqtt.MqttError, OSError, TimeoutError):
                return None

    async def settle(d: Device) -> None:
        if isinstance(d.client, WireClient):
            with contextlib.suppress(WireError, TimeoutError):
                await asyncio.wait_for(d.client.flush(), 30)
            d.ok = d.client.connected
            d.sent, d.acked = d.client.sent, d.client.acked

    async def leave(d: Device) -> None:  # status "offline", then DISCONNECT (no will)
        async with gate:
            try:
                if isinstance(d.client, WireClient):
                    await d.client.publish(d.status, b"offline", retain=True)
                    await d.client.flush()
                    await d.client.disconnect()
                else:
                    await d.client.publish(d.status, b"offline", qos=1, retain=True)
                    await d.client.__aexit__(None, None, None)
            except (WireError, aiomqtt.MqttError, TimeoutError):
                pass

    t0 = time.perf_counter()
    made = await asyncio.gather(*(join(dev) for dev in devices))
    connect_s = time.perf_counter() - t0
    by_dev = {dev: d for dev, d in zip(devices, made, strict=True) if d is not None}
    live = list(by_dev.items())
    c0, start, lag = time.process_time(), loop.time() + 0.5, 0.0
    for k, tick in enumerate(epochs):  # each second's messages, spread over 10 slots
        for slot in range(10):
            at = start + k + slot / 10
            await asyncio.sleep(max(0.0, at - loop.time()))
            lag = max(lag, loop.time() - at)
            for topic, payload in tick[slot::10]:
                d = by_dev.get(dev_of[topic])
                if d is None:
                    continue
                if isinstance(d.client, WireClient):
                    try:
                        d.client.publish_nowait(topic, payload)
                    except WireError:
                        d.ok = False
                elif d.ok:
                    task = asyncio.create_task(_aiomqtt_publish(d, topic, payload))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
    steady_cpu = time.process_time() - c0
    if pending:
        await asyncio.wait(pending, timeout=60)
    await asyncio.gather(*(settle(d) for _, d in live))
    rss, peak = rss_mib()
    out = {"connected": len(live), "stayed": sum(d.ok for _, d in live),
           "sent": sum(d.sent for _, d in live), "acked": sum(d.acked for _, d in live),
           "connect_s": connect_s, "rss_mib": rss, "peak_rss_mib": peak,
           "cpu_s_per_s": steady_cpu / len(epochs), "max_tick_lag_ms": lag * 1e3}
    await asyncio.gather(*(leave(d) for _, d in live))
    return out


# -- report ----------------------------------------------------------------------------------

def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report_throughput(runs: list[dict[str, float]], n: int, links: int) -> None:
    """Medians and ratios of (a)."""
    print(f"\n(a) medians over {len(runs)} runs, {n:,} QoS 1 messages, {links} connections, "
          "one core:")
    for key in ("wire_pregen", "wire_generated", "wire_generated_lean", "aiomqtt", "paho"):
        print(f"  {key:<19} {_median(runs, key + '_rate'):>10,.0f} msg/s "
              f"{_median(runs, key + '_us'):>7.1f} us CPU/msg")
    wire = _median(runs, "wire_pregen_rate")
    gen = _median(runs, "wire_generated_rate")
    lean = _median(runs, "wire_generated_lean_rate")
    print(f"  / {TARGET_RATE:,} target: wire pre-generated {wire / TARGET_RATE:.2f}, "
          f"generated (mixed receivers) {gen / TARGET_RATE:.2f}, generated (RMC+GGA "
          f"receivers) {lean / TARGET_RATE:.2f}")
    for base in ("aiomqtt", "paho"):
        print(f"  wire / {base} = {wire / _median(runs, base + '_rate'):.1f}x msg/s, "
              f"{_median(runs, base + '_us') / _median(runs, 'wire_pregen_us'):.1f}x less CPU "
              "per message")


def report_connections(runs: dict[str, list[dict[str, float]]], clients: int,
                       seconds: int) -> None:
    """Medians of (b) per library."""
    print(f"\n(b) medians, {clients:,} devices, the scenario's messages for {seconds} s:")
    for lib, rs in runs.items():
        if not rs:
            continue
        m = {k: _median(rs, k) for k in rs[0]}
        print(f"  {lib:<8} connected {m['connected']:,.0f}, stayed {m['stayed']:,.0f} "
              f"(/ {TARGET_CONNECTIONS:,} target = {m['stayed'] / TARGET_CONNECTIONS:.2f}), "
              f"acked {m['acked']:,.0f} of {m['sent']:,.0f} sent, connect {m['connect_s']:.1f} s,"
              f" RSS {m['rss_mib']:.0f} MiB (peak {m['peak_rss_mib']:.0f}), CPU "
              f"{m['cpu_s_per_s']:.2f} s per scheduled second, worst tick lag "
              f"{m['max_tick_lag_ms']:.0f} ms")


def main() -> int:
    """Run the benchmark and print medians and ratios."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("throughput", "connections", "all"), default="all")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--messages", type=int, default=200_000, help="(a) messages per variant")
    ap.add_argument("--devices", type=int, default=5000, help="(a) devices (topics)")
    ap.add_argument("--links", type=int, default=4, help="(a) multiplexed connections")
    ap.add_argument("--max-inflight", type=int, default=1000, help="(a) per connection")
    ap.add_argument("--clients", type=int, default=5000, help="(b) device connections")
    ap.add_argument("--seconds", type=int, default=20, help="(b) publishing time")
    ap.add_argument("--aiomqtt-clients", type=int, default=None,
                    help="(b) aiomqtt devices (default --clients; 0 skips)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    nofile = raise_nofile()
    sim_cpu, broker_cpu = pin()
    with PrivateBroker() as broker:
        os.sched_setaffinity(0, {sim_cpu})
        print(f"simulator on cpu {sim_cpu}, mosquitto on cpu {broker_cpu}, "
              f"RLIMIT_NOFILE {nofile}", flush=True)
        if args.part in ("throughput", "all"):
            name, source = payload_source(args.devices, args.seed, False)
            t0 = time.perf_counter()
            pregen = list(ticks(source, args.messages))
            gen_s = time.perf_counter() - t0
            msgs = [m for tick in pregen for m in tick]
            size = statistics.mean(len(p) for _, p in msgs)
            nmea = sum(t.endswith("/nmea") for t, _ in msgs) / len(msgs)
            print(f"(a) payloads: {name}, mean {size:.0f} B, {nmea:.0%} nmea; generating "
                  f"{len(msgs):,} took {gen_s:.1f} s ({gen_s / len(msgs) * 1e6:.1f} us/msg)",
                  flush=True)
            runs = []
            for i in range(args.runs):
                r = throughput_run(broker.port, pregen, args.devices, args.seed, args.links,
                                   args.max_inflight)
                runs.append(r)
                print(f"run {i + 1}: " + ", ".join(
                    f"{k[:-5]} {v:,.0f}/s" if k.endswith("_rate") else f"{v:.1f} us"
                    for k, v in r.items()), flush=True)
            report_throughput(runs, len(msgs), args.links)
        if args.part in ("connections", "all"):
            name, source = payload_source(args.clients, args.seed + 1, False)
            now = time.time()
            epochs = [source(now + k) for k in range(args.seconds)]
            per_s = statistics.mean(map(len, epochs))
            print(f"(b) payloads: {name}, {per_s:,.0f} messages/s", flush=True)
            n_aio = args.clients if args.aiomqtt_clients is None else args.aiomqtt_clients
            res: dict[str, list[dict[str, float]]] = {"wire": [], "aiomqtt": []}
            for i in range(args.runs):
                for lib, n in (("wire", args.clients), ("aiomqtt", n_aio)):
                    if not n:
                        continue
                    r = asyncio.run(connections_run(broker.port, epochs, n, lib))
                    res[lib].append(r)
                    print(f"run {i + 1} {lib}: " + ", ".join(
                        f"{k} {v:,.2f}" for k, v in r.items()), flush=True)
            report_connections(res, args.clients, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
