"""Detector throughput: rows/s per detector family, batches of 10k rows, 100k devices of state.

Every device (sensor pair, tag) first reports often enough to leave each detector's
warm-up (untimed, ``WARM_VISITS``); then each run times ``--batches`` batches that visit
the devices round-robin (a device reports every ``devices / batch`` batches) with about
1% injected anomalies. Batches are generated before timing. Three runs; medians reported, with the
ratio to the target where the issue sets one (sensors 1M readings/s, movement 500k
fixes/s, on two cores).

    python bench/detectors.py [--devices N] [--batch N] [--batches N] [--only NAME]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from beiflow.processing.integrity import IntegrityState, check_integrity
from beiflow.processing.movement import US, MovementState, check_movement
from beiflow.processing.rfid_checks import RfidSites, RfidState, check_rfid
from beiflow.processing.sensors import SensorState, check_sensors
from beiflow.schemas.columns import POSITION_COLUMNS, FixFlag, empty_columns

TARGETS = {"movement": 500_000.0, "sensors": 1_000_000.0}
T0 = 1_717_200_000 * US
NAMES = ["temp_c", "humidity_pct"]


def _visits(devices: int, batch: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Devices of batch ``k`` (round-robin) and the time of their report."""
    start = (k * batch) % devices
    dev = (start + np.arange(batch)) % devices
    return dev.astype(np.int32), T0 + (k * batch + np.arange(batch)) // devices * 10 * US \
        + (dev.astype(np.int64) % 1000) * 1000


