"""The simulated GNSS receiver bank: bytes real decoders accept, noise, sky and integrity.

Oracles independent of the bank: pynmea2 parses (and checksums) every sentence and its
GSV fields give the expected sky columns; distances to truth are haversine in the test;
the pipeline (decoder, movement and integrity detectors) judges the scenarios.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pynmea2
import pytest

from beiflow.devices.simulators.gnss import EXTRAS, TALKERS, ReceiverBank, ReceiverSpec
from beiflow.devices.simulators.labels import Label
from beiflow.ingest.config import load_config
from beiflow.ingest.metrics import Metrics
from beiflow.ingest.nmea import NmeaState, decode_batch
from beiflow.ingest.pipeline import Pipeline, RawBatch
from beiflow.schemas.columns import CONSTELLATIONS, FixFlag

T0 = 1_717_200_000.0  # 2024-06-01T00:00:00Z
LAT0, LON0 = 37.55, 121.39  # Yantai port
R = 6_371_008.8
ALL = frozenset(EXTRAS)
GSV_CONST = {"GP": "gps", "GL": "glo", "GA": "gal", "GB": "bds", "BD": "bds"}


def haversine(lat1, lon1, lat2, lon2):
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = (np.sin((p2 - p1) / 2) ** 2
         + np.cos(p1) * np.cos(p2) * np.sin(np.radians(np.subtract(lon2, lon1)) / 2) ** 2)
    return 2 * R * np.arcsin(np.sqrt(a))


def truth(n: int, k: int, speed: np.ndarray) -> tuple[np.ndarray, ...]:
    """Devices 200 m apart, driving east at ``speed`` m/s, at epoch ``k`` of 1 s."""
    lat = LAT0 + np.arange(n) * 200 / R * 180 / math.pi
    lon = LON0 + speed * k / (R * math.cos(math.radians(LAT0))) * 180 / math.pi
    return lat, lon, np.full(n, 5.0), speed, np.full(n, 90.0)


def run(bank: ReceiverBank, epochs: int, *, speed: float | np.ndarray = 0.0,
        rate_hz: float = 1.0, start: int = 0, **conditions: object,
        ) -> tuple[list[list[bytes]], list[Label], list[tuple[np.ndarray, ...]]]:
    """``epochs`` epochs of every device; conditions may be callables of the epoch number."""
    n = len(bank)
    idx = np.arange(n)
    sp = np.broadcast_to(np.asarray(speed, dtype=np.float64), (n,)).copy()
    out, labels, truths = [], [], []
    for k in range(start, start + epochs):
        tr = truth(n, k / rate_hz, sp)
        cond = {name: np.broadcast_to(c(k) if callable(c) else c, (n,))
                for name, c in conditions.items()}
        payloads, lb = bank.epoch(T0 + k / rate_hz, idx, *tr, **cond)
        out.append(payloads)
        labels += lb
        truths.append(tr)
    return out, labels, truths


def decoded(epochs: list[list[bytes]]):
    """Decode every payload (device = position in the epoch) with the production decoder."""
    flat = [p for ep in epochs for p in ep]
    dev = np.tile(np.arange(len(epochs[0])), len(epochs))
    received = np.full(len(flat), int(T0 * 1e6))
    return decode_batch(flat, dev, received, NmeaState())


def bank_of(talkers: list[str], *, extras: frozenset[str] = ALL, seed: int = 3,
            cold_start_s: float = 0.0, multipath_per_hour: float = 0.0,
            rate_hz: float = 1.0) -> ReceiverBank:
    specs = [ReceiverSpec(t, extras, rate_hz) for t in talkers]
    return ReceiverBank([f"rx{i}" for i in range(len(talkers))], specs, seed=seed,
                        cold_start_s=cold_start_s, multipath_per_hour=multipath_per_hour)


def pipeline() -> Pipeline:
    cfg = load_config(env={})
    return Pipeline(replace(cfg, nmea=replace(cfg.nmea, past_tolerance_s=1e10)), Metrics())


def through_pipeline(bank: ReceiverBank, epochs: list[list[bytes]],
                     rate_hz: float = 1.0) -> list[tuple[str, str, float]]:
    """(device id, kind, time s) of every anomaly, batches of 30 epochs."""
    p = pipeline()
    found = []
    for b in range(0, len(epochs), 30):
        topics, payloads, received = [], [], []
        for k in range(b, min(b + 30, len(epochs))):
            for i, payload in enumerate(epochs[k]):
                topics.append(f"telemetry/yantai/{bank.device_ids[i]}/nmea".encode())
                payloads.append(payload)
                received.append(round((T0 + k / rate_hz) * 1e6) + 200_000)
        wb = p.process(RawBatch(topics=topics, payloads=payloads, received_us=received))
        a = wb.anomalies
        found += [(wb.devices[d][0], str(kind), t / 1e6) for d, kind, t
                  in zip(a.device.tolist(), a.kind.tolist(), a.time.tolist(), strict=True)]
    return found


def test_same_seed_same_bytes_and_labels() -> None:
    kw = {"speed": 6.0, "sky": lambda k: 0.5 if 20 <= k < 40 else 1.0}
    a = run(bank_of(list(TALKERS), cold_start_s=10, multipath_per_hour=600), 60, **kw)
    b = run(bank_of(list(TALKERS), cold_start_s=10, multipath_per_hour=600), 60, **kw)
    c = run(bank_of(list(TALKERS), cold_start_s=10, multipath_per_hour=600, seed=4), 60, **kw)
    assert a[0] == b[0] and a[1] == b[1]
    assert a[1], "multipath and cold start labels expected"
    assert a[0] != c[0]


@pytest.mark.parametrize("talker", TALKERS)
def test_every_layout_decodes_cleanly_and_parses_with_pynmea2(talker: str) -> None:
    for r in range(len(EXTRAS) + 1):
        for extras in itertools.combinations(sorted(EXTRAS), r):
            bank = bank_of([talker, talker], extras=frozenset(extras), cold_start_s=1.5)
            epochs, _, _ = run(bank, 4, speed=np.array([0.0, 12.0]))
            batch = decoded(epochs)
            assert len(batch.rejects) == 0, (talker, extras)
            assert batch.positions["time"].size == 8
            assert batch.skipped["long_sentence"] == 0
            fixes = (batch.positions["flags"] & int(FixFlag.NO_FIX)) == 0
            assert fixes.sum() == 4  # cold start (1.2-1.8 s): no fix in the first 2 epochs
            for payload in itertools.chain.from_iterable(epochs):
                assert payload.endswith(b"\r\n")
                for line in payload.decode("ascii").split("\r\n")[:-1]:
                    msg = pynmea2.parse(line, check=True)
                    assert line[3:6] in {"RMC", "GGA", *extras}
                    gsv_talkers = {"GN": {"GP", "GL", "GA", "GB"}}.get(talker, {talker})
                    if msg.sentence_type == "GSV":
                        assert msg.talker in gsv_talkers
                    else:
                        assert msg.talker == talker


def test_layouts_follow_the_captures() -> None:
    epochs, _, _ = run(bank_of(list(TALKERS)), 2, speed=0.0)
    gn, gb, bd, gp = (p.decode().split("\r\n")[:-1] for p in epochs[1])
    # u-blox ZED-F9P NMEA 4.11: nav status V, course empty when nearly stopped, system ids
    assert gn[0].startswith("$GNRMC,000001.00,A,") and gn[0].split(",")[8] == ""
    assert gn[0].split("*")[0].endswith(",V")
    assert [s.split("*")[0][-2:] for s in gn if s.startswith("$GNGSA")] == [
        ",1", ",2", ",3", ",4"]
    assert {s[1:3] for s in gn if "GSV" in s} == {"GP", "GL", "GA", "GB"}
    assert all(s.split("*")[0].endswith((",1", ",7")) for s in gn if "GSV" in s)
    # older BD module: no 4.10/4.11 fields, milliseconds, 1-decimal HDOP, course held
    rmc = next(s for s in bd if s.startswith("$BDRMC")).split("*")[0].split(",")
    assert len(rmc) == 13 and rmc[1].endswith(".000") and rmc[8] != ""
    gga = next(s for s in bd if s.startswith("$BDGGA")).split(",")
    assert len(gga[8].split(".")[1]) == 1
    assert next(s for s in gb if s.startswith("$GBGSA")).split("*")[0].endswith(",4")
    assert len(next(s for s in gp if s.startswith("$GPRMC")).split("*")[0].split(",")) == 13


def test_sky_columns_equal_the_gsv_the_bank_sent() -> None:
    epochs, _, _ = run(bank_of(list(TALKERS)), 5, sky=lambda k: [1.0, 0.5, 1.0, 0.3][k % 4])
    pos = decoded(epochs).positions
    row = 0
    for ep in epochs:
        for payload in ep:
            inview: dict[str, int] = {}
            snr: dict[str, list[int]] = {}
            for line in payload.decode().split("\r\n")[:-1]:
                msg = pynmea2.parse(line, check=True)
                if msg.sentence_type != "GSV":
                    continue
                c = GSV_CONST[msg.talker]
                inview[c] = int(msg.num_sv_in_view)
                snr.setdefault(c, []).extend(
                    int(v) for k in range(1, 5) if (v := getattr(msg, f"snr_{k}", "")))
            for c in CONSTELLATIONS:
                assert pos[f"sv_{c}"][row] == inview.get(c, -1)
                expect = np.mean(snr[c]) if snr.get(c) else np.nan
                np.testing.assert_allclose(pos[f"cn0_{c}_dbhz"][row], expect)
            row += 1
    sv = {c: pos[f"sv_{c}"].reshape(5, 4) for c in CONSTELLATIONS}
    assert (sv["gps"][:, 0] >= 6).all() and (sv["glo"][:, 0] >= 4).all()
    assert (sv["bds"][:, 1] >= 8).all() and (sv["glo"][:, 1:] == -1).all()
    assert (sv["bds"][:, 3] == -1).all() and (sv["gps"][:, 3] >= 6).all()


def test_fixes_scatter_around_truth_as_hdop_says() -> None:
    n_epochs = 600
    bank = bank_of(["GN", "GB", "BD", "GP"] * 2, seed=11)
    epochs, _, truths = run(bank, n_epochs, speed=np.array([0, 0, 0, 0, 9, 9, 9, 9.0]))
    pos = decoded(epochs).positions
    lat = np.concatenate([t[0] for t in truths])
    lon = np.concatenate([t[1] for t in truths])
    err = haversine(lat, lon, pos["lat"], pos["lon"]).reshape(n_epochs, 8)
    hdop = pos["hdop"].reshape(n_epochs, 8)
    assert np.isfinite(err).all()
    assert (np.percentile(err, 99, axis=0) < 10).all()
    assert (err.std(axis=0) > 0.2).all()  # noisy, not truth
    assert (hdop > 0.3).all() and (hdop < 2.0).all()
    # correlated in time (Gauss-Markov), not white: neighbours far closer than random pairs
    step = np.abs(np.diff(err, axis=0)).mean()
    assert step < 0.3 * np.abs(err[:-100] - err[100:]).mean()
    speed = pos["speed_mps"].reshape(n_epochs, 8)
    assert (np.abs(speed[:, 4:] - 9.0) < 0.5).all() and (speed[:, :4] < 0.5).all()
    course = pos["course_deg"].reshape(n_epochs, 8)
    assert np.isnan(course[:, 0]).all() and np.isnan(course[:, 3]).all()  # u-blox: empty
    assert np.isfinite(course[:, 1]).all()  # BDS modules hold the last course


def test_cold_start_then_fix() -> None:
    bank = bank_of(["GN", "BD"], cold_start_s=30.0)
    epochs, labels, _ = run(bank, 60, speed=5.0)
    pos = decoded(epochs).positions
    no_fix = ((pos["flags"] & int(FixFlag.NO_FIX)) != 0).reshape(60, 2)
    for d in range(2):
        first = int(np.argmin(no_fix[:, d]))
        assert 24 <= first <= 36 and not no_fix[first:, d].any()
        assert no_fix[:first, d].all()
    gps = pos["sv_gps"].reshape(60, 2)[:, 0]
    assert gps[0] <= 0 < gps[20] < gps[40]  # satellites acquired one by one
    assert sorted((lb.device, lb.kind, lb.details["injected"]) for lb in labels) == [
        ("rx0", "poor_fix", "cold_start"), ("rx1", "poor_fix", "cold_start")]


def test_tunnel_loses_the_fix_and_a_crane_degrades_it() -> None:
    sky = {0: 1.0, 1: 0.0, 2: 0.5}
    bank = bank_of(["GN", "GB"])
    epochs, labels, _ = run(bank, 90, speed=8.0, sky=lambda k: sky[k // 30])
    pos = decoded(epochs).positions
    no_fix = ((pos["flags"] & int(FixFlag.NO_FIX)) != 0).reshape(90, 2)
    assert not no_fix[:30].any() and no_fix[30:60].all()
    assert not no_fix[63:].any()
    hdop = pos["hdop"].reshape(90, 2)
    sats = pos["sats"].reshape(90, 2)
    assert (hdop[63:, 1] > hdop[:30, 1].mean()).mean() > 0.8
    assert sats[63:, 1].mean() < 0.8 * sats[:30, 1].mean()
    assert [(lb.device, lb.kind, lb.details["injected"]) for lb in labels] == [
        ("rx0", "poor_fix", "sky"), ("rx1", "poor_fix", "sky")]
    assert {lb.time for lb in labels} == {T0 + 30}


def test_jamming_is_reported_by_the_pipeline() -> None:
    bank = bank_of(["GN", "GB", "GP"])
    epochs, _, _ = run(bank, 100, speed=5.0, jam_db=lambda k: 20.0 if k >= 70 else 0.0)
    found = through_pipeline(bank, epochs)
    jams = [(d, t) for d, kind, t in found if kind == "jamming"]
    assert sorted(jams) == [(f"rx{i}", T0 + 70) for i in range(3)]


@pytest.mark.parametrize("talker", ["GN", "BD"])
def test_spoofing_is_reported_by_the_pipeline(talker: str) -> None:
    bank = bank_of([talker])
    epochs, _, _ = run(bank, 80, speed=5.0, spoof=lambda k: k >= 60,
                       offset_n_m=lambda k: 1500.0 if k >= 60 else 0.0)
    found = through_pipeline(bank, epochs)
    assert ("rx0", "spoofing", T0 + 60) in found
    assert {kind for _, kind, _ in found} <= {"spoofing", "jump", "moving"}


@pytest.mark.parametrize("crane", [1.0, 0.5])
def test_clean_run_reports_only_motion_and_labelled_events(crane: float) -> None:
    """10 minutes at 1 Hz, open sky (or every other minute under a crane): the pipeline
    finds motion events plus exactly the labelled multipath jumps and poor fixes."""
    n_epochs = 600
    speed = np.array([0.0, 7.0, 15.0, 25.0, 3.0, 0.0, 12.0, 30.0])
    bank = ReceiverBank(
        [f"rx{i}" for i in range(8)],
        [ReceiverSpec(t, ALL) for t in TALKERS * 2], seed=5, cold_start_s=0.0,
        multipath_per_hour=60.0)
    epochs, labels, _ = run(bank, n_epochs, speed=speed,
                            sky=lambda k: crane if (k // 60) % 2 else 1.0)
    found = through_pipeline(bank, epochs)
    kinds = {kind for _, kind, _ in found}
    allowed = {"moving", "stopped", "jump"} | ({"poor_fix"} if crane < 1 else set())
    assert kinds <= allowed, kinds
    for kind, injected in (("jump", "multipath"), ("poor_fix", "sky")):
        got = sorted((d, round(t, 2)) for d, k, t in found if k == kind)
        mine = [lb for lb in labels if lb.kind == kind]
        assert all(lb.details["injected"] == injected for lb in mine)
        assert got == sorted((lb.device, round(lb.time, 2)) for lb in mine)
    assert sum(lb.kind == "jump" for lb in labels) >= 10


def test_ten_hz_multipath_labels_match_the_pipeline() -> None:
    bank = bank_of(["GN", "BD", "GP"], multipath_per_hour=1200.0, rate_hz=10.0, seed=8)
    epochs, labels, _ = run(bank, 800, speed=np.array([0.0, 10.0, 20.0]), rate_hz=10.0)
    found = through_pipeline(bank, epochs, rate_hz=10.0)
    jumps = sorted((d, round(t, 2)) for d, kind, t in found if kind == "jump")
    assert jumps == sorted((lb.device, round(lb.time, 2)) for lb in labels)
    assert len(jumps) >= 5


def gsv_sky(payload: bytes) -> dict[tuple[str, int], tuple[int, int]]:
    """(GSV talker, PRN) -> (elevation, azimuth) of the satellites a payload lists."""
    out = {}
    for line in payload.decode().split("\r\n")[:-1]:
        msg = pynmea2.parse(line, check=True)
        if msg.sentence_type == "GSV":
            for k in range(1, 5):
                el, az = (getattr(msg, f"{f}_{k}", "") for f in ("elevation_deg", "azimuth"))
                if el and az:  # listed with elevation and azimuth (almanac known)
                    out[(msg.talker, int(getattr(msg, f"sv_prn_num_{k}")))] = (int(el), int(az))
    return out


def test_cached_sky_follows_the_satellites_and_a_move() -> None:
    """The geometry is cached per device but still drifts with the orbits (no leaps), and
    a device that moves far sees the new sky at once."""
    bank = bank_of(["GN", "GN"])
    lat, lon = np.array([LAT0, LAT0]), np.array([LON0, LON0])
    skies = []
    for k in range(130):
        if k == 120:  # device 1 is carried 2000 km south
            lat = np.array([LAT0, LAT0 - 18.0])
        payloads, _ = bank.epoch(T0 + k, np.arange(2), lat, lon, np.full(2, 5.0),
                                 np.zeros(2), np.zeros(2))
        skies.append([gsv_sky(p) for p in payloads])
    first, last = skies[1][0], skies[119][0]
    common = first.keys() & last.keys()
    assert len(common) >= 20
    assert sum(first[s] != last[s] for s in common) >= len(common) // 2  # drift
    for a, b in itertools.pairwise(s[0] for s in skies[1:120]):
        for sat in a.keys() & b.keys():
            assert abs(a[sat][0] - b[sat][0]) <= 1  # elevation moves by at most a degree
    before, after = skies[119][1], skies[120][1]
    moved = [abs(before[s][0] - after[s][0]) for s in before.keys() & after.keys()]
    assert max(moved) >= 10 and after.keys() != before.keys()


def test_a_crowd_through_cold_start_prints_only_what_it_has() -> None:
    """Receivers acquiring satellites print no speed, course or position until they have
    a fix; then the speed is the truth's."""
    n = 2000
    bank = ReceiverBank([f"cs-{i}" for i in range(n)], [ReceiverSpec("GN", frozenset())] * n,
                        seed=4, cold_start_s=30.0)
    idx = np.arange(n)
    fixes = 0
    for k in range(45):
        payloads, _ = bank.epoch(T0 + k, idx, np.full(n, 37.55), np.full(n, 121.39),
                                 np.full(n, 5.0), np.full(n, 6.0), np.full(n, 90.0))
        for p in payloads[:50]:
            rmc_fields = p.split(b"\r\n")[0].split(b",")
            if rmc_fields[2] == b"V":
                assert rmc_fields[3:9] == [b""] * 6
            else:
                fixes += 1
                assert abs(float(rmc_fields[7]) - 6.0 * 3600 / 1852) < 2.0
    assert fixes > 0
