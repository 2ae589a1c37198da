"""The Yantai port scenario: determinism, clean output, labels against the real pipeline,
and an end-to-end run through broker, ingest and database scored by ``beiflow score``."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest

from beiflow.devices.simulators.labels import GEOFENCE_KINDS, Label, LabelWriter
from beiflow.devices.simulators.links import Endpoint
from beiflow.devices.simulators.port import PORT_FENCES
from beiflow.devices.simulators.scenario import (
    DEVICE_KINDS,
    Scenario,
    ScenarioOptions,
    make_links,
    run,
)
from beiflow.ingest.broker import PrivateBroker
from beiflow.ingest.cli import main
from beiflow.ingest.config import Config, load_config
from beiflow.ingest.geofences import import_fences, read_geojson, register_sites
from beiflow.ingest.metrics import Metrics
from beiflow.ingest.pipeline import Pipeline, RawBatch
from tests.conftest import wait_for
from tests.scratchdb import scratch_database

START = 1_790_000_000.0  # 2026-09-21T14:13:20Z


def _ticks(sc: Scenario, seconds: int) -> tuple[list[tuple[str, bytes]], list[Label]]:
    msgs: list[tuple[str, bytes]] = []
    labels: list[Label] = []
    for k in range(seconds):
        tick = sc.tick(START + k)
        msgs += [(m.topic, m.payload) for m in tick.messages]
        assert all(lb.time <= START + k for lb in tick.labels)  # nothing claimed ahead
        labels += tick.labels
    return msgs, labels


def test_same_seed_same_bytes_and_labels() -> None:
    a = _ticks(Scenario(ScenarioOptions(devices=30, seed=11), START), 120)
    b = _ticks(Scenario(ScenarioOptions(devices=30, seed=11), START), 120)
    c = _ticks(Scenario(ScenarioOptions(devices=30, seed=12), START), 120)
    assert a[0] == b[0] and a[1] == b[1]
    assert len(a[0]) > 24 * 110  # terminals every second, sensor nodes every 10 s
    assert a[0] != c[0]


def _pipeline(sc: Scenario) -> tuple[Pipeline, list[str]]:
    cfg = Config()
    p = Pipeline(replace(cfg, devices=replace(cfg.devices, kinds=DEVICE_KINDS)), Metrics())
    defs = read_geojson(PORT_FENCES)
    p.set_fences(defs)
    p.set_sites(sc.sites())
    return p, [str(d.properties.get("name")) for d in defs]


Detection = tuple[float, str | None, str, str | None]


def _offline(sc: Scenario, seconds: int) -> tuple[list[Label], list[Detection], int]:
    """Run the scenario through the real pipeline, without broker or database, arriving
    50 ms after each tick; detections as (time, device, kind, fence name)."""
    p, names = _pipeline(sc)
    labels: list[Label] = []
    found: list[Detection] = []
    raw = RawBatch()
    n = 0
    for k in range(seconds):
        t = START + k
        tick = sc.tick(t)
        labels += tick.labels
        for m in tick.messages:
            raw.topics.append(m.topic.encode())
            raw.payloads.append(m.payload)
            raw.received_us.append(int(t * 1e6) + 50_000)
        n += len(tick.messages)
        if len(raw) >= 300 or k == seconds - 1:
            wb = p.process(raw)
            ids = [d for d, _ in wb.devices]
            if wb.anomalies is not None:
                a = wb.anomalies
                found += [(a.time[i] / 1e6, ids[a.device[i]], a.kind[i], None)
                          for i in range(len(a.time))]
            if wb.geofence_events is not None:
                e = wb.geofence_events
                found += [(e.time[i] / 1e6, ids[e.device[i]], e.event[i], names[e.fence[i]])
                          for i in range(len(e.time))]
            found += [(d.received_at_us / 1e6, d.device_id, d.error, None)
                      for d in wb.dead_letters]
            raw = RawBatch()
    return labels, found, n


def _match(labels: list[Label], found: list[Detection], until: float,
           window_s: float = 30.0) -> dict[str, tuple[int, int, int]]:
    """Per kind (labels, detections, matched): same device, kind and fence, one to one,
    labels due before ``until``. Deliberately simple: an oracle for ``beiflow score``."""
    want: dict[tuple[str, str, str | None], list[float]] = defaultdict(list)
    for lb in labels:
        if lb.kind != "scenario" and lb.time <= until - 2:
            fence = lb.details.get("fence") if lb.kind in GEOFENCE_KINDS else None
            want[(lb.device, lb.kind, fence)].append(lb.time)
    got: dict[tuple[str, str, str | None], list[float]] = defaultdict(list)
    for t, device, kind, fence in found:
        got[(str(device), kind, fence)].append(t)
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for key in want.keys() | got.keys():
        free = sorted(got.get(key, []))
        row = out[key[1]]
        row[0] += len(want.get(key, []))
        row[1] += len(free)
        for t in sorted(want.get(key, [])):
            hit = next((d for d in free if abs(d - t) <= window_s), None)
            if hit is not None:
                free.remove(hit)
                row[2] += 1
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def test_normal_traffic_decodes_without_a_rejection() -> None:
    sc = Scenario(ScenarioOptions(devices=40, seed=3, anomalies=False), START)
    labels, found, n = _offline(sc, 300)
    assert n > 32 * 290
    kinds = {f[2] for f in found}
    # no dead letter at all; without injections only state reports, transitions and
    # blockage effects remain
    assert kinds <= {"enter", "exit", "dwell", "moving", "stopped", "poor_fix", "jamming"}
    assert {lb.kind for lb in labels} >= {"enter", "exit"}


def test_labels_agree_with_the_pipeline() -> None:
    """Every injected kind that falls in 20 simulated minutes is found where and when the
    labels say, and what the pipeline finds is labelled (bar state reports and blockage)."""
    sc = Scenario(ScenarioOptions(devices=40, seed=7, wills=False), START)
    labels, found, _ = _offline(sc, 1200)
    scores = _match(labels, found, START + 1200)
    for kind in ("enter", "exit", "jump", "spoofing", "jamming", "impossible_travel",
                 "cold_chain_exit", "bad_checksum", "bad_json", "overspeed", "statistical",
                 "door_open", "poor_fix"):
        n_lab, n_det, matched = scores[kind]
        assert n_lab > 0, kind
        assert matched / n_lab >= 0.95, (kind, scores[kind])
        if kind not in ("jamming",):  # blockage under cranes looks like jamming
            assert matched / n_det >= 0.95, (kind, scores[kind])
    # malformed payloads are the only dead letters, each one labelled
    dead = [f for f in found if f[2] in ("bad_checksum", "bad_json")]
    assert len(dead) == scores["bad_checksum"][0] + scores["bad_json"][0]


def test_silent_device_reported_offline_by_its_will_or_silence() -> None:
    sc = Scenario(ScenarioOptions(devices=20, seed=5, wills=False), START)
    labels, found, _ = _offline(sc, 700)
    offline = [lb for lb in labels if lb.kind == "offline"]
    assert offline and offline[0].details["reason"] == "silence"
    scores = _match(labels, found, START + 700)
    assert scores["offline"] == (1, 1, 1)
    sc_will = Scenario(ScenarioOptions(devices=20, seed=5), START)
    silenced = [d for k in range(400) for d in sc_will.tick(START + k).silenced]
    assert silenced == [offline[0].device]


def test_a_run_tag_renames_every_device_consistently() -> None:
    plain = Scenario(ScenarioOptions(devices=20, seed=5), START)
    tagged = Scenario(ScenarioOptions(devices=20, seed=5, run_tag="r7"), START)
    assert tagged.device_ids == [f"r7-{d}" for d in plain.device_ids]
    assert [s.device_id for s in tagged.sites()] == [f"r7-{s.device_id}"
                                                    for s in plain.sites()]
    for k in range(400):
        a, b = plain.tick(START + k), tagged.tick(START + k)
        assert [(m.device, m.payload) for m in b.messages] == [
            (f"r7-{m.device}", m.payload) for m in a.messages]
        assert all(m.topic.split("/")[2] == m.device for m in b.messages)
        assert [(lb.device, lb.kind) for lb in b.labels] == [
            (f"r7-{lb.device}", lb.kind) for lb in a.labels]
        assert b.silenced == [f"r7-{d}" for d in a.silenced]
    assert {lb.device for lb in tagged.shutdown(START + 400)} <= set(tagged.device_ids)
    with pytest.raises(ValueError, match="run tag"):
        ScenarioOptions(run_tag="a/b")


@pytest.fixture
def scenario_db(admin_dsn: str) -> object:
    """A database of its own: the Yantai fences must not meet other tests' devices."""
    with scratch_database(admin_dsn, f"beiflow_scn_{uuid.uuid4().hex[:8]}") as dsn:
        import_fences(dsn, read_geojson(PORT_FENCES))
        yield dsn