def positions(devices: int, batch: int, k: int, rng: np.random.Generator,
              with_sky: bool = False) -> dict[str, np.ndarray]:
    dev, t = _visits(devices, batch, k)
    c = empty_columns(POSITION_COLUMNS, batch)
    perm = rng.permutation(batch)                      # arrival order is not device order
    dev, t = dev[perm], t[perm]
    c["device"], c["time"] = dev, t
    c["received_at"] = t + 300_000
    secs = (t - T0) / US
    lat0 = 36.0 + (dev % 1000) * 0.002
    lon0 = 120.0 + (dev // 1000) * 0.002
    c["lat"] = lat0 + secs * 1e-5 * ((dev % 7) > 1)
    c["lon"] = lon0 + secs * 1e-5
    c["speed_mps"] = np.where((dev % 7) > 1, 1.5, 0.0)
    c["fix_quality"][:] = 1
    c["hdop"] = rng.uniform(0.6, 2.0, batch)
    c["sats"][:] = 14
    odd = rng.random(batch)
    c["lat"][odd < 0.003] += 0.5                       # jumps
    c["lat"][(odd >= 0.003) & (odd < 0.005)] = 0.0     # null island
    c["lon"][(odd >= 0.003) & (odd < 0.005)] = 0.0
    c["hdop"][(odd >= 0.005) & (odd < 0.01)] = 9.0      # poor fixes
    if with_sky:
        for name, sv, cn0 in (("gps", 9, 44.0), ("bds", 11, 41.0), ("glo", 6, 38.0),
                              ("gal", 7, 42.0)):
            c[f"sv_{name}"][:] = sv
            c[f"cn0_{name}_dbhz"] = cn0 + rng.normal(0, 1.0, batch)
        jam = odd >= 0.995
        c["cn0_gps_dbhz"][jam] -= 12
        c["cn0_glo_dbhz"][jam] = np.nan
        c["flags"][odd < 0.003] |= int(FixFlag.JUMP)   # as check_movement would set it
    return c


def readings(devices: int, batch: int, k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    pairs = devices * len(NAMES)
    start = (k * batch) % pairs
    pair = (start + np.arange(batch)) % pairs
    t = T0 + (k * batch + np.arange(batch)) // pairs * 60 * US + (pair % 1000) * 1000
    perm = rng.permutation(batch)
    pair, t = pair[perm], t[perm]
    metric = (pair % len(NAMES)).astype(np.int32)
    value = np.where(metric == 0, 5.0, 60.0) + rng.normal(0, 0.3, batch)
    odd = rng.random(batch)
    value[odd < 0.005] += 25.0
    return {"time": t, "received_at": t + 200_000, "value": value,
            "device": (pair // len(NAMES)).astype(np.int32), "metric": metric}


def rfid_reads(tags: int, batch: int, k: int, rng: np.random.Generator,
               epcs: np.ndarray) -> dict[str, np.ndarray]:
    tag, t = _visits(tags, batch, k)
    reader = ((tag + k // 100) % 200).astype(np.int32)   # tags move on now and then
    reader[rng.random(batch) < 0.003] = 199            # a far-away reader: travel checks
    perm = rng.permutation(batch)
    return {"time": t[perm], "received_at": t[perm], "epc": epcs[tag[perm]],
            "device": reader[perm]}


def sites() -> RfidSites:
    r = np.arange(200)
    lat = 37.5 + (r % 20) * 0.0005
    lon = 121.4 + (r // 20) * 0.0005
    lat[199] = 39.9
    zone = (r % 10).astype(np.int64)                    # zone 0 is a cold store
    return RfidSites(lat, lon, zone, np.array([1] + [0] * 9), np.array([False, True]))


#: Visits per device before timing: enough for every detector to leave its warm-up.
WARM_VISITS = {"movement": 8, "integrity": 31, "sensors": 31, "rfid": 1}


def _make(name: str, devices: int, batch: int, k: int, rng: np.random.Generator,
          epcs: np.ndarray) -> dict[str, np.ndarray]:
    if name in ("movement", "integrity"):
        return positions(devices, batch, k, rng, with_sky=name == "integrity")
    if name == "sensors":
        return readings(devices, batch, k, rng)
    return rfid_reads(devices, batch, k, rng, epcs)


def _checker(name: str, devices: int) -> Callable[[dict[str, np.ndarray]], object]:
    """The family's check function over fresh state."""
    if name == "movement":
        mstate, kinds = MovementState(), (np.arange(devices) % 2).astype(np.int8)
        return lambda data: check_movement(data, mstate, device_kind=kinds)
    if name == "integrity":
        istate = IntegrityState()
        return lambda data: check_integrity(data, istate)
    if name == "sensors":
        sstate = SensorState()
        return lambda data: check_sensors(data, NAMES, sstate)
    rstate, where = RfidState(), sites()
    return lambda data: check_rfid(data, rstate, where)


def bench(name: str, devices: int, batch: int, batches: int) -> float:
    """Median rows/s of three runs of one detector family (warm-up untimed)."""
    rows_per_visit = devices * (len(NAMES) if name == "sensors" else 1)
    warm = -(-rows_per_visit * WARM_VISITS[name] // batch)
    epcs = np.array([f"E280{i:020X}" for i in range(devices)], dtype=object)
    rates = []
    for run in range(3):
        rng = np.random.default_rng(run)
        check = _checker(name, devices)
        for k in range(warm):
            check(_make(name, devices, batch, k, rng, epcs))
        timed = [_make(name, devices, batch, k, rng, epcs) for k in range(warm, warm + batches)]
        start = time.perf_counter()
        for data in timed:
            check(data)
        rates.append(batch * batches / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--only", choices=["movement", "integrity", "sensors", "rfid"])
    args = ap.parse_args()
    print(f"{args.devices} devices of state, batches of {args.batch} rows, "
          f"{args.batches} timed batches per run, median of 3 runs")
    for name in ("movement", "integrity", "sensors", "rfid"):
        if args.only and name != args.only:
            continue
        rate = bench(name, args.devices, args.batch, args.batches)
        target = TARGETS.get(name)
        ratio = f"  {rate / target:.2f}x target ({target:,.0f}/s)" if target else ""
        print(f"{name:10s} {rate:14,.0f} rows/s{ratio}")


if __name__ == "__main__":
    main()
