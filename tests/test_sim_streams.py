"""Sensor and RFID simulators: payload contracts, models, and labelled injections checked
against the real pipeline offline (no broker, no database)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beiflow.devices.simulators.labels import Label
from beiflow.devices.simulators.rfid_gates import GateReaders, sgtin96
from beiflow.devices.simulators.sensors import SHANGHAI, GridNodes, Reefers
from beiflow.ingest.config import load_config
from beiflow.ingest.metrics import Metrics
from beiflow.ingest.pipeline import Pipeline, RawBatch
from beiflow.ingest.rfid import SGTIN_PARTITIONS, decode_rfid
from beiflow.ingest.sensor import MetricTable, decode_sensor
from tests.test_payload_contracts import schema_accepts

START = datetime(2025, 3, 1, 0, 0, tzinfo=SHANGHAI).timestamp()
GRID = ["grid-sub-01", "grid-sub-02", "grid-sub-03", "grid-line-01", "grid-line-02",
        "grid-line-03"]
REEFERS = ["reefer-01", "reefer-02", "reefer-03", "reefer-04"]

#: (time s, device, kind) of an anomaly or label.
Event = tuple[float, str, str]


class Offline:
    """The real pipeline fed message by message in time order, arrival = device time."""

    def __init__(self) -> None:
        self.pipeline = Pipeline(load_config(env={}), Metrics())
        self.anomalies: list[Event] = []

    def feed(self, t: float, msgs: Iterable[tuple[str, str, bytes]]) -> None:
        """Process ``(device, stream, payload)`` messages received at ``t``."""
        msgs = list(msgs)
        if not msgs:
            return
        batch = self.pipeline.process(RawBatch(
            [f"telemetry/yantai/{d}/{s}".encode() for d, s, _ in msgs],
            [p for *_, p in msgs], [round(t * 1e6)] * len(msgs)))
        assert not batch.dead_letters
        a = batch.anomalies  # devices index the batch's own device list
        self.anomalies += [(a.time[i] / 1e6, batch.devices[a.device[i]][0], str(a.kind[i]))
                           for i in range(len(a.kind))]


def _events(labels: Iterable[Label]) -> list[Event]:
    return sorted((lb.time, lb.device, lb.kind) for lb in labels)


def _run_sensors(fleets: list[GridNodes | Reefers], hours: float, step_s: float = 30.0
                 ) -> Offline:
    off = Offline()
    t = START
    while t < START + hours * 3600:
        t += step_s
        off.feed(t, [(d, "sensor", p) for f in fleets for d, p in f.sample(t)])
    return off


# -- SGTIN-96 --------------------------------------------------------------------------

def _decode(epcs: list[str]) -> dict[str, np.ndarray]:
    doc = {"reads": [{"epc": e, "antenna": 1, "rssi_dbm": -50.0, "time": 1_740_816_930_000}
                     for e in epcs]}
    b = decode_rfid([json.dumps(doc).encode()], np.zeros(1, np.int32),
                    np.array([1_740_816_930_000_000]))
    assert not len(b.rejects)
    return b.reads


def test_sgtin96_hand_worked_gs1_example() -> None:
    # GS1 TDS: urn:epc:tag:sgtin-96:3.0614141.812345.6789 -> 3074257BF7194E4000001A85
    # 0x30 | filter 011 | partition 101 (7-digit prefix: 24 + 20 bits) | 614141 | 812345 | 6789
    assert sgtin96("0614141", "812345", 6789, filter_value=3) == "3074257BF7194E4000001A85"
    r = _decode(["3074257BF7194E4000001A85"])
    assert r["gtin"][0] == "80614141123458"


@settings(max_examples=60, deadline=None)
@given(part=st.integers(0, 6), cp=st.integers(0, 10**12 - 1), ir=st.integers(0, 10**7 - 1),
       serial=st.integers(0, 2**38 - 1), filt=st.integers(0, 7))
def test_sgtin96_round_trips_through_our_decoder(part: int, cp: int, ir: int, serial: int,
                                                 filt: int) -> None:
    _, cp_digits, _, ir_digits = SGTIN_PARTITIONS[part]
    prefix = f"{cp % 10**cp_digits:0{cp_digits}d}"
    item = f"{ir % 10**ir_digits:0{ir_digits}d}"
    r = _decode([sgtin96(prefix, item, serial, filter_value=filt)])
    assert r["sgtin_company_prefix"][0] == prefix
    assert r["sgtin_item_ref"][0] == item
    assert r["sgtin_serial"][0] == serial
    assert r["sgtin_filter"][0] == filt
    assert r["gtin"][0][:13] == item[0] + prefix + item[1:]


def test_sgtin96_rejects_what_it_cannot_encode() -> None:
    for args in (("12345", "12345678", 1), ("0614141", "81234", 1), ("0614141", "812345", 2**38)):
        with pytest.raises(ValueError):
            sgtin96(*args)


def test_tags_truck_deterministic_pallets_gs1() -> None:
    g = GateReaders(seed=1)
    assert g.truck_epc("truck-7") == GateReaders(seed=2).truck_epc("truck-7")
    assert g.truck_epc("truck-7") != g.truck_epc("truck-8")
    cold, dry = g.pallet_epcs(20, cold=True), g.pallet_epcs(20)
    r = _decode(cold + dry + [g.truck_epc("truck-7")])
    assert len(set(cold + dry)) == 40
    assert set(r["sgtin_filter"].tolist()) == {6, 0}
    assert all(p.startswith("69") for p in r["sgtin_company_prefix"])


# -- contracts and determinism -----------------------------------------------------------

def _sensor_messages(per_message: int) -> list[bytes]:
    g = GridNodes(GRID, seed=3, start=START, per_message=per_message)
    r = Reefers(REEFERS, seed=3, start=START, per_message=per_message)
    out = []
    for t in np.arange(START + 60, START + 1800, 60.0):
        out += [p for f in (g, r) for _, p in f.sample(float(t))]
    return out


def _rfid_messages(seed: int) -> list[bytes]:
    g = GateReaders(seed=seed)
    g.passage(START + 10, "rfid-gate-main", [g.truck_epc("truck-1"), *g.pallet_epcs(30)])
    g.passage(START + 12, "rfid-cold-store-1", g.pallet_epcs(4, cold=True))
    g.passage(START + 40, "rfid-gate-east", [g.truck_epc("truck-2")])
    return [p for t in (START + 15, START + 60) for _, p in g.poll(t)]


@pytest.mark.parametrize("per_message", [1, 6])
def test_sensor_payloads_pass_schema_and_decoder(per_message: int) -> None:
    msgs = _sensor_messages(per_message)
    received = np.full(len(msgs), round((START + 1800) * 1e6))
    out = decode_sensor(msgs, np.zeros(len(msgs), np.int32), received, MetricTable())
    assert not len(out.rejects)
    assert out.readings["time"].size == sum(
        len(s["values"]) for m in msgs
        for s in (json.loads(m)["samples"] if per_message > 1 else [json.loads(m)]))
    assert all(schema_accepts("sensor", m) for m in msgs[:: max(1, len(msgs) // 150)])
    forms = {("samples" in json.loads(m)) for m in msgs}
    assert forms == {per_message > 1}


def test_rfid_payloads_pass_schema_and_decoder() -> None:
    msgs = _rfid_messages(5)
    out = decode_rfid(msgs, np.zeros(len(msgs), np.int32),
                      np.full(len(msgs), round((START + 60) * 1e6)))
    assert not len(out.rejects)
    assert out.reads["time"].size > 100
    assert all(schema_accepts("rfid", m) for m in msgs)


def test_same_seed_same_bytes_whatever_the_polling() -> None:
    assert _sensor_messages(6) == _sensor_messages(6)
    assert _rfid_messages(5) == _rfid_messages(5)
    assert _rfid_messages(5) != _rfid_messages(6)
    # sample values do not depend on how often or for which nodes sample() is called
    a = GridNodes(GRID, seed=3, start=START)
    b = GridNodes(GRID, seed=3, start=START)
    every_10 = [m for t in range(10, 601, 10) for m in a.sample(START + t)]
    halves = [m for t in range(60, 601, 60)
              for idx in (np.arange(0, 3), np.arange(3, 6)) for m in b.sample(START + t, idx)]
    assert sorted(every_10) == sorted(halves)


# -- models ------------------------------------------------------------------------------

def _metric(msgs: list[tuple[str, bytes]], device: str, name: str) -> list[float]:
    return [json.loads(p)["values"][name] for d, p in msgs if d == device]


def test_daily_profile_evening_peak_above_night() -> None:
    g = GridNodes(GRID, seed=4, start=START)

    def current_at(hour: float) -> dict[str, float]:
        g2 = GridNodes(GRID, seed=4, start=START + hour * 3600)
        msgs = g2.sample(START + hour * 3600 + 60)
        return {d: float(np.mean(_metric(msgs, d, "current_a"))) for d in GRID}

    night, evening, morning = current_at(4.0), current_at(19.5), current_at(10.0)
    for d in GRID:
        assert evening[d] > 1.8 * night[d]
        assert morning[d] > 1.4 * night[d]
    msgs = g.sample(START + 600)
    assert all(215 < v < 240 for d in GRID for v in _metric(msgs, d, "voltage_v"))
    stamp = json.loads(msgs[0][1])["time"]
    assert stamp.endswith("+08:00") and datetime.fromisoformat(stamp).tzinfo is not None


def test_reefer_normal_in_band_with_short_openings() -> None:
    r = Reefers(REEFERS, seed=5, start=START)
    msgs = [m for t in range(60, 12 * 3600, 60) for m in r.sample(START + t)]
    for d in REEFERS:
        temp = _metric(msgs, d, "temp_c")
        assert min(temp) > 2.5 and max(temp) < 7.5
        assert max(temp) - min(temp) > 0.4  # the compressor cycles
    door = np.array(_metric(msgs, "reefer-01", "door_open") + _metric(msgs, "reefer-02",
                                                                       "door_open"))
    assert set(door.tolist()) == {0, 1}


def test_rssi_rises_to_a_peak_mid_pass_then_falls() -> None:
    g = GateReaders(seed=7)
    epc = g.truck_epc("truck-9")
    g.passage(START + 30, "rfid-gate-main", [epc], speed_mps=4.0)
    reads = [r for _, p in g.poll(START + 60) for r in json.loads(p)["reads"]]
    ant1 = [(r["time"] / 1000 - START, r["rssi_dbm"]) for r in reads if r["antenna"] == 1]
    t, rssi = np.array(ant1).T
    assert {r["antenna"] for r in reads} == {1, 2}
    assert 2.0 < t[-1] - t[0] < 10.0 and len(reads) / (t[-1] - t[0]) > 3.0
    peak = t[np.argmax(rssi)]
    assert abs(peak - 30.0) < 1.0 and t[0] < peak < t[-1]
    assert rssi[t < peak - 1.5].mean() < rssi.max() - 8  # rising ...
    assert rssi[t > peak + 1.5].mean() < rssi.max() - 8  # ... and falling
    assert rssi.min() >= -75.0 and rssi.max() <= -40.0


# -- pipeline: normal behaviour and injections -----------------------------------------

def test_normal_sensors_raise_no_anomalies_for_hours() -> None:
    fleets = [GridNodes([*GRID, *(d + "b" for d in GRID)], seed=11, start=START),
              Reefers([*REEFERS, *(d + "b" for d in REEFERS)], seed=11, start=START)]
    off = _run_sensors(fleets, hours=8.0, step_s=60.0)
    assert off.anomalies == []


def test_sensor_injections_yield_exactly_their_labels() -> None:
    g = GridNodes(GRID, seed=21, start=START + 12 * 3600)
    r = Reefers(REEFERS, seed=21, start=START + 12 * 3600)
    t0 = START + 12 * 3600 + 900
    labels = [*g.spike(t0, "grid-sub-01"), *g.spike(t0 + 100, "grid-line-01", "line_temp_c"),
              *g.drift(t0 + 200, "grid-sub-02"), *g.drift(t0, "grid-line-02", "current_a"),
              *g.stuck(t0 + 300, "grid-sub-03"), *g.stuck(t0, "grid-line-03"),
              *r.excursion(t0, "reefer-01"), *r.door_open(t0 + 50, "reefer-02"),
              *r.door_open(t0, "reefer-03", duration_s=1200)]
    # later injections on a node must wait for the detectors to settle
    with pytest.raises(ValueError, match="overlaps"):
        g.spike(t0 + 400, "grid-sub-02")
    with pytest.raises(ValueError, match="warm-up"):
        g.spike(START + 12 * 3600 + 60, "grid-sub-02")
    labels += g.spike(t0 + 3000, "grid-sub-01")
    off = Offline()
    t = START + 12 * 3600
    while t < START + 18 * 3600:
        t += 30.0
        off.feed(t, [(d, "sensor", p) for f in (g, r) for d, p in f.sample(t)])
    want = _events(labels)
    got = sorted(off.anomalies)
    assert sorted(k for *_, k in got) == sorted(k for *_, k in want)
    for lt, dev, kind in want:
        match = [a for a in got if a[1] == dev and a[2] == kind]
        window = 60.0 if kind == "statistical" and dev in ("grid-sub-02", "grid-line-02") else 0
        assert any(abs(a[0] - lt) <= window for a in match), (lt, dev, kind, match)
    kinds = {lb.kind for lb in labels}
    assert kinds == {"statistical", "stuck", "cold_chain_excursion", "door_open"}


def test_rfid_normal_traffic_quiet_and_injections_labelled() -> None:
    g = GateReaders(seed=31)
    off = Offline()
    off.pipeline.set_sites(g.sites())
    labels: list[Label] = []
    rng = np.random.default_rng(0)
    trucks = [f"truck-{i}" for i in range(12)]
    for minute in range(0, 180, 2):
        t = START + minute * 60
        truck = trucks[minute // 2 % len(trucks)]
        gate = "rfid-gate-main" if minute % 4 else "rfid-gate-east"
        g.passage(t + 5, gate, [g.truck_epc(truck), *g.pallet_epcs(int(rng.integers(0, 6)))])
        if minute % 10 == 0:
            g.passage(t + 30, "rfid-cold-store-1", g.pallet_epcs(3, cold=True))
            g.passage(t + 50, "rfid-warehouse-1", g.pallet_epcs(2))
    clone = g.truck_epc("truck-3")
    labels += g.impossible_travel(START + 3600, clone, "rfid-gate-main", "rfid-gate-east")
    labels += g.cold_chain_exit(START + 7200, g.pallet_epcs(3, cold=True))
    with pytest.raises(ValueError, match="impossible"):
        g.cold_chain_exit(START + 7300, g.pallet_epcs(1, cold=True), travel_s=0.5)
    with pytest.raises(ValueError, match="not an impossible"):
        g.impossible_travel(START + 9000, clone, "rfid-gate-main", "rfid-gate-main")
    t = START
    while t < START + 3.2 * 3600:
        t += 5.0
        msgs = [(d, "rfid", p) for d, p in g.poll(t)]
        off.feed(t, msgs + [(d, "status", b"online") for d in g.heartbeats(t)])
    assert sorted(off.anomalies) == _events(labels)
    assert {lb.kind for lb in labels} == {"impossible_travel", "cold_chain_exit"}
    assert [lb.device for lb in labels] == ["rfid-gate-east", *["rfid-warehouse-1"] * 3]