def test_end_to_end_scored_by_beiflow_score(scenario_db: str, broker: PrivateBroker,
                                            run_ingest: object, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Devices on their own MQTT connections -> Mosquitto -> ingest -> TimescaleDB; then
    ``beiflow score`` finds the geofence transitions at >= 0.95 precision and recall."""
    root = f"t{uuid.uuid4().hex[:8]}"
    cfg = load_config(env={}, overrides={
        "mqtt.url": broker.url, "db.dsn": scenario_db, "metrics.addr": "127.0.0.1:0",
        "mqtt.topic_root": root, "mqtt.client_id": f"ingest-{root}",
        "batch.max_age_ms": 100})
    cfg = replace(cfg, devices=replace(cfg.devices, kinds=DEVICE_KINDS))
    sc = Scenario(ScenarioOptions(devices=40, seed=21, root=root, cold_start_s=2.0),
                  start=time.time() + 2.0)
    import psycopg
    with psycopg.connect(scenario_db) as conn:
        register_sites(conn, sc.sites())
    ing = run_ingest(cfg)  # type: ignore[operator]
    path = tmp_path / "labels.jsonl"
    host, port = broker.url.removeprefix("mqtt://").split(":")
    links = make_links(sc, Endpoint(host, int(port)), connections=0)
    with path.open("w") as f:
        stats = asyncio.run(run(sc, links, duration_s=40.0, labels=LabelWriter(f)))
    assert stats.messages > 32 * 38  # 32 terminals at 1 Hz, sensors every 10 s
    acked = "beiflow_messages_acked_total"
    wait_for(lambda: (ing.metrics.registry.get_sample_value(acked) or 0) >= stats.messages,
             timeout=60, what="every message acked")
    capsys.readouterr()
    rc = main(["score", "--labels", str(path), "--db-dsn", scenario_db, "--kinds",
               "enter,exit", "--min-precision", "0.95", "--min-recall", "0.95", "--json"])
    report = json.loads(capsys.readouterr().out)
    rows = {r["kind"]: r for r in report["rows"]}
    assert rows["enter"]["labels"] >= 40 and rows["exit"]["labels"] >= 1, report
    assert rc == 0, report
