"""Fixed UHF RFID readers at Yantai port gates and warehouse doors, publishing
``schemas/rfid.json`` batches, with labelled impossible-travel and cold-chain injections.

Readers: the Main and East gate portals (at the centroids of the ``gate-main`` and
``gate-east`` fences) and dock-door portals of a cold store (zone ``cold-store-1``, kind
``cold``) and a dry warehouse (``warehouse-1``, kind ``dry``), ~300 m apart west of
the port road; the fences file has no buildings, so those two positions are assumed.
Gates have no zone: a cold pallet leaving the port in a reefer truck is no cold-chain
exit. :meth:`GateReaders.sites` is what operators register in ``devices``.

Tags are SGTIN-96 (GS1 EPC Tag Data Standard, partition table in ``ingest.rfid``): one
per truck, derived from its device id (GS1 company prefix 6970123, filter 0), and pallet
tags (filter 6, unit load) of four products under Chinese GS1 prefixes of 7 to 10 digits,
serials counting up.

A passage: the vehicle moves along the lane at a constant speed (trucks 3..5 m/s at a
gate, forklifts 1.5..2.5 m/s at a door); every tag sits at its own offset on the vehicle
with its own orientation loss (0..6 dB). Each antenna (two per portal, at different
positions, distances and gains) sees the tag at distance ``d`` with backscatter path loss
RSSI = -30 dBm + gains - 40 log10(d / 1 m) + 1 dB multipath noise, saturating at
-40 dBm; the reader inventories one antenna per 0.1 s round and reads a tag with
probability 0.8 * clip((RSSI + 75) / 10, 0, 1), shared among more than 20 tags (so a few
reads per second per tag and antenna, none below -75 dBm, and every tag at least once at
its strongest round). Phase is the round-trip phase at 922.375 MHz plus a per-tag offset.
Limits: no tag-to-tag shadowing, no reflections, no cross-reads between portals.

Randomness comes from one ``numpy.random.Generator`` seeded by ``seed``: the same calls
in the same order give the same bytes. Readers that published nothing for
``heartbeat_s`` are listed by :meth:`GateReaders.heartbeats` (publish ``online`` on their
status topic: the pipeline flags devices silent for 300 s as offline).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from beiflow.devices.simulators.labels import Label
from beiflow.ingest.geofences import Site
from beiflow.processing.config import RfidConfig
from beiflow.processing.movement import haversine_m

FENCES = Path(__file__).parent / "data" / "yantai_port.geojson"
#: GS1 TDS SGTIN partition table: company prefix digits -> partition value.
_PARTITION = {12: 0, 11: 1, 10: 2, 9: 3, 8: 4, 7: 5, 6: 6}
_CP_BITS = (40, 37, 34, 30, 27, 24, 20)
WAVELENGTH_M = 299_792_458.0 / 922.375e6
TRUCK_PREFIX, TRUCK_ITEM = "6970123", "100001"
#: Pallet products: (company prefix, item reference with indicator digit, cold chain).
PRODUCTS: tuple[tuple[str, str, bool], ...] = (
    ("6901234", "112345", True),  # frozen prawns
    ("69212345", "10023", True),  # chilled apples
    ("693456789", "1001", False),  # canned tea
    ("6971234567", "101", False),  # machine parts
)
#: Reads per message at most (~100 bytes each: well under the 64 KiB payload limit).
MAX_READS = 500
_DEFAULT_RFID = RfidConfig()


def sgtin96(company_prefix: str, item_ref: str, serial: int, filter_value: int = 0) -> str:
    """SGTIN-96 EPC (24 upper-case hex digits): header 0x30, filter, partition, company
    prefix, indicator + item reference, serial (GS1 EPC Tag Data Standard)."""
    digits = len(company_prefix)
    if digits not in _PARTITION or len(company_prefix) + len(item_ref) != 13:
        raise ValueError("company prefix of 6..12 digits, 13 digits with the item reference")
    if not (company_prefix + item_ref).isdigit() or not 0 <= filter_value <= 7:
        raise ValueError("digits only; filter 0..7")
    if not 0 <= serial < 2**38:
        raise ValueError("serial must fit 38 bits")
    part = _PARTITION[digits]
    cp_bits = _CP_BITS[part]
    value = (0x30 << 88 | filter_value << 85 | part << 82 | int(company_prefix) << (82 - cp_bits)
             | int(item_ref) << 38 | serial)
    return f"{value:024X}"


@dataclass(frozen=True, slots=True)
class Antenna:
    """An antenna: position along the lane (m), distance from the lane (m), gain (dB)."""

    along_m: float
    across_m: float
    gain_db: float


@dataclass(frozen=True, slots=True)
class Reader:
    """A fixed reader portal."""

    device_id: str
    name: str
    lat: float
    lon: float
    zone: str | None
    zone_kind: str | None
    antennas: tuple[Antenna, ...]
    speed_mps: tuple[float, float]


def _centroid(feature: dict) -> tuple[float, float]:
    ring = feature["geometry"]["coordinates"][0][:-1]
    return (sum(p[1] for p in ring) / len(ring), sum(p[0] for p in ring) / len(ring))


def _readers(fences: Path) -> tuple[Reader, ...]:
    by_id = {f["id"]: f for f in json.loads(fences.read_text())["features"]}
    gate = (Antenna(0.0, 2.5, 0.0), Antenna(0.8, 4.0, -2.0))
    door = (Antenna(0.0, 1.2, 0.0), Antenna(0.3, 1.8, -1.5))
    out = []
    for fence, rid in (("gate-main", "rfid-gate-main"), ("gate-east", "rfid-gate-east")):
        lat, lon = _centroid(by_id[fence])
        out.append(Reader(rid, by_id[fence]["properties"]["name"], lat, lon, None, None, gate,
                          (3.0, 5.0)))
    out.append(Reader("rfid-cold-store-1", "Cold store 1 dock door", 37.5515, 121.3810,
                      "cold-store-1", "cold", door, (1.5, 2.5)))
    out.append(Reader("rfid-warehouse-1", "Dry warehouse 1 dock door", 37.5530, 121.3840,
                      "warehouse-1", "dry", door, (1.5, 2.5)))
    return tuple(out)


#: A scheduled read: time (Unix ms), EPC, antenna, RSSI (dBm), phase (degrees).
_Read = tuple[int, str, int, float, float]


class GateReaders:
    """The port's readers: schedule passages, poll the batches due, inject anomalies."""

    def __init__(self, *, seed: int, site: str = "yantai", fences: Path = FENCES,
                 heartbeat_s: float = 60.0) -> None:
        self.site = site
        self.heartbeat_s = heartbeat_s
        self.readers = {r.device_id: r for r in _readers(fences)}
        self._rng = np.random.default_rng(seed)
        self._pending: dict[str, list[_Read]] = {r: [] for r in self.readers}
        self._published = dict.fromkeys(self.readers, -math.inf)
        self._serial = {p[0] + p[1]: int(self._rng.integers(10**6, 10**9)) for p in PRODUCTS}

    def sites(self) -> list[Site]:
        """Reader positions and zones as operators register them in ``devices``."""
        return [Site(r.device_id, self.site, r.lat, r.lon, r.zone, r.zone_kind)
                for r in self.readers.values()]

    @staticmethod
    def truck_epc(device_id: str) -> str:
        """The truck's windscreen tag: serial from a hash of its device id."""
        h = int.from_bytes(hashlib.blake2b(device_id.encode(), digest_size=8).digest(), "big")
        return sgtin96(TRUCK_PREFIX, TRUCK_ITEM, h % 2**38)

    def pallet_epcs(self, n: int, *, cold: bool = False) -> list[str]:
        """``n`` new pallet tags of cold-chain (or dry) products, serials counting up."""
        products = [p for p in PRODUCTS if p[2] == cold]
        out = []
        for j in self._rng.integers(0, len(products), n).tolist():
            cp, item, _ = products[j]
            self._serial[cp + item] += 1
            out.append(sgtin96(cp, item, self._serial[cp + item], filter_value=6))
        return out

    def _reads(self, reader: Reader, t: float, epcs: Sequence[str],
               speed_mps: float | None) -> list[_Read]:
        """Reads of a passage whose front passes the portal at ``t``, in time order."""
        rng = self._rng
        v = float(rng.uniform(*reader.speed_mps)) if speed_mps is None else speed_mps
        n = len(epcs)
        offset = np.concatenate([[0.0], rng.uniform(1.0, 8.0, n - 1)]) if n else np.empty(0)
        loss = rng.uniform(0.0, 6.0, n)
        lateral = rng.uniform(-0.4, 0.4, n)
        phase0 = rng.uniform(0.0, 360.0, (n, len(reader.antennas)))
        reach = 15.0
        rounds = np.arange(-reach / v, (reach + offset.max(initial=0.0)) / v, 0.1)
        ant = np.arange(rounds.size) % len(reader.antennas)
        along = np.array([a.along_m for a in reader.antennas])[ant]
        across = np.array([a.across_m for a in reader.antennas])[ant]
        gain = np.array([a.gain_db for a in reader.antennas])[ant]
        x = v * rounds[None, :] - offset[:, None] - along[None, :]
        d = np.hypot(x, across[None, :] + lateral[:, None])
        rssi = (-30.0 + gain[None, :] - loss[:, None] - 40.0 * np.log10(d)
                + rng.normal(0.0, 1.0, d.shape))
        p = 0.8 * np.clip((rssi + 75.0) / 10.0, 0.0, 1.0) / max(1.0, n / 20.0)
        hit = rng.random(d.shape) < p
        hit[np.arange(n), np.argmax(rssi, axis=1)] = True  # read at least once
        rssi = np.minimum(rssi, -40.0)
        phase = (720.0 * d / WAVELENGTH_M + phase0[:, ant]) % 360.0
        tag, r = np.nonzero(hit)
        t_ms = np.round((t + rounds[r]) * 1000).astype(np.int64)
        order = np.lexsort((tag, t_ms))
        return [(int(t_ms[o]), epcs[tag[o]], int(ant[r[o]]) + 1,
                 round(float(rssi[tag[o], r[o]]), 1), round(float(phase[tag[o], r[o]]), 1) % 360.0)
                for o in order.tolist()]

    def passage(self, t: float, reader_id: str, epcs: Sequence[str], *,
                speed_mps: float | None = None) -> None:
        """Schedule a vehicle carrying ``epcs`` (its own tag first) through the portal,
        passing the antennas at ``t``; reads span a few seconds around ``t``."""
        self._pending[reader_id].extend(self._reads(self.readers[reader_id], t, epcs,
                                                    speed_mps))

    def poll(self, t: float) -> list[tuple[str, bytes]]:
        """Batches ``(reader_id, payload)`` of the reads up to ``t`` not yet published:
        one message per reader with reads (more if over :data:`MAX_READS`)."""
        now = round(t * 1000)
        stamp = datetime.fromtimestamp(now / 1000, UTC).isoformat(timespec="milliseconds")
        out = []
        for rid, pending in self._pending.items():
            due = sorted(r for r in pending if r[0] <= now)
            if not due:
                continue
            self._pending[rid] = [r for r in pending if r[0] > now]
            self._published[rid] = t
            for s in range(0, len(due), MAX_READS):
                reads = [{"epc": e, "antenna": a, "rssi_dbm": rssi, "time": ms, "phase_deg": ph}
                         for ms, e, a, rssi, ph in due[s:s + MAX_READS]]
                doc = {"reads": reads, "reader_time": stamp.replace("+00:00", "Z")}
                out.append((rid, json.dumps(doc, separators=(",", ":")).encode()))
        return out

    def heartbeats(self, t: float) -> list[str]:
        """Readers that published nothing for ``heartbeat_s`` (all at the first call)."""
        quiet = [r for r, last in self._published.items() if t - last >= self.heartbeat_s]
        for r in quiet:
            self._published[r] = t
        return quiet

    def _check_trip(self, a: str, b: str, elapsed_s: float, *, impossible: bool) -> None:
        """Raise unless the trip a -> b in ``elapsed_s`` is (im)possible per the defaults."""
        ra, rb = self.readers[a], self.readers[b]
        dist = float(haversine_m(np.array([ra.lat]), np.array([ra.lon]),
                                 np.array([rb.lat]), np.array([rb.lon]))[0])
        # reads that do not follow each other interleave: a trip back and forth
        speed = dist / (elapsed_s + _DEFAULT_RFID.time_slack_s) if elapsed_s > 0 else math.inf
        fast = dist > _DEFAULT_RFID.min_distance_m and speed > _DEFAULT_RFID.max_speed_kmh / 3.6
        if fast != impossible:
            raise ValueError(f"{a} -> {b}: {dist:.0f} m in {elapsed_s:.1f} s is "
                             f"{'not ' if impossible else ''}an impossible trip")

    def impossible_travel(self, t: float, epc: str, reader_a: str,
                          reader_b: str) -> list[Label]:
        """The tag passes ``reader_a`` at ``t`` and, a second after its last read there,
        starts being read at ``reader_b`` (a cloned tag). Label: ``impossible_travel`` on
        ``reader_b`` at the first read there (reported per read when a tag's previous
        located read is too far for the time; reads at b after the first are not).
        The tag must not have been read elsewhere shortly before ``t``."""
        first = self._reads(self.readers[reader_a], t, [epc], None)
        second = self._reads(self.readers[reader_b], 0.0, [epc], None)
        shift = first[-1][0] + 1000 - second[0][0]
        second = [(ms + shift, e, a, rssi, ph) for ms, e, a, rssi, ph in second]
        self._check_trip(reader_a, reader_b, (second[0][0] - first[-1][0]) / 1000,
                         impossible=True)
        self._pending[reader_a].extend(first)
        self._pending[reader_b].extend(second)
        return [Label(second[0][0] / 1000, reader_b, "impossible_travel",
                      {"injected": "impossible_travel", "epc": epc, "from": reader_a})]

    def cold_chain_exit(self, t: float, epcs: Sequence[str], *,
                        travel_s: float = 120.0) -> list[Label]:
        """Pallets leave the cold store through its door at ``t`` and enter the dry
        warehouse ``travel_s`` later. Label: ``cold_chain_exit`` on the warehouse reader at
        each tag's first read there (the tag's last zoned read was in a cold zone)."""
        cold = next(r for r in self.readers.values() if r.zone_kind == "cold")
        dry = next(r for r in self.readers.values() if r.zone and r.zone_kind != "cold")
        leave = self._reads(cold, t, epcs, None)
        reads = self._reads(dry, t + travel_s, epcs, None)
        self._check_trip(cold.device_id, dry.device_id, (reads[0][0] - leave[-1][0]) / 1000,
                         impossible=False)
        self._pending[cold.device_id].extend(leave)
        self._pending[dry.device_id].extend(reads)
        first = {e: ms for ms, e, *_ in reversed(reads)}
        return [Label(first[e] / 1000, dry.device_id, "cold_chain_exit",
                      {"injected": "cold_chain_exit", "epc": e, "from": cold.device_id})
                for e in epcs]
