"""Input limits of issue 6: sentences per message, devices per site, sites, and the
``device_id`` a JSON payload claims. Offline against Pipeline.process, then end to end
(publish the bad message, find it dead-lettered and counted, see the next one land)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest

from beiflow.ingest.config import Config, ConfigError, load_config, parse_mqtt_url
from beiflow.ingest.metrics import Metrics
from beiflow.ingest.nmea import NmeaConfig, NmeaState, decode_batch
from beiflow.ingest.pipeline import Pipeline, RawBatch
from beiflow.ingest.replay import publish_in_order
from beiflow.ingest.rfid import decode_rfid
from beiflow.ingest.runner import Ingest
from beiflow.ingest.sensor import MetricTable, decode_sensor
from beiflow.ingest.topics import DeviceIndex, TopicParser
from tests.conftest import count, wait_for
from tests.nmea_log import make_log

NOW = datetime.now(UTC).replace(microsecond=0)
EPC = "30742A5E7C1F0A4000002B3C"  # used by no other test (rfid_last_seen is shared)


def _sensor(device_id: str | None = None, ago_s: int = 0) -> bytes:
    t = NOW - timedelta(seconds=ago_s)
    doc: dict[str, object] = {"time": t.isoformat().replace("+00:00", "Z"),
                              "values": {"temp_c": 4.0}}
    return json.dumps(doc if device_id is None else {"device_id": device_id, **doc}).encode()


def _rfid(device_id: str | None = None, batch: bool = False) -> bytes:
    read = {"epc": EPC, "antenna": 1, "rssi_dbm": -50.0, "time": int(NOW.timestamp() * 1000)}
    doc: dict[str, object] = {"reads": [read]} if batch else read
    return json.dumps(doc if device_id is None else {"device_id": device_id, **doc}).encode()


def _now_us() -> int:
    return time.time_ns() // 1000


def _pipeline(**limits: int) -> Pipeline:
    cfg = load_config(env={}, overrides={f"limits.{k}": v for k, v in limits.items()})
    return Pipeline(replace(cfg, nmea=replace(cfg.nmea, past_tolerance_s=1e10)), Metrics())


def _raw(*msgs: tuple[str, bytes]) -> RawBatch:
    now = _now_us()
    return RawBatch([t.encode() for t, _ in msgs], [p for _, p in msgs], [now] * len(msgs))


def _rejected(p: Pipeline, stream: str, reason: str) -> float:
    return p._metrics.registry.get_sample_value(
        "beiflow_messages_rejected_total", {"stream": stream, "reason": reason}) or 0.0


# --- offline --------------------------------------------------------------------------


def test_limit_keys_are_validated() -> None:
    cfg = load_config(env={})
    assert (cfg.limits.max_sentences_per_message, cfg.limits.max_devices_per_site,
            cfg.limits.max_sites) == (256, 10000, 1000)
    for key in ("max_sentences_per_message", "max_devices_per_site", "max_sites"):
        with pytest.raises(ConfigError, match=rf"limits\.{key}: must be at least 1"):
            load_config(env={}, overrides={f"limits.{key}": 0})
    with pytest.raises(ValueError, match="max_sentences"):
        NmeaConfig(max_sentences=0)


def test_nmea_message_with_too_many_sentences_is_rejected_whole() -> None:
    epoch = make_log(1, start=NOW - timedelta(minutes=1), seed=3)
    limit = 2 * epoch.count(b"$")
    ok, over = epoch * 2, epoch * 3
    junk = b"junk\r\n" * (limit + 1)              # lines of text count too
    bare = b"$GPGGA\n" * (limit + 1)
    dec = decode_batch([ok, over, junk, bare], np.zeros(4, np.int64),
                       np.full(4, _now_us()), NmeaState(), NmeaConfig(max_sentences=limit))
    assert dec.rejects.reason_names() == ["too_many_sentences"] * 3
    assert dec.rejects.msg.tolist() == [1, 2, 3]
    assert dec.rejects.start.tolist() == [0, 0, 0]
    assert dec.rejects.stop.tolist() == [len(over), len(junk), len(bare)]
    assert set(dec.positions["msg"].tolist()) == {0}
    # without a limit (recorded logs) the same payloads decode sentence by sentence
    free = decode_batch([over], np.zeros(1, np.int64), np.full(1, _now_us()), NmeaState())
    assert len(free.rejects) == 0 and free.positions["time"].size


def test_pipeline_dead_letters_too_many_sentences_with_the_count() -> None:
    p = _pipeline(max_sentences_per_message=4)
    many = b"$GPTXT,01,01,02,x*00\r\n" * 5 + b"garbage\r\n"
    batch = p.process(_raw(("telemetry/yt/bd-1/nmea", many)))
    [dl] = batch.dead_letters
    assert (dl.error, dl.payload, dl.device_id) == ("too_many_sentences", many, "bd-1")
    assert dl.detail == "5 sentences + 1 lines of other text > 4"
    assert _rejected(p, "nmea", "too_many_sentences") == 1


def test_new_devices_beyond_the_site_limit_are_refused_across_batches() -> None:
    p = _pipeline(max_devices_per_site=2, max_sites=2)
    first = p.process(_raw(("telemetry/a/d1/sensor", _sensor()),
                           ("telemetry/a/d2/sensor", _sensor()),
                           ("telemetry/a/d3/sensor", _sensor())))
    assert [d for d, _ in first.devices] == ["d1", "d2"]
    assert [(dl.error, dl.device_id, dl.detail) for dl in first.dead_letters] == [
        ("too_many_devices", None, "site 'a' has 2 devices (limit)")]
    assert first.readings is not None and first.readings["time"].size == 2
    # later batches: the limit holds, known devices keep working, other sites still fit
    second = p.process(_raw(("telemetry/a/d4/rfid", _rfid()),
                            ("telemetry/a/d1/sensor", _sensor()),
                            ("telemetry/b/d5/nmea", make_log(1, start=NOW, seed=1)),
                            ("telemetry/c/d6/sensor", _sensor()),
                            ("telemetry/c/d1/sensor", _sensor()),     # d1 moves: allowed
                            ("telemetry/a/d3/sensor", _sensor())))
    assert [d for d, _ in second.devices] == ["d1", "d5"]
    assert [(dl.error, dl.stream) for dl in second.dead_letters] == [
        ("too_many_devices", "rfid"), ("too_many_sites", "sensor"),
        ("too_many_devices", "sensor")]
    assert second.msg_device.tolist() == [-1, 0, 1, -1, 0, -1]
    assert len(p.devices) == 3
    assert _rejected(p, "sensor", "too_many_devices") == 2
    assert _rejected(p, "rfid", "too_many_devices") == 1
    assert _rejected(p, "sensor", "too_many_sites") == 1


def test_devices_the_database_knows_are_never_refused() -> None:
    index = DeviceIndex(max_per_site=1, max_sites=1)
    parser = TopicParser("telemetry", index)
    assert index.get("from-db-1", "a") == 0 and index.get("from-db-2", "b") == 1
    assert parser.parse(b"telemetry/a/from-db-2/nmea").device == 1
    refused = parser.parse(b"telemetry/a/new/nmea")
    assert (refused.device, refused.error) == (-1, "too_many_devices")
    index.get("new", "a")                  # e.g. restored from the devices table later
    assert parser.parse(b"telemetry/a/new/nmea").device == 2   # refusals are not cached


def test_a_topic_device_id_with_a_trailing_newline_is_invalid() -> None:
    parser = TopicParser("telemetry", DeviceIndex())
    for topic in (b"telemetry/a/dev\n/nmea", b"telemetry/a\n/dev/nmea"):
        assert parser.parse(topic).error == "bad_device_id"


@pytest.mark.parametrize("batch", [False, True])
def test_json_decoders_reject_a_device_id_naming_another_device(batch: bool) -> None:
    dev, rec = np.array([0, 1, 0, 1], np.int32), np.full(4, int(NOW.timestamp() * 1e6))
    ids = ["me", "you"]
    if batch:
        sensor = [json.dumps({"device_id": d, "samples": [json.loads(_sensor())]}).encode()
                  for d in ("me", "me", "you", "you")]
    else:
        sensor = [_sensor(d) for d in ("me", "me", "you", "you")]
    s = decode_sensor(sensor, dev, rec, MetricTable(), device_ids=ids)
    r = decode_rfid([_rfid(d, batch) for d in ("me", "me", "you", "you")], dev, rec,
                    device_ids=ids)
    for out, rows in ((s, s.readings), (r, r.reads)):
        assert out.rejects.msg.tolist() == [1, 2]
        assert out.rejects.reason.tolist() == ["device_mismatch"] * 2
        assert out.rejects.detail[0] == "device_id: 'me' is not the topic's device 'you'"
        assert rows["msg"].tolist() == [0, 3]
    # run on its own (no ids), a decoder checks only the claim's form
    alone = decode_sensor(sensor, dev, rec, MetricTable())
    assert len(alone.rejects) == 0


# --- end to end -----------------------------------------------------------------------


def _publish(config: Config, topic: str, *payloads: bytes) -> None:
    publish_in_order(parse_mqtt_url(config.mqtt.url), f"{config.mqtt.topic_root}/{topic}",
                     list(payloads), rate_hz=0)


def _dead(db_dsn: str, topic_like: str) -> list[tuple[str, bytes, str, str | None]]:
    with psycopg.connect(db_dsn) as conn:
        return conn.execute("SELECT error, payload, stream, device_id FROM dead_letters"
                            " WHERE topic LIKE %s ORDER BY received_at",
                            (topic_like,)).fetchall()


def _counter(ing: Ingest, stream: str, reason: str) -> float:
    return ing.metrics.registry.get_sample_value(
        "beiflow_messages_rejected_total", {"stream": stream, "reason": reason}) or 0.0


def test_too_many_sentences_end_to_end(config: Config, run_ingest: Callable[..., Ingest],
                                       db_dsn: str, tmp_path: Path) -> None:
    good = make_log(1, start=NOW - timedelta(minutes=1), seed=6)
    limit = good.count(b"$") + 2
    config = replace(config, limits=replace(config.limits, max_sentences_per_message=limit))
    ing = run_ingest(config)
    epochs = make_log(6, start=NOW - timedelta(minutes=2), seed=5)
    assert epochs.count(b"$") > limit
    _publish(config, "port/ts-1/nmea", epochs, good)
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM positions WHERE device_id = 'ts-1'")
             == 1, what="the good message after the long one")
    assert _dead(db_dsn, f"{config.mqtt.topic_root}/port/ts-1/%") == [
        ("too_many_sentences", epochs, "nmea", "ts-1")]
    assert _counter(ing, "nmea", "too_many_sentences") == 1


def test_devices_of_the_database_count_and_are_never_refused() -> None:
    index = DeviceIndex(max_per_site=2)
    index.preload([("db-1", "gate"), ("db-2", "gate"), ("db-1", "gate")])
    assert index.refusal("new-1", "gate") == ("too_many_devices",
                                              "site 'gate' has 2 devices (limit)")
    assert index.refusal("db-2", "gate") is None
    index.get("db-2", "gate")                       # seen now: not counted twice
    assert index.refusal("other", "dock") is None
    index.get("other", "dock")
    assert index.refusal("new-2", "dock") is None   # dock has 1 of 2
    assert len(index) == 2 and index.ids == ["db-2", "other"]


def test_a_restart_with_a_full_site_keeps_its_known_devices(
        config: Config, run_ingest: Callable[..., Ingest], db_dsn: str) -> None:
    """After a restart the devices table fills the site first: made-up ids are refused,
    the site's real devices (not seen yet by this process) are not."""
    root = config.mqtt.topic_root
    with psycopg.connect(db_dsn) as conn:
        conn.execute("INSERT INTO devices (device_id, site, first_seen, last_seen) VALUES"
                     " ('pr-1', %s, now(), now()), ('pr-2', %s, now(), now())",
                     (f"{root}-s", f"{root}-s"))
    config = replace(config, limits=replace(config.limits, max_devices_per_site=2))
    ing = run_ingest(config)
    _publish(config, f"{root}-s/pr-9/sensor", _sensor())   # made up: the site is full
    _publish(config, f"{root}-s/pr-2/sensor", _sensor())   # known: lands
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM sensor_readings"
                                   " WHERE device_id = 'pr-2'") == 1, what="pr-2's reading")
    wait_for(lambda: _counter(ing, "sensor", "too_many_devices") == 1, what="pr-9 refused")
    assert count(db_dsn, "SELECT count(*) FROM devices WHERE device_id = 'pr-9'") == 0


