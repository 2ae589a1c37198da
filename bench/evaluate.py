"""Precision and recall of the detectors per anomaly kind, on labelled series.

Sources: an excerpt of NAB's machine-temperature series with NAB's labelled window
(``tests/data/labelled``, real data; see its README for origin and licence), and
synthetic scenarios built here from a seeded RNG for every kind, with confounders that
must not be reported. Detectors run batch by batch with state carried over, as in the
pipeline. Nothing is fetched from the network.

A label is (kind, device, start, end); a detection of kind K on a device is a true
positive when its time falls within a label of kind K on that device (widened by the
kind's tolerance) or of a kind listed in ``ALSO[K]`` (the statistical detector is right to
fire on any injected value anomaly; a glitch out of range is also a fast change).
Precision = true-positive detections / detections; recall = labels with at least one
detection of their kind / labels.

    python bench/evaluate.py [--seed N]
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from beiflow.processing.config import DeviceKind, IntegrityConfig, SensorConfig
from beiflow.processing.events import AnomalyBatch
from beiflow.processing.integrity import IntegrityState, check_integrity
from beiflow.processing.movement import (
    EARTH_RADIUS_M,
    US,
    MovementState,
    check_movement,
    check_offline,
)
from beiflow.processing.rfid_checks import RfidSites, RfidState, check_rfid
from beiflow.processing.sensors import SensorState, check_sensors
from beiflow.schemas.columns import CONSTELLATIONS, POSITION_COLUMNS, FixFlag, empty_columns

LABELLED = Path(__file__).resolve().parent.parent / "tests" / "data" / "labelled"
T0 = 1_717_200_000 * US
DEG_M = EARTH_RADIUS_M * np.pi / 180
#: Extra seconds around a label within which a detection still counts.
TOLERANCE_S = {"moving": 30.0, "stopped": 30.0, "offline": 60.0}
#: Detections of the key kind also count inside labels of these kinds.
ALSO = {
    "statistical": ("out_of_range", "rate_of_change", "stuck", "cold_chain_excursion"),
    "rate_of_change": ("out_of_range",),
}


@dataclass
class Labelled:
    """Labels and detections of one scenario."""

    labels: list[tuple[str, int, int, int]] = field(default_factory=list)
    found: list[tuple[str, int, int]] = field(default_factory=list)

    def label(self, kind: str, device: int, start_us: int, end_us: int | None = None) -> None:
        self.labels.append((kind, int(device), int(start_us), int(start_us if end_us is None
                                                                  else end_us)))

    def add(self, a: AnomalyBatch) -> None:
        self.found += [(str(k), int(d), int(t)) for k, d, t in
                       zip(a.kind, a.device, a.time, strict=True)]

    def flagged(self, kind: str, device: np.ndarray, time: np.ndarray) -> None:
        self.found += [(kind, int(d), int(t)) for d, t in zip(device, time, strict=True)]

    def score(self) -> dict[str, tuple[int, int, int, int]]:
        """kind -> (labels, detections, true-positive detections, labels found)."""
        out: dict[str, tuple[int, int, int, int]] = {}
        kinds = sorted({k for k, *_ in self.labels} | {k for k, *_ in self.found})
        for kind in kinds:
            tol = int(TOLERANCE_S.get(kind, 0.0) * US)
            ok_kinds = (kind, *ALSO.get(kind, ()))
            own = [lb for lb in self.labels if lb[0] == kind]
            near = [lb for lb in self.labels if lb[0] in ok_kinds]
            found = [f for f in self.found if f[0] == kind]

            tp = sum(_hit(f, near, tol) for f in found)
            seen = sum(any(_hit(f, [lb], tol) for f in found) for lb in own)
            out[kind] = (len(own), len(found), tp, seen)
        return out


def _hit(f: tuple[str, int, int], labels: list[tuple[str, int, int, int]], tol: int) -> bool:
    return any(lb[1] == f[1] and lb[2] - tol <= f[2] <= lb[3] + tol for lb in labels)


# ---------------------------------------------------------------- movement


def movement_scenario(rng: np.random.Generator) -> Labelled:
    """Trucks and vessels over an hour, 5 s fixes, batches of 30 s.

    Each device's hour is cut into 5-minute slots; injected events get their own slots.
    """
    ev = Labelled()
    devices, step_s, span_s, slot = 60, 5, 3600, 60
    n = span_s // step_s
    kind = np.where(np.arange(devices) < 40, DeviceKind.ROAD, DeviceKind.VESSEL).astype(np.int8)
    rows: list[dict[str, np.ndarray]] = []
    status_offline: dict[int, int] = {}
    for d in range(devices):
        t = np.arange(n) * step_s * US + T0 + d * 37_000
        # slot 0 settles, slots 9-10 hold the offline gap, slot 11 the clock ahead
        stop1, stop2, crawl, null, poor, jumps = (1 + rng.permutation(8)[:6]) * slot
        cruise = rng.uniform(10, 25) if kind[d] == DeviceKind.ROAD else rng.uniform(4, 7)
        speed = np.full(n, cruise)
        for a in (stop1 + 10, stop2 + 10):                       # stops of 2-3.5 minutes
            b = a + int(rng.integers(24, 42))
            speed[a:b] = 0.0
            ev.label("stopped", d, t[a] + 60 * US, t[b - 1])
            ev.label("moving", d, t[b], t[b] + 10 * US)
        speed[crawl + 10:crawl + 16] = 0.0                       # a 30 s stop: no event
        speed[crawl + 30:crawl + 50] = 1.0                       # a crawl: neither
        heading = rng.uniform(0, 2 * np.pi)
        dist = np.concatenate([[0.0], np.cumsum(speed[:-1] * step_s)])
        lat = 37.0 + d * 0.02 + dist * np.cos(heading) / DEG_M + rng.normal(0, 3 / DEG_M, n)
        lon = 121.0 + dist * np.sin(heading) / DEG_M / 0.8 + rng.normal(0, 3 / DEG_M, n)
        c = empty_columns(POSITION_COLUMNS, n)
        c.update(time=t, received_at=t + rng.integers(100_000, 900_000, n), lat=lat, lon=lon,
                 speed_mps=np.maximum(speed + rng.normal(0, 0.1, n), 0.0),
                 device=np.full(n, d, np.int32))
        c["fix_quality"][:] = 1
        c["hdop"] = rng.uniform(0.7, 1.8, n)
        keep = np.ones(n, bool)
        for i in (jumps + 10, jumps + 30, jumps + 50):           # spikes
            c["lat"][i] += rng.uniform(2_000, 20_000) / DEG_M
            ev.label("jump", d, t[i])
        i, m = null + 20, int(rng.integers(1, 5))                # null island episode
        c["lat"][i:i + m] = 0.0
        c["lon"][i:i + m] = 0.0
        ev.label("null_island", d, t[i], t[i + m - 1])
        i, m = poor + 20, int(rng.integers(5, 20))               # poor fixes
        c["hdop"][i:i + m] = rng.uniform(6, 12, m)
        c["fix_quality"][i + m // 2] = 0
        ev.label("poor_fix", d, t[i], t[i + m - 1])
        if d % 6 == 0:                                           # clock 1 h ahead at the end
            c["time"][-6:] += 3600 * US
            ev.label("clock_future", d, c["time"][-6], c["time"][-1])
        if d % 5 == 1:                                           # 10 minutes silent
            off = 9 * slot
            keep[off:off + 2 * slot] = False
            ev.label("offline", d, t[off - 1] + 300 * US, t[off + 2 * slot])
        if d % 10 == 2:                                          # the status topic: offline
            status_offline[d] = int(t[n // 2])
            ev.label("offline", d, t[n // 2], t[n // 2] + 30 * US)
        rows.append({k: v[keep] for k, v in c.items()})
        # redelivered fixes (duplicates) and late buffered fixes (time backwards)
        extra = empty_columns(POSITION_COLUMNS, 4)
        src = np.sort(rng.choice(np.flatnonzero(keep[20:-20]) + 20, 4, replace=False))
        for name, col in c.items():
            extra[name] = col[src].copy()
        extra["received_at"] = extra["received_at"] + np.array([10, 12, 400, 600]) * US
        extra["time"][2:] += 2 * US                              # never sent before
        extra["lat"][2:] += 1 / DEG_M
        for j in range(2):
            ev.label("duplicate", d, extra["time"][j])
        for j in (2, 3):
            ev.label("time_backwards", d, extra["time"][j])
        rows.append(extra)
    allrows = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    received = allrows["received_at"]
    st = MovementState()
    edges = np.arange(T0, received.max() + 30 * US, 30 * US)
    for lo, hi in itertools.pairwise(edges):
        idx = rng.permutation(np.flatnonzero((received >= lo) & (received < hi)))
        if idx.size:
            batch = {k: v[idx] for k, v in allrows.items()}
            r = check_movement(batch, st, device_kind=kind)
            ev.add(r.anomalies)
            dup = (r.flags & int(FixFlag.DUPLICATE)) != 0
            ev.flagged("duplicate", batch["device"][dup], batch["time"][dup])
        if hi <= T0 + span_s * US:                               # while the devices report
            said = np.array([d for d, ts in status_offline.items() if lo <= ts < hi], np.intp)
            ev.add(check_offline(st, int(hi), status_offline=said))
    return ev


# ---------------------------------------------------------------- GNSS integrity


def integrity_scenario(rng: np.random.Generator) -> Labelled:
    """40 receivers, 1 s fixes for 30 minutes, jammers, spoofers, blockage, glitches."""
    ev = Labelled()
    devices, n = 40, 1800
    base = {"gps": (42, 47), "bds": (39, 44), "glo": (36, 41), "gal": (40, 44)}
    parts = []
    for d in range(devices):
        t = T0 + np.arange(n) * US
        c = empty_columns(POSITION_COLUMNS, n)
        c.update(time=t, received_at=t + 200_000, device=np.full(n, d, np.int32))
        c["lat"] = 36.9 + d * 0.01 + np.arange(n) * 8 / DEG_M + rng.normal(0, 2 / DEG_M, n)
        c["lon"] = np.full(n, 121.5) + rng.normal(0, 2 / DEG_M, n)
        c["fix_quality"][:] = 1
        c["hdop"][:] = 0.9
        drift = np.sin(np.arange(n) / n * 2 * np.pi + rng.uniform(0, 6)) * 1.5
        cn0 = {k: rng.uniform(*v) + drift + rng.normal(0, 0.7, n) for k, v in base.items()}
        for k in base:
            c[f"sv_{k}"][:] = int(rng.integers(6, 11))
        if d % 3 == 0:                                           # a jammer drives by
            a = int(rng.integers(300, 1200))
            length = int(rng.integers(60, 180))
            depth = rng.uniform(10, 18)
            ramp = np.clip(np.minimum(np.arange(length) / 20, (length - np.arange(length)) / 20),
                           0, 1) * depth
            for k in base:
                cn0[k][a:a + length] -= ramp
            ev.label("jamming", d, t[a], t[a + length - 1])
        if d % 4 == 1:                                           # blockage, not jamming
            a = int(rng.integers(300, 1500))
            for k in base:
                cn0[k][a:a + 20] -= 3
            cn0["glo"][a:a + 20] = np.nan
        if d % 5 == 2:                                           # a spoofer takes over
            a = int(rng.integers(600, 1500))
            level = np.mean([v[a - 60:a].mean() for v in cn0.values()]) + rng.uniform(3, 6)
            for k in base:
                cn0[k][a:a + 60] = level + rng.normal(0, 0.3, 60)
            c["lat"][a:a + 60] += 0.05
            ev.label("spoofing", d, t[a], t[a + 59])
        if d % 5 == 3:                                           # a multipath glitch
            a = int(rng.integers(300, 1500))
            c["lat"][a] += 2_000 / DEG_M
        for k in base:
            lost = cn0[k] < 27                                   # below the tracking floor
            c[f"cn0_{k}_dbhz"] = np.where(lost, np.nan, cn0[k])
        c["flags"][np.isnan(np.stack([c[f"cn0_{k}_dbhz"] for k in base])).all(axis=0)] = \
            int(FixFlag.NO_FIX)
        parts.append(c)
    allrows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    assert set(CONSTELLATIONS) >= set(base)
    mst, ist = MovementState(), IntegrityState()
    for lo in range(0, n, 10):
        t = allrows["time"]
        idx = rng.permutation(np.flatnonzero((t >= T0 + lo * US) & (t < T0 + (lo + 10) * US)))
        batch = {k: v[idx] for k, v in allrows.items()}
        moved = check_movement(batch, mst)
        ev.add(check_integrity(batch, ist, flags=moved.flags, config=IntegrityConfig()).anomalies)
    return ev


# ---------------------------------------------------------------- sensors


def _batches(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def sensor_scenario(rng: np.random.Generator) -> Labelled:
    """30 reefers (temp_c, door_open) sampled every minute for a day."""
    ev = Labelled()
    devices, n = 30, 1440
    names = ["temp_c", "door_open"]
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("time", "value", "device", "metric")}
    for d in range(devices):
        t = T0 + np.arange(n) * 60 * US
        temp = 5.0 + rng.normal(0, 0.15, n)
        for start in range(300, n, 360):                         # defrost cycles
            temp[start:start + 20] += np.linspace(0, 0.8, 20)
        door = np.zeros(n)
        for _ in range(3):                                       # loading: 2 minutes
            a = int(rng.integers(0, n - 5))
            door[a:a + 2] = 1.0
        a = int(rng.integers(100, n - 40))                       # left open 8-20 minutes
        m = int(rng.integers(8, 20))
        door[a:a + m] = 1.0
        ev.label("door_open", d, t[a] + 300 * US, t[a + m - 1])
        slots = rng.permutation(np.arange(60, n - 200, 180))[:6]
        spike, shift, excursion, short, stuck, glitch = slots
        temp[spike] += rng.uniform(2.0, 2.8)
        ev.label("statistical", d, t[spike])
        temp[shift:shift + 30] += 2.0
        ev.label("statistical", d, t[shift], t[shift + 29])
        m = int(rng.integers(40, 90))
        temp[excursion:excursion + m] = rng.uniform(9, 11) + rng.normal(0, 0.15, m)
        ev.label("cold_chain_excursion", d, t[excursion] + 1800 * US, t[excursion + m - 1])
        ev.label("statistical", d, t[excursion], t[excursion + m - 1])
        temp[short:short + 15] = 9.0 + rng.normal(0, 0.15, 15)  # 15 min: no excursion
        ev.label("statistical", d, t[short], t[short + 14])
        temp[stuck:stuck + 120] = round(temp[stuck - 1], 2)
        ev.label("stuck", d, t[stuck] + 3600 * US, t[stuck + 120])  # up to the first live value
        if d % 2:
            temp[glitch] = rng.choice([-99.0, 150.0])
            ev.label("out_of_range", d, t[glitch], t[glitch + 1])   # and the way back
        else:
            temp[glitch] = 40.0                                  # in range, too fast
            ev.label("rate_of_change", d, t[glitch], t[glitch + 1])
        for metric, v in enumerate((temp, door)):
            cols["time"].append(t)
            cols["value"].append(v)
            cols["device"].append(np.full(n, d, np.int32))
            cols["metric"].append(np.full(n, metric, np.int32))
    data = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.argsort(data["time"], kind="stable")
    data = {k: v[order] for k, v in data.items()}
    data["received_at"] = data["time"]
    st = SensorState()
    for s in _batches(order.size, 2000):
        ev.add(check_sensors({k: v[s] for k, v in data.items()}, names, st).anomalies)
    return ev


def nab_scenario() -> Labelled:
    """NAB machine temperature excerpt, one reading every 5 minutes, batches of 50."""
    ev = Labelled()
    rows = [line.split(",") for line in
            (LABELLED / "nab_machine_temperature_excerpt.csv").read_text().splitlines()[1:]]
    t = np.array([np.datetime64(r[0].replace(" ", "T"), "us").astype(np.int64) for r in rows])
    v = np.array([float(r[1]) for r in rows])
    labels = json.loads((LABELLED / "nab_machine_temperature_labels.json").read_text())
    for start, end in labels["windows"]:
        lo, hi = (np.datetime64(x.replace(" ", "T"), "us").astype(np.int64) for x in (start, end))
        ev.label("statistical", 0, lo, hi)
    st = SensorState()
    zeros = np.zeros(v.size, np.int32)
    for s in _batches(v.size, 50):
        batch = {"time": t[s], "received_at": t[s], "value": v[s], "device": zeros[s],
                 "metric": zeros[s]}
        ev.add(check_sensors(batch, [labels["metric"]], st, config=SensorConfig()).anomalies)
    return ev


# ---------------------------------------------------------------- RFID


def rfid_scenario(rng: np.random.Generator) -> Labelled:
    """Pallets from a chilled store over a chilled dock to port gates 5-9 km apart."""
    ev = Labelled()
    chilled, ambient = 1, 0
    # readers: 0-1 chilled store, 2-3 chilled dock, 4 ambient staging, 5-7 gates (no zone)
    lat = np.array([37.50, 37.5002, 37.5010, 37.5012, 37.5020, 37.55, 37.58, 37.45])
    lon = np.array([121.40, 121.4002, 121.4010, 121.4012, 121.4020, 121.45, 121.38, 121.44])
    zone = np.array([0, 0, 1, 1, 2, -1, -1, -1])
    sites = RfidSites(lat, lon, zone, np.array([chilled, chilled, ambient]),
                      np.array([False, True]))
    tags = 300
    reads: list[tuple[int, int, str]] = []
    for k in range(tags):
        epc = f"E2801160{k:016X}"
        t = T0 + int(rng.integers(0, 3600)) * US
        path = [int(rng.integers(0, 2)), int(rng.integers(2, 4))]
        if k % 10 == 0:
            path.append(4)                                       # left at ambient staging
        path.append(int(rng.integers(5, 8)))
        for hop, reader in enumerate(path):
            burst = int(rng.integers(3, 12))
            times = t + np.sort(rng.integers(0, 4_000_000, burst))
            for j, ts in enumerate(times):
                reads.append((int(ts), reader, epc))
                if j:
                    ev.label("duplicate_read", reader, int(ts))
            if reader == 4:
                ev.label("cold_chain_exit", reader, int(times[0]))
            gap = 600 if hop + 1 < len(path) and path[hop + 1] >= 5 else 120
            t = int(times[-1]) + int(rng.integers(gap, 2 * gap)) * US
        if k % 15 == 0:                                          # a cloned tag far away
            far = 7 if path[-1] != 7 else 6
            ts = t + 20 * US
            reads.append((ts, far, epc))
            ev.label("impossible_travel", far, ts)
    reads.sort()
    t = np.array([r[0] for r in reads], np.int64)
    batch_all = {"time": t, "received_at": t, "device": np.array([r[1] for r in reads], np.int32),
                 "epc": np.array([r[2] for r in reads], dtype=object)}
    st = RfidState()
    for s in _batches(t.size, 500):
        part = {k: v[s] for k, v in batch_all.items()}
        r = check_rfid(part, st, sites)
        ev.add(r.anomalies)
        dup = ~r.first_in_window
        ev.flagged("duplicate_read", part["device"][dup], part["time"][dup])
    return ev


def report(title: str, ev: Labelled) -> None:
    print(f"\n{title}")
    print(f"  {'kind':22s} {'labels':>6s} {'found':>6s} {'precision':>9s} {'recall':>7s}")
    for kind, (labels, found, tp, seen) in ev.score().items():
        precision = f"{tp / found:.3f}" if found else "-"
        recall = f"{seen / labels:.3f}" if labels else "-"
        print(f"  {kind:22s} {labels:6d} {found:6d} {precision:>9s} {recall:>7s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    report("NAB machine_temperature_system_failure excerpt (real, public; labels: NAB v1.1)",
           nab_scenario())
    report("sensors: 30 reefers x (temp_c, door_open), 1 min, 24 h (synthetic)",
           sensor_scenario(np.random.default_rng([args.seed, 1])))
    report("movement: 40 trucks + 20 vessels, 5 s fixes, 1 h (synthetic)",
           movement_scenario(np.random.default_rng([args.seed, 2])))
    report("GNSS integrity: 40 receivers, 1 s fixes, 30 min (synthetic)",
           integrity_scenario(np.random.default_rng([args.seed, 3])))
    report("RFID: 300 pallets, chilled store -> dock -> port gates (synthetic)",
           rfid_scenario(np.random.default_rng([args.seed, 4])))


if __name__ == "__main__":
    main()
