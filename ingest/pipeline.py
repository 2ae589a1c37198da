"""Turns a micro-batch of raw MQTT messages into one database write (no I/O here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import numpy as np

from beiflow.ingest.config import Config
from beiflow.ingest.geofences import Membership, Site
from beiflow.ingest.jsonbatch import JsonRejects
from beiflow.ingest.metrics import Metrics
from beiflow.ingest.nmea import NmeaConfig, NmeaState, decode_batch
from beiflow.ingest.nmea_scan import count_pieces
from beiflow.ingest.rfid import RfidConfig, decode_rfid
from beiflow.ingest.sensor import MetricTable, SensorConfig, decode_sensor
from beiflow.ingest.sink import DeadLetter, WriteBatch
from beiflow.ingest.topics import STREAMS, DeviceIndex, TopicParser
from beiflow.processing.batch import merge_duplicate_keys
from beiflow.processing.config import DeviceKind
from beiflow.processing.core import Core, CoreConfig
from beiflow.processing.events import AnomalyBatch, GeofenceEventBatch
from beiflow.processing.geofence import FenceDef, GeofenceState
from beiflow.processing.rfid_checks import RfidSites
from beiflow.schemas.columns import FixFlag

_STATUS_VALUES = frozenset({b"online", b"offline"})
_STREAM_NAMES: tuple[str, ...] = ("unknown", *STREAMS)
_STREAM_CODE: dict[str, int] = {name: code for code, name in enumerate(_STREAM_NAMES)}
_KIND_NAMES: dict[int, str] = {int(k): k.name.lower() for k in DeviceKind}


@dataclass(slots=True)
class RawBatch:
    """Messages as the collector received them, in arrival order."""

    #: Topics as raw UTF-8 bytes, as they arrive on the wire.
    topics: list[bytes] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    received_us: list[int] = field(default_factory=list)
    #: Indices of messages the broker flagged DUP: possibly seen before.
    redelivered: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.topics)


class Pipeline:
    """Decode, check and shape one batch; keeps per-device decoder state between batches."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        lim = config.limits
        self.devices = DeviceIndex(max_per_site=lim.max_devices_per_site,
                                   max_sites=lim.max_sites)
        self.topics = TopicParser(config.mqtt.topic_root, self.devices)
        self._metrics = metrics
        self._max_payload = lim.max_payload_bytes
        n = config.nmea
        self._nmea_config = NmeaConfig(
            future_tolerance_s=n.future_tolerance_s,
            past_tolerance_s=n.past_tolerance_s,
            max_sentence_len=n.max_sentence_len,
            require_checksum=n.require_checksum,
            max_sentences=lim.max_sentences_per_message,
        )
        self._nmea_state = NmeaState()
        self.metrics = MetricTable()
        self._sensor_config = SensorConfig(**dataclasses.asdict(config.sensor))
        self._rfid_config = RfidConfig(**dataclasses.asdict(config.rfid))
        self.core = Core(CoreConfig(geofence_debounce=config.geofence.debounce))
        self._kind_rules = tuple(config.devices.kinds.items())
        self._offline_check_us = 0
        #: Devices below this index have had their fence memberships restored.
        self._restored = 0

    def process(self, raw: RawBatch) -> WriteBatch:
        """Everything this batch should commit: rows, dead letters, registry updates."""
        m = self._metrics
        infos = [self.topics.parse(t) for t in raw.topics]
        n = len(infos)
        received = np.asarray(raw.received_us, dtype=np.int64)
        device = np.fromiter((i.device for i in infos), dtype=np.int32, count=n)
        stream = np.fromiter((_STREAM_CODE[i.stream] for i in infos), dtype=np.int8, count=n)
        size = np.fromiter(map(len, raw.payloads), dtype=np.int64, count=n)
        topic_ok = device >= 0
        fits = size <= self._max_payload
        streams = [i.stream for i in infos]
        for code in np.unique(stream):
            m.messages_received.labels(_STREAM_NAMES[code]).inc(
                int(np.count_nonzero(stream == code)))
        if raw.redelivered:
            m.redelivered.inc(len(raw.redelivered))

        dead: list[DeadLetter] = []
        for k in np.flatnonzero(~topic_ok):
            info = infos[k]
            dead.append(self._dead(raw, int(k), info.error or "bad_topic", info.stream, None,
                                   info.detail))
        for k in np.flatnonzero(topic_ok & ~fits):
            dead.append(self._dead(raw, int(k), "oversize", streams[k], int(device[k]),
                                   f"{size[k]} bytes > {self._max_payload}"))
        # An empty retained status clears the retained message (MQTT's way); elsewhere an
        # empty payload carries nothing and is recorded as such.
        empty = topic_ok & (size == 0)
        for k in np.flatnonzero(topic_ok & (size > 0) & (size <= 16)):
            empty[k] = not raw.payloads[k].strip()  # whitespace only: nothing in it either
        for k in np.flatnonzero(empty & (stream != _STREAM_CODE["status"])):
            dead.append(self._dead(raw, int(k), "empty_payload", streams[k], int(device[k])))
        fits &= ~empty
        statuses: list[tuple[int, str, int]] = []
        for k in np.flatnonzero(topic_ok & fits & (stream == _STREAM_CODE["status"])):
            value = raw.payloads[k].strip().lower()
            if value in _STATUS_VALUES:
                statuses.append((int(device[k]), value.decode(), raw.received_us[k]))
            else:
                dead.append(self._dead(raw, int(k), "bad_status", "status", int(device[k])))
        self._update_kinds()
        anomalies: list[AnomalyBatch] = []
        events = GeofenceEventBatch.empty()
        nmea_idx = np.flatnonzero(topic_ok & fits & (stream == _STREAM_CODE["nmea"]))
        positions = self._nmea(raw, nmea_idx, device, received, dead) if nmea_idx.size else None
        if positions is not None and positions["time"].size:
            core_out = self.core.positions(positions)
            positions["flags"] = core_out.flags
            anomalies.append(self._drop_redelivered(core_out.anomalies, raw, nmea_idx,
                                                    positions))
            events = core_out.events
        sensor_idx = np.flatnonzero(topic_ok & fits & (stream == _STREAM_CODE["sensor"]))
        readings = None
        if sensor_idx.size:
            out = decode_sensor(self._select(raw, sensor_idx), device[sensor_idx],
                                received[sensor_idx], self.metrics, self._sensor_config,
                                device_ids=self.devices.ids)
            self._json_rejects(raw, sensor_idx, device, out.rejects, "sensor", dead)
            readings = out.readings
            if readings["time"].size:
                anomalies.append(self.core.readings(readings, self.metrics.names))
        rfid_idx = np.flatnonzero(topic_ok & fits & (stream == _STREAM_CODE["rfid"]))
        reads = None
        if rfid_idx.size:
            out_r = decode_rfid(self._select(raw, rfid_idx), device[rfid_idx],
                                received[rfid_idx], self._rfid_config,
                                device_ids=self.devices.ids)
            self._json_rejects(raw, rfid_idx, device, out_r.rejects, "rfid", dead)
            reads = out_r.reads
            if reads["time"].size:
                anomalies.append(self.core.reads(reads))
        for rows in (readings, reads):
            if rows is not None and rows["time"].size:
                m.clock_skew.observe_many((rows["received_at"] - rows["time"]) / 1e6)
        self.core.seen(device[topic_ok], received[topic_ok])
        offline = [d for d, status, _ in statuses if status == "offline"]
        anomalies.append(self.check_offline(int(received.max()) if n else 0, offline))
        return self._assemble(device, topic_ok, streams, received, positions, readings,
                              reads, AnomalyBatch.concat(anomalies), events, dead, statuses)

    def _drop_redelivered(self, found: AnomalyBatch, raw: RawBatch, nmea_idx: np.ndarray,
                          positions: dict[str, np.ndarray]) -> AnomalyBatch:
        """A fix of a DUP-flagged message that is older than the device's latest was most
        likely processed already (redelivered after a reconnect): not ``time_backwards``."""
        if not raw.redelivered:
            return found
        dup_msg = np.zeros(len(raw), dtype=bool)
        dup_msg[raw.redelivered] = True
        rows = dup_msg[nmea_idx[positions["msg"]]]
        if not rows.any() or not len(found):
            return found
        seen = set(zip(positions["device"][rows].tolist(), positions["time"][rows].tolist(),
                       strict=True))
        keep = np.array([not (k == "time_backwards" and (d, t) in seen) for k, d, t in zip(
            found.kind.tolist(), found.device.tolist(), found.time.tolist(), strict=True)],
            dtype=bool)
        return AnomalyBatch(*(getattr(found, f)[keep] for f in
                              ("time", "device", "stream", "kind", "score", "detail")))

    def set_fences(self, defs: Sequence[FenceDef]) -> None:
        """Use a new fence set (memberships of fences that keep their id survive)."""
        self.core.set_fences(defs)

    def unrestored(self, raw: RawBatch) -> tuple[list[str], int]:
        """Devices first seen in ``raw`` (or since the last restore), whose fence
        memberships must be restored before the batch is processed, and the device count
        to pass to :meth:`restore_membership`."""
        for topic in raw.topics:
            self.topics.parse(topic)
        return self.devices.ids[self._restored:], len(self.devices)

    def restore_membership(self, membership: Membership, upto: int) -> int:
        """Merge stored memberships of first-seen devices; returns how many were added."""
        self._restored = max(self._restored, upto)
        fence_of = {fid: i for i, fid in enumerate(self.core.fence_ids)}
        keep = [j for j, fid in enumerate(membership.geofence_id) if fid in fence_of]
        if not keep:
            return 0
        pick = np.asarray(keep, dtype=np.intp)
        restored = GeofenceState.restore(
            np.array([self.devices.get(membership.device_id[j], membership.site[j])
                      for j in keep], dtype=np.int64),
            np.array([fence_of[membership.geofence_id[j]] for j in keep], dtype=np.int64),
            np.asarray(membership.inside_since_us, dtype=np.int64)[pick],
            np.asarray(membership.dwell_emitted, dtype=bool)[pick],
            np.asarray(membership.last_time_us, dtype=np.int64)[pick])
        return self.core.geofence.merge(restored)

    def set_sites(self, sites: Sequence[Site]) -> None:
        """Reader positions and zones for the RFID travel and cold-chain checks."""
        idx = np.array([self.devices.get(s.device_id, s.site) for s in sites], dtype=np.intp)
        n = len(self.devices)
        lat, lon = np.full(n, np.nan), np.full(n, np.nan)
        zone = np.full(n, -1, dtype=np.int64)
        zones = sorted({s.zone for s in sites if s.zone})
        kinds = sorted({s.zone_kind for s in sites if s.zone_kind})
        zone_kind = np.full(len(zones), -1, dtype=np.int64)
        for i, s in zip(idx, sites, strict=True):
            lat[i] = np.nan if s.lat is None else s.lat
            lon[i] = np.nan if s.lon is None else s.lon
            if s.zone:
                z = zones.index(s.zone)
                zone[i] = z
                if s.zone_kind:
                    zone_kind[z] = kinds.index(s.zone_kind)
        self.core.sites = RfidSites(lat, lon, zone, zone_kind,
                                    np.array([k == "cold" for k in kinds], dtype=bool))

    def check_offline(self, now_us: int, offline: Sequence[int] = ()) -> AnomalyBatch:
        """Offline anomalies: reported by status topics, or silent too long (checked at
        most once a second)."""
        if not offline and now_us - self._offline_check_us < 1_000_000:
            return AnomalyBatch.empty()
        self._offline_check_us = now_us
        return self.core.offline(now_us, np.asarray(offline, dtype=np.intp) if offline
                                 else None)

    def quarantine(self, raw: RawBatch, exc: BaseException) -> WriteBatch:
        """Every message of a batch the pipeline failed on, as ``internal_error`` dead
        letters with their exact bytes: acknowledged, never lost, replayable later."""
        detail = f"{type(exc).__name__}: {exc}"[:500]
        dead = [self._dead(raw, k, "internal_error", "unknown", None, detail)
                for k in range(len(raw))]
        return WriteBatch(devices=[], msg_device=np.full(len(raw), -1),
                          msg_stream=["unknown"] * len(raw),
                          msg_received_at=np.asarray(raw.received_us, dtype=np.int64),
                          dead_letters=dead)

    def idle(self, now_us: int) -> WriteBatch | None:
        """A batch with no messages, for what time alone produces (devices going silent)."""
        found = self.check_offline(now_us)
        if not len(found):
            return None
        empty = np.empty(0, dtype=np.int32)
        return self._assemble(empty, np.empty(0, bool), [], np.empty(0, np.int64),
                              None, None, None, found, GeofenceEventBatch.empty(), [], [])

    def _assemble(self, device: np.ndarray, topic_ok: np.ndarray,
                  streams: list[str], received: np.ndarray,
                  positions: dict[str, np.ndarray] | None,
                  readings: dict[str, np.ndarray] | None, reads: dict[str, np.ndarray] | None,
                  anomalies: AnomalyBatch, events: GeofenceEventBatch,
                  dead: list[DeadLetter], statuses: list[tuple[int, str, int]]) -> WriteBatch:
        m = self._metrics
        for kind, count in zip(*np.unique(anomalies.kind.astype(str), return_counts=True),
                               strict=True):
            m.anomalies.labels(kind).inc(int(count))
        for event, count in zip(*np.unique(events.event.astype(str), return_counts=True),
                                strict=True):
            m.geofence_events.labels(event).inc(int(count))

        kinds = self.core.device_kind
        # Re-index the devices of this batch densely so the sink ships only them.
        present = np.unique(np.concatenate([device[topic_ok], anomalies.device,
                                            events.device]).astype(np.int64))
        remap = np.full(max(len(self.devices), 1), -1, dtype=np.int32)
        remap[present] = np.arange(present.size, dtype=np.int32)
        for rows in (positions, readings, reads):
            if rows is not None:
                rows["device"] = remap[rows["device"]]
        if len(anomalies):
            anomalies = dataclasses.replace(anomalies, device=remap[anomalies.device])
        if len(events):
            events = dataclasses.replace(events, device=remap[events.device])
        return WriteBatch(
            devices=[(self.devices.ids[i], self.devices.sites[i]) for i in present],
            kinds=[_KIND_NAMES.get(int(self.core.device_kind[i])) if i < kinds.size else None
                   for i in present],
            msg_device=np.where(topic_ok, remap[np.maximum(device, 0)], -1),
            msg_stream=streams,
            msg_received_at=received,
            positions=positions,
            dead_letters=dead,
            statuses=[(int(remap[d]), s, t) for d, s, t in statuses],
            readings=readings,
            metric_names=self.metrics.names,
            reads=reads,
            anomalies=anomalies,
            geofence_events=events,
            fence_ids=self.core.fence_ids,
        )

    def _update_kinds(self) -> None:
        """Device kind (vessel, crane, ...) of devices seen since the last batch."""
        kinds = self.core.device_kind
        n = len(self.devices)
        if kinds.size == n:
            return
        new = np.full(n - kinds.size, -1, dtype=np.int64)
        for j, device_id in enumerate(self.devices.ids[kinds.size:]):
            for pattern, kind in self._kind_rules:
                if fnmatchcase(device_id, pattern):
                    new[j] = DeviceKind[kind.upper()]
                    break
        self.core.device_kind = np.concatenate([kinds, new])

    @staticmethod
    def _select(raw: RawBatch, idx: np.ndarray) -> list[bytes]:
        return raw.payloads if idx.size == len(raw) else [raw.payloads[k] for k in idx]

    def _json_rejects(self, raw: RawBatch, idx: np.ndarray, device: np.ndarray,
                      rejects: JsonRejects, stream: str, dead: list[DeadLetter]) -> None:
        for j in range(len(rejects)):
            k = int(idx[int(rejects.msg[j])])
            dead.append(self._dead(raw, k, str(rejects.reason[j]), stream, int(device[k]),
                                   str(rejects.detail[j])))

    def _nmea(self, raw: RawBatch, idx: np.ndarray, device: np.ndarray, received: np.ndarray,
              dead: list[DeadLetter]) -> dict[str, np.ndarray]:
        m = self._metrics
        out = decode_batch(self._select(raw, idx), device[idx], received[idx], self._nmea_state,
                           self._nmea_config)
        m.sentences.inc(out.sentences)
        for reason, count in out.skipped.items():
            if count:
                m.skipped.labels(reason).inc(count)
        rj = out.rejects
        for j in range(rj.msg.size):
            k = int(idx[int(rj.msg[j])])
            reason = rj.reason_name(j)
            chunk = raw.payloads[k][int(rj.start[j]):int(rj.stop[j])]
            detail = None
            if reason == "too_many_sentences":
                sentences, text = count_pieces(chunk)
                detail = (f"{sentences} sentences" + (f" + {text} lines of other text"
                                                      if text else "")
                          + f" > {self._nmea_config.max_sentences}")
            dead.append(self._dead(raw, k, reason, "nmea", int(device[k]), detail,
                                   payload=chunk))
        pos = merge_duplicate_keys(out.positions)
        flags = pos["flags"]
        for flag in (FixFlag.CLOCK_FUTURE, FixFlag.CLOCK_PAST, FixFlag.DATE_FROM_RECEIVE,
                     FixFlag.NO_FIX):
            count = int(np.count_nonzero(flags & int(flag)))
            if count:
                m.fix_flags.labels(flag.name.lower()).inc(count)
        m.clock_skew.observe_many((pos["received_at"] - pos["time"]) / 1e6)
        return pos

    def _dead(self, raw: RawBatch, k: int, reason: str, stream: str, device: int | None,
              detail: str | None = None, payload: bytes | None = None) -> DeadLetter:
        self._metrics.messages_rejected.labels(stream, reason).inc()
        body = raw.payloads[k] if payload is None else payload
        return DeadLetter(
            received_at_us=raw.received_us[k],
            topic=raw.topics[k].decode("utf-8", "replace"),
            payload=body[: self._max_payload],
            error=reason,
            stream=stream,
            device_id=self.devices.ids[device] if device is not None and device >= 0 else None,
            detail=detail,
        )