def test_too_many_devices_and_sites_end_to_end(config: Config,
                                               run_ingest: Callable[..., Ingest],
                                               db_dsn: str) -> None:
    # the devices table (shared by the session's tests) counts too: room for 2 more sites
    known = count(db_dsn, "SELECT count(DISTINCT site) FROM devices")
    config = replace(config, limits=replace(config.limits, max_devices_per_site=2,
                                            max_sites=known + 2))
    ing = run_ingest(config)
    root = config.mqtt.topic_root
    gate, dock, yard = f"{root}-gate", f"{root}-dock", f"{root}-yard"
    for topic in (f"{gate}/cd-1/sensor", f"{gate}/cd-2/sensor", f"{dock}/cd-9/sensor"):
        _publish(config, topic, _sensor())
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM sensor_readings"
                                   " WHERE device_id LIKE %s", "cd-%") == 3, what="3 devices")
    _publish(config, f"{gate}/cd-3/sensor", _sensor())    # a third device at site gate
    _publish(config, f"{yard}/cd-4/rfid", _rfid())        # a third site
    _publish(config, f"{gate}/cd-1/sensor", _sensor(ago_s=1))   # known devices keep working
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM sensor_readings"
                                   " WHERE device_id = 'cd-1'") == 2, what="cd-1 again")
    wait_for(lambda: len(_dead(db_dsn, f"{root}/%/cd-_/%")) == 2, what="2 dead letters")
    assert sorted(_dead(db_dsn, f"{root}/%/cd-_/%")) == [
        ("too_many_devices", _sensor(), "sensor", None),
        ("too_many_sites", _rfid(), "rfid", None)]
    assert _counter(ing, "sensor", "too_many_devices") == 1
    assert _counter(ing, "rfid", "too_many_sites") == 1
    assert count(db_dsn, "SELECT count(*) FROM devices WHERE device_id IN ('cd-3', 'cd-4')"
                 ) == 0


@pytest.mark.parametrize("stream", ["sensor", "rfid"])
def test_device_mismatch_end_to_end(stream: str, config: Config,
                                    run_ingest: Callable[..., Ingest], db_dsn: str) -> None:
    ing = run_ingest(config)
    make = _sensor if stream == "sensor" else _rfid
    table = "sensor_readings" if stream == "sensor" else "rfid_reads"
    device = f"dm-{stream}"
    claims_other, claims_self = make("someone-else"), make(device)
    _publish(config, f"port/{device}/{stream}", claims_other, claims_self)
    wait_for(lambda: count(db_dsn, f"SELECT count(*) FROM {table} WHERE device_id = %s",
                           device) == 1, what="the message claiming its own device")
    assert _dead(db_dsn, f"{config.mqtt.topic_root}/port/{device}/%") == [
        ("device_mismatch", claims_other, stream, device)]
    assert _counter(ing, stream, "device_mismatch") == 1
