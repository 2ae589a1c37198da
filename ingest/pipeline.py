"""Turns a micro-batch of raw MQTT messages into one database write (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from beiflow.ingest.config import Config
from beiflow.ingest.metrics import Metrics
from beiflow.ingest.nmea import NmeaConfig, NmeaState, decode_batch
from beiflow.ingest.sink import DeadLetter, WriteBatch
from beiflow.ingest.topics import STREAMS, DeviceIndex, TopicParser
from beiflow.processing.batch import merge_duplicate_keys
from beiflow.schemas.columns import FixFlag

_STATUS_VALUES = frozenset({b"online", b"offline"})
_STREAM_NAMES: tuple[str, ...] = ("unknown", *STREAMS)
_STREAM_CODE: dict[str, int] = {name: code for code, name in enumerate(_STREAM_NAMES)}


@dataclass(slots=True)
class RawBatch:
    """Messages as the collector received them, in arrival order."""

    #: Topics as raw UTF-8 bytes, as they arrive on the wire.
    topics: list[bytes] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    received_us: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.topics)


class Pipeline:
    """Decode, check and shape one batch; keeps per-device decoder state between batches."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.devices = DeviceIndex()
        self.topics = TopicParser(config.mqtt.topic_root, self.devices)
        self._metrics = metrics
        self._max_payload = config.limits.max_payload_bytes
        n = config.nmea
        self._nmea_config = NmeaConfig(
            future_tolerance_s=n.future_tolerance_s,
            past_tolerance_s=n.past_tolerance_s,
            max_sentence_len=n.max_sentence_len,
            require_checksum=n.require_checksum,
        )
        self._nmea_state = NmeaState()

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

        dead: list[DeadLetter] = []
        for k in np.flatnonzero(~topic_ok):
            info = infos[k]
            dead.append(self._dead(raw, int(k), info.error or "bad_topic", info.stream, None))
        for k in np.flatnonzero(topic_ok & ~fits):
            dead.append(self._dead(raw, int(k), "oversize", streams[k], int(device[k]),
                                   f"{size[k]} bytes > {self._max_payload}"))
        # An empty retained status clears the retained message (MQTT's way); elsewhere an
        # empty payload carries nothing and is recorded as such.
        empty = topic_ok & (size == 0)
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
        for code in (_STREAM_CODE["rfid"], _STREAM_CODE["sensor"]):
            for k in np.flatnonzero(topic_ok & fits & (stream == code)):
                dead.append(self._dead(raw, int(k), "unsupported_stream", streams[k],
                                       int(device[k]), "this version does not decode it yet"))

        nmea_idx = np.flatnonzero(topic_ok & fits & (stream == _STREAM_CODE["nmea"]))
        positions = self._nmea(raw, nmea_idx, device, received, dead) if nmea_idx.size else None

        # Re-index the devices of this batch densely so the sink ships only them.
        present = np.unique(device[topic_ok])
        remap = np.full(max(len(self.devices), 1), -1, dtype=np.int32)
        remap[present] = np.arange(present.size, dtype=np.int32)
        if positions is not None:
            positions["device"] = remap[positions["device"]]
        return WriteBatch(
            devices=[(self.devices.ids[i], self.devices.sites[i]) for i in present],
            msg_device=np.where(topic_ok, remap[np.maximum(device, 0)], -1),
            msg_stream=streams,
            msg_received_at=received,
            positions=positions,
            dead_letters=dead,
            statuses=[(int(remap[d]), s, t) for d, s, t in statuses],
        )

    def _nmea(self, raw: RawBatch, idx: np.ndarray, device: np.ndarray, received: np.ndarray,
              dead: list[DeadLetter]) -> dict[str, np.ndarray]:
        m = self._metrics
        payloads = raw.payloads if idx.size == len(raw) else [raw.payloads[k] for k in idx]
        out = decode_batch(payloads, device[idx], received[idx], self._nmea_state,
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
            dead.append(self._dead(raw, k, reason, "nmea", int(device[k]), payload=chunk))
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
