"""Fuzzing the decoders and Pipeline.process with generated hostile input (issue 6).

Shared by tests/test_fuzz.py (short form) and bench/fuzz.py (the long run, 1,000,000
inputs by default). Offline: no broker, no database.

Every input is a (topic, payload) pair made by one of the :data:`KINDS` of generator:
arbitrary bytes, UTF-8 garbage, valid payloads unchanged, bit flips, byte inserts and
deletes, splices of two valid payloads, structured JSON mutations (extreme and
non-finite numbers, huge integers, wrong types, deep nesting, duplicate keys, oversized
batches, ``device_id`` claims), structured NMEA mutations (a field replaced and the
checksum recomputed so the field parsers see it, sentence duplication and shuffling,
CR/LF games, truncation, floods of sentences). Topics are mostly valid, over a pool of
devices and sites, sometimes not.

Each batch goes through ``decode_batch``, ``decode_sensor`` and ``decode_rfid`` directly
(every payload through all three) and through ``Pipeline.process``. Checked per batch:

* no exception escapes (the batch and each input that fails alone are saved);
* no hang: a batch slower than ``hang_s`` is reported and saved by a watchdog thread;
* JSON decoders: every message gives rows or exactly one reject, never both;
* the pipeline accounts for every message: it produced rows, a dead letter or a status;
  or it is an empty status (clears the retained message); or it is NMEA whose every
  sentence was counted as skipped (proprietary, unknown type, no epoch, blank) or that
  fed an epoch of another message. A JSON message never has both rows and a dead
  letter, nor two dead letters; the rejected-messages counter moves by exactly the
  number of dead letters.

Rows and dead letters are traced to their message through ``received_at``, unique per
message within a batch.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import numpy as np

from beiflow.ingest.config import Config
from beiflow.ingest.metrics import Metrics
from beiflow.ingest.nmea import NmeaConfig, NmeaState, decode_batch
from beiflow.ingest.pipeline import Pipeline, RawBatch
from beiflow.ingest.rfid import RfidConfig, decode_rfid
from beiflow.ingest.sensor import MetricTable, SensorConfig, decode_sensor
from beiflow.ingest.sink import WriteBatch

T = TypeVar("T")
ROOT = "telemetry"
SITES = tuple(f"site-{i}" for i in range(5))
DEVICES = tuple(f"dev-{i}" for i in range(300))
TALKERS = ("GP", "BD", "GB", "GN", "GL", "GA", "GQ")
KINDS = ("bytes", "utf8_garbage", "valid", "bit_flip", "insert_delete", "splice", "json",
         "nmea")
_WEIGHTS = (8, 5, 8, 14, 14, 8, 22, 21)
_INTERESTING_BYTES = b"\x00\xff\x7f\x80$!*,.\r\n \"{}[]:-+eE0123456789"
_UTF8_BITS = ("é", "ß", "中", "文", "\U0001F600", "\u202e", "\u00a0", "\ufeff", "\u2028")
_BAD_UTF8 = (b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\xbc", b"\xc0\xaf",
             b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xff\xfe", b"\xef\xbb\xbf")
_NMEA_VALUES = ("", "-", "0", "-0", "9" * 20, "1e308", "nan", "inf", "-inf", "99.99.99",
                "235960", "240000", "235959.999999999", "9000.0000", "-9000.0", "18100.0",
                "3200.00000000001", "00000000", "A", "V", "Z", "N", "S", "E", "W", " 1",
                "+5", "0x10", "1,2", "*", "$", "é", "\x00", "A" * 90, "-1", "65535",
                "4294967296", "1" * 60, ".5", "5.", ".", "310295", "320225", "000000",
                "991399", "12345678901234567890.123")
_EXTREMES: tuple[object, ...] = (
    1e308, -1e308, math.inf, -math.inf, math.nan, 10**400, -(10**400), 2**63, 2**64, -(2**63),
    0, -0.0, 5e-324, 1e-400, True, False, None, "", "x" * 1000, "1", "NaN", [], {}, [1, 2],
    {"a": 1}, 1.5, -1, 255, 256, -120, -121, 360.0000001, 2**31 - 1, 2**31,
    253_402_300_799_999, 253_402_300_800_000, "2025-02-29T00:00:00Z", "9999-12-31T23:59:60Z",
    "\ud800", "\u0000",
)


def _checksummed(body: str) -> str:
    x = 0
    for c in body.encode("latin-1", "replace"):
        x ^= c
    return f"${body}*{x:02X}"


def _latlon(value: float, width: int) -> str:
    deg = int(abs(value))
    return f"{deg:0{width}d}{(abs(value) - deg) * 60:09.6f}"


class Generator:
    """Deterministic stream of (kind, topic, payload) inputs for a seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = datetime.now(UTC).replace(microsecond=0)

    # --- seeds ---------------------------------------------------------------------

    def nmea_epoch(self) -> list[str]:
        """Sentences of one epoch of a plausible receiver, near now."""
        r = self.rng
        t = self.now - timedelta(seconds=r.randrange(0, 3600), milliseconds=r.choice(
            (0, 100, 250, 500)))
        hms = f"{t:%H%M%S}.{t.microsecond // 10000:02d}"
        lat, lon = r.uniform(-89, 89), r.uniform(-179, 179)
        la, lo = _latlon(lat, 2), _latlon(lon, 3)
        ns, ew = "N" if lat >= 0 else "S", "E" if lon >= 0 else "W"
        tk = r.choice(TALKERS)
        kn, course = f"{r.uniform(0, 40):.2f}", f"{r.uniform(0, 359.9):.1f}"
        bodies = [
            f"{tk}RMC,{hms},A,{la},{ns},{lo},{ew},{kn},{course},{t:%d%m%y},,,A",
            f"{tk}GGA,{hms},{la},{ns},{lo},{ew},{r.choice((1, 2, 4, 5))},{r.randrange(4, 30)},"
            f"{r.uniform(0.5, 3):.1f},{r.uniform(-50, 500):.1f},M,10.2,M,,",
            f"GNGNS,{hms},{la},{ns},{lo},{ew},AAN,12,0.8,45.3,10.2,,,V",
            f"{tk}GLL,{la},{ns},{lo},{ew},{hms},A,A",
            f"{tk}VTG,{course},T,,M,{kn},N,{float(kn) * 1.852:.2f},K,A",
            "GNGSA,A,3,01,02,03,04,05,,,,,,,,1.5,0.8,1.2,4",
            f"{tk}GSV,2,1,08,01,45,120,40,02,30,200,35,03,60,010,42,04,15,300,28,1",
            f"{tk}GSV,2,2,08,05,45,120,,06,30,200,35,07,60,010,42,08,15,300,28,1",
            f"{tk}ZDA,{hms},{t:%d},{t:%m},{t:%Y},00,00",
            "PUBX,00,081350.00,4717.113210,N,00833.915187,E,546.589,G3,2.1,2.0,0.007,77.52",
            "GPTXT,01,01,02,ANTENNA OK",
        ]
        keep = [b for b in bodies[:9] if r.random() < 0.7] or bodies[:2]
        if r.random() < 0.1:
            keep.append(r.choice(bodies[9:]))
        return [_checksummed(b) for b in keep]

    def sensor_doc(self, device: str) -> dict[str, object]:
        r = self.rng
        def sample() -> dict[str, object]:
            t = self.now - timedelta(seconds=r.randrange(0, 86400))
            when: object = (int(t.timestamp() * 1000) if r.random() < 0.5
                            else t.isoformat().replace("+00:00", "Z"))
            names = r.sample(("temp_c", "humidity_pct", "voltage_v", "current_a", "door_open",
                              "power_kw", "freq_hz", "compressor_on"), r.randrange(1, 5))
            return {"time": when, "values": {n: (r.choice((0, 1)) if n.endswith(("_open", "_on"))
                                                 else round(r.uniform(-50, 400), 3))
                                             for n in names}}
        doc: dict[str, object] = (sample() if r.random() < 0.5
                                  else {"samples": [sample() for _ in range(r.randrange(1, 6))]})
        if r.random() < 0.3:
            doc["device_id"] = device
        return doc

    def rfid_doc(self, device: str) -> dict[str, object]:
        r = self.rng
        def read() -> dict[str, object]:
            t = self.now - timedelta(seconds=r.randrange(0, 86400))
            out: dict[str, object] = {
                "epc": r.choice(("3074257BF7194E4000001A85", "30340242201D8840009EFDF7",
                                 "E2801160600002054CC2D5BA", f"{r.getrandbits(96):024x}",
                                 f"{r.getrandbits(128):032X}")),
                "antenna": r.randrange(0, 8), "rssi_dbm": round(r.uniform(-90, -20), 1),
                "time": (int(t.timestamp() * 1000) if r.random() < 0.5
                         else t.isoformat().replace("+00:00", "Z"))}
            if r.random() < 0.3:
                out["phase_deg"] = round(r.uniform(0, 360), 2)
            if r.random() < 0.3:
                out["read_count"] = r.randrange(1, 50)
            return out
        doc: dict[str, object] = (read() if r.random() < 0.5
                                  else {"reads": [read() for _ in range(r.randrange(1, 6))]})
        if "reads" in doc and r.random() < 0.3:
            doc["reader_time"] = int(self.now.timestamp() * 1000)
        if r.random() < 0.3:
            doc["device_id"] = device
        return doc

    def valid(self, stream: str, device: str) -> bytes:
        if stream == "nmea":
            return "".join(s + "\r\n" for s in self.nmea_epoch()).encode()
        if stream == "sensor":
            return json.dumps(self.sensor_doc(device)).encode()
        if stream == "rfid":
            return json.dumps(self.rfid_doc(device)).encode()
        return self.rng.choice((b"online", b"offline", b"ONLINE ", b""))

    # --- topics --------------------------------------------------------------------

    def topic(self, stream: str) -> tuple[str, str]:
        """A topic for ``stream`` and the device it names (mostly valid)."""
        r = self.rng
        device, site = r.choice(DEVICES), r.choice(SITES)
        if r.random() < 0.97:
            return f"{ROOT}/{site}/{device}/{stream}", device
        bad = r.choice((f"other/{site}/{device}/{stream}", f"{ROOT}/{site}/{device}/video",
                        f"{ROOT}/{site}/{device}", f"{ROOT}/{site}/{device}/{stream}/x",
                        f"{ROOT}/{site}/{'d' * 65}/{stream}", f"{ROOT}//{device}/{stream}",
                        f"{ROOT}/{site}/dev\n/{stream}", f"{ROOT}/{site}/dév/{stream}",
                        f"{ROOT}/{site}/{device}/{stream}\x00", "", "#", "$SYS/x"))
        return bad, device

    # --- mutations -----------------------------------------------------------------

    def _bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def _length(self) -> int:
        r = self.rng.random()
        if r < 0.02:
            return self.rng.randrange(60_000, 70_000)
        return int(self.rng.expovariate(1 / 80))

    def _bit_flip(self, p: bytearray) -> None:
        for _ in range(self.rng.randrange(1, 5)):
            if p:
                i = self.rng.randrange(len(p))
                p[i] ^= 1 << self.rng.randrange(8)

    def _insert_delete(self, p: bytearray) -> None:
        r = self.rng
        for _ in range(r.randrange(1, 5)):
            i = r.randrange(len(p) + 1)
            op = r.random()
            if op < 0.4:
                p[i:i] = bytes([r.choice(_INTERESTING_BYTES)]) * r.choice((1, 1, 2, 100))
            elif op < 0.8:
                del p[i:i + r.choice((1, 1, 2, 8, 50))]
            elif p:
                p[i:i + 1] = bytes([r.randrange(256)])

    def _utf8_garbage(self, p: bytearray) -> None:
        r = self.rng
        for _ in range(r.randrange(1, 4)):
            i = r.randrange(len(p) + 1)
            bit = r.choice(_BAD_UTF8) if r.random() < 0.5 else r.choice(_UTF8_BITS).encode()
            p[i:i] = bit

    def _json(self, stream: str, device: str) -> bytes:
        r = self.rng
        doc: object = self.sensor_doc(device) if stream == "sensor" else self.rfid_doc(device)
        op = r.randrange(9)
        deep = None
        if op == 0:      # replace a leaf with an extreme value or another type
            self._replace_leaf(doc, lambda: r.choice(_EXTREMES))
        elif op == 1:    # deep nesting in a value (or as the whole document)
            depth = r.choice((100, 1000, 10_000, 30_000))
            deep = "[" * depth + "]" * depth if r.random() < 0.5 else '{"a":' * depth + "1" + (
                "}" * depth)
            self._replace_leaf(doc, lambda: "__DEEP__")
        elif op == 2:    # device_id claims: the topic's, another, malformed
            assert isinstance(doc, dict)
            doc["device_id"] = r.choice((device, "someone-else", "", "d" * 65, "a/b", "dev\n",
                                         "dév", 17, None, [device]))
        elif op == 3:    # oversized batch
            assert isinstance(doc, dict)
            key, make = (("samples", lambda: self.sensor_doc(device)) if stream == "sensor"
                         else ("reads", lambda: self.rfid_doc(device)))
            item = make()
            item.pop("device_id", None)
            if key in item:
                item = item[key][0]  # type: ignore[index]
            doc = {key: [item] * r.choice((0, 999, 1000, 1001, 3000))}
        elif op == 4:    # many metrics / odd metric names
            if stream == "sensor":
                doc = {"time": int(self.now.timestamp() * 1000), "values": {
                    r.choice((f"m{i}_c", f"M{i}_C", f"m{i}", "x" * 70 + "_c", "temp_c\n", "")): 1
                    for i in range(r.choice((1, 64, 65, 200)))}}
            else:
                self._replace_leaf(doc, lambda: r.choice(("3074", "G" * 24, "30" * 62,
                                                          "30" * 64, " " * 24)))
        elif op == 5:    # unknown or duplicate keys
            text = json.dumps(doc)
            return (text[:-1] + r.choice((', "extra": 1}', ', "time": "x"}', ', "": null}',
                                          ', "samples": []}', ', "reads": null}'))).encode()
        elif op == 6:    # wrong top-level type
            doc = r.choice(([doc], "text", 1, None, True, [], {}))
        elif op == 7:    # huge numbers as raw text (beyond what Python's dumps writes)
            text = json.dumps(doc)
            raw = r.choice(("1e999", "-1e999", "1" * 400, "0." + "0" * 400 + "1", "-0", "1E+2",
                            "01", "+1", ".5", "1.", "0x1F", "NaN", "-Infinity", "1e-999"))
            for token in (": -", ": 0", ": 1", ": 2", ": 3", ": 4"):
                i = text.find(token)
                if i >= 0:
                    j = i + 2
                    k = j + 1
                    while k < len(text) and text[k] in "0123456789.eE+-":
                        k += 1
                    return (text[:j] + raw + text[k:]).encode()
            return text.encode()
        else:            # long strings
            self._replace_leaf(doc, lambda: r.choice(("x" * 10_000, "\u00e9" * 5000,
                                                      "\\" * 100, "\"")))
        text = json.dumps(doc, ensure_ascii=r.random() < 0.5)
        if deep is not None:
            text = text.replace('"__DEEP__"', deep, 1)
        return text.encode("utf-8", "surrogatepass")

    def _replace_leaf(self, doc: object, value: Callable[[], object]) -> None:
        node, r = doc, self.rng
        for _ in range(6):
            if isinstance(node, dict) and node:
                key = r.choice(list(node))
                child = node[key]
                if not isinstance(child, dict | list) or not child or r.random() < 0.3:
                    node[key] = value()
                    return
                node = child
            elif isinstance(node, list) and node:
                i = r.randrange(len(node))
                child = node[i]
                if not isinstance(child, dict | list) or not child or r.random() < 0.3:
                    node[i] = value()
                    return
                node = child
            else:
                return

    def _nmea(self) -> bytes:
        r = self.rng
        sentences = self.nmea_epoch()
        op = r.randrange(8)
        if op == 0:      # a field replaced, checksum recomputed (or kept stale)
            for _ in range(r.randrange(1, 4)):
                i = r.randrange(len(sentences))
                body = sentences[i][1:sentences[i].index("*")]
                fields = body.split(",")
                fields[r.randrange(len(fields))] = r.choice(_NMEA_VALUES)
                new = ",".join(fields)
                sentences[i] = (_checksummed(new) if r.random() < 0.9
                                else "$" + new + sentences[i][sentences[i].index("*"):])
        elif op == 1:    # duplicated and shuffled sentences
            sentences = sentences * r.choice((2, 3)) if r.random() < 0.5 else sentences
            r.shuffle(sentences)
        elif op == 2:    # several epochs in one message, or a flood
            n = r.choice((2, 5, 30, 60))
            sentences = [s for _ in range(n) for s in self.nmea_epoch()]
        elif op == 3:    # truncated sentence or message
            i = r.randrange(len(sentences))
            sentences[i] = sentences[i][:r.randrange(1, len(sentences[i]) + 1)]
        elif op == 4:    # fields dropped or added
            i = r.randrange(len(sentences))
            body = sentences[i][1:sentences[i].index("*")]
            fields = body.split(",")
            fields = (fields[:r.randrange(1, len(fields) + 1)] if r.random() < 0.5
                      else fields + [""] * r.choice((1, 10, 40)))
            sentences[i] = _checksummed(",".join(fields))
        elif op == 5:    # lower-case checksum, missing checksum, '!' start
            i = r.randrange(len(sentences))
            s = sentences[i]
            sentences[i] = r.choice((s.lower()[:1] + s[1:-2] + s[-2:].lower(), s[:s.index("*")],
                                     "!" + s[1:], s + "*00", s.replace(",", ",,", 1)))
        sep = "\r\n"
        if op == 6:      # CR/LF games
            sep = r.choice(("\n", "\r", "", "\r\r\n", "\n\r", "\r\n\r\n", " \r\n", "\t"))
        text = sep.join(sentences) + r.choice(("\r\n", "", "\n", "\r\n\r\n", sep))
        if op == 7:      # garbage between sentences
            i = r.randrange(len(text) + 1)
            text = text[:i] + r.choice(("junk\r\n", "\r\n\r\n", "$", "$$$$", "*", ",,,,",
                                        "$GP", " " * 20)) + text[i:]
        return text.encode("utf-8")

    def make(self) -> tuple[str, str, bytes]:
        """One input: (kind, topic, payload)."""
        r = self.rng
        kind = r.choices(KINDS, _WEIGHTS)[0]
        stream = r.choices(("nmea", "sensor", "rfid", "status"), (40, 27, 27, 6))[0]
        topic, device = self.topic(stream)
        if kind == "bytes":
            return kind, topic, self._bytes(self._length())
        if kind == "json":
            if stream not in ("sensor", "rfid"):
                stream = r.choice(("sensor", "rfid"))
                topic, device = self.topic(stream)
            return kind, topic, self._json(stream, device)
        if kind == "nmea":
            if stream != "nmea":
                topic, device = self.topic("nmea") if r.random() < 0.9 else (topic, device)
            return kind, topic, self._nmea()
        base = bytearray(self.valid(stream, device))
        if kind == "splice":
            other = self.valid(r.choice(("nmea", "sensor", "rfid")), device)
            i, j = r.randrange(len(base) + 1), r.randrange(len(other) + 1)
            base = base[:i] + other[j:] if r.random() < 0.5 else base + other
        elif kind == "bit_flip":
            self._bit_flip(base)
        elif kind == "insert_delete":
            self._insert_delete(base)
        elif kind == "utf8_garbage":
            self._utf8_garbage(base)
        return kind, topic, bytes(base)


@dataclass
class Finding:
    """An exception, hang or accounting violation, with where its reproducer is."""

    what: str
    detail: str
    path: Path | None


@dataclass
class Report:
    """What a run did and found."""

    inputs: int = 0
    batches: int = 0
    seconds: float = 0.0
    kinds: Counter[str] = field(default_factory=Counter)
    #: Pipeline outcome per message: rows, dead_letter, status, skipped_nmea, ...
    outcomes: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    exceptions: list[Finding] = field(default_factory=list)
    hangs: list[Finding] = field(default_factory=list)
    violations: list[Finding] = field(default_factory=list)
    slowest_batch_s: float = 0.0

    @property
    def clean(self) -> bool:
        return not (self.exceptions or self.hangs or self.violations)


class _Watchdog:
    """Reports a batch that runs longer than ``hang_s`` (saving it) while it runs; exits
    the process if it is stuck for ``20 * hang_s``."""

    def __init__(self, hang_s: float, on_hang: Callable[[str, list[tuple[str, bytes]]], None]
                 ) -> None:
        self._hang_s = hang_s
        self._on_hang = on_hang
        self._lock = threading.Lock()
        self._job: tuple[str, float, list[tuple[str, bytes]]] | None = None
        self._reported = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fuzz-watchdog")
        self._thread.start()

    def start(self, label: str, inputs: list[tuple[str, bytes]]) -> None:
        with self._lock:
            self._job, self._reported = (label, time.monotonic(), inputs), False

    def done(self) -> None:
        with self._lock:
            self._job = None

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(min(0.5, self._hang_s / 4)):
            with self._lock:
                job, reported = self._job, self._reported
            if job is None:
                continue
            label, started, inputs = job
            elapsed = time.monotonic() - started
            if elapsed > self._hang_s and not reported:
                with self._lock:
                    self._reported = True
                self._on_hang(label, inputs)
            if elapsed > 20 * self._hang_s:
                print(f"fuzz: {label} stuck for {elapsed:.0f} s; reproducer saved, exiting",
                      flush=True)
                os._exit(3)


class Fuzzer:
    """Runs generated batches through the decoders and a Pipeline, checking each."""

    def __init__(self, *, seed: int, out_dir: Path, batch: int = 2000, hang_s: float = 30.0,
                 max_saved: int = 20) -> None:
        self.gen = Generator(seed)
        self.out_dir = out_dir
        self.batch = batch
        self.max_saved = max_saved
        self.report = Report()
        self._hang_s = hang_s
        self._config = Config()
        self._new_pipeline()
        self._nmea_state = NmeaState()
        self._nmea_config = NmeaConfig(max_sentences=self._config.limits.max_sentences_per_message)
        self._metric_table = MetricTable()
        self._dev_ids = list(DEVICES)
        self._saved = 0

    def _new_pipeline(self) -> None:
        self._metrics = Metrics()
        self.pipeline = Pipeline(self._config, self._metrics)

    # --- saving --------------------------------------------------------------------

    def _save(self, name: str, inputs: list[tuple[str, bytes]], note: str) -> Path | None:
        if self._saved >= self.max_saved:
            return None
        self._saved += 1
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{name}.jsonl"
        with path.open("w") as fh:
            fh.write(json.dumps({"note": note}) + "\n")
            for topic, payload in inputs:
                fh.write(json.dumps({"topic": topic,
                                     "payload_b64": base64.b64encode(payload).decode()}) + "\n")
        return path

    def _on_hang(self, label: str, inputs: list[tuple[str, bytes]]) -> None:
        path = self._save(f"hang-{label}", inputs, f"{label} ran over {self._hang_s} s")
        self.report.hangs.append(Finding("hang", f"{label} > {self._hang_s} s", path))

    # --- running -------------------------------------------------------------------

    def run(self, inputs: int, progress: Callable[[Report], None] | None = None) -> Report:
        """Generate and check ``inputs`` inputs; returns the report."""
        dog = _Watchdog(self._hang_s, self._on_hang)
        t0 = time.perf_counter()
        try:
            while self.report.inputs < inputs:
                n = min(self.batch, inputs - self.report.inputs)
                made = [self.gen.make() for _ in range(n)]
                self.report.kinds.update(k for k, _, _ in made)
                batch = [(t, p) for _, t, p in made]
                label = f"batch-{self.report.batches}"
                dog.start(label, batch)
                b0 = time.perf_counter()
                self._check_batch(label, batch)
                self.report.slowest_batch_s = max(self.report.slowest_batch_s,
                                                  time.perf_counter() - b0)
                dog.done()
                self.report.inputs += n
                self.report.batches += 1
                self.report.seconds = time.perf_counter() - t0
                if progress is not None:
                    progress(self.report)
        finally:
            dog.close()
        self.report.seconds = time.perf_counter() - t0
        return self.report

    def _check_batch(self, label: str, batch: list[tuple[str, bytes]]) -> None:
        n = len(batch)
        payloads = [p for _, p in batch]
        base = time.time_ns() // 1000
        received = np.arange(base, base + n, dtype=np.int64)
        dev = np.arange(n, dtype=np.int32) % len(self._dev_ids)
        self._guard(label, "decode_batch", batch, lambda items: decode_batch(
            [p for _, p in items], dev[:len(items)].astype(np.int64), received[:len(items)],
            self._nmea_state, self._nmea_config))
        for name, decode in (("decode_sensor", self._decode_sensor),
                             ("decode_rfid", self._decode_rfid)):
            out = self._guard(label, name, batch, lambda items, d=decode: d(
                [p for _, p in items], dev[:len(items)], received[:len(items)]))
            if out is not None:
                self._check_json(label, name, batch, *out)
        raw = RawBatch([t.encode("utf-8", "surrogateescape") for t, _ in batch], payloads,
                       received.tolist())
        before = self._rejected_total()
        wb = self._guard(label, "Pipeline.process", batch,
                         lambda items: self.pipeline.process(raw) if items is batch
                         else self._fresh_process(items))
        if wb is None:
            self._new_pipeline()
            return
        self._account(label, batch, raw, wb, self._rejected_total() - before)

    def _decode_sensor(self, payloads: list[bytes], dev: np.ndarray, rec: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        out = decode_sensor(payloads, dev, rec, self._metric_table, SensorConfig(),
                            device_ids=self._dev_ids)
        return out.readings["msg"], out.rejects.msg

    def _decode_rfid(self, payloads: list[bytes], dev: np.ndarray, rec: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        out = decode_rfid(payloads, dev, rec, RfidConfig(), device_ids=self._dev_ids)
        return out.reads["msg"], out.rejects.msg

    def _fresh_process(self, items: list[tuple[str, bytes]]) -> WriteBatch:
        now = time.time_ns() // 1000
        return Pipeline(self._config, Metrics()).process(RawBatch(
            [t.encode("utf-8", "surrogateescape") for t, _ in items], [p for _, p in items],
            [now + k for k in range(len(items))]))

    def _guard(self, label: str, name: str, batch: list[tuple[str, bytes]],
                  call: Callable[[list[tuple[str, bytes]]], T]) -> T | None:
        """``call(batch)``; on an exception, save the batch and every input that fails
        alone, and return None."""
        try:
            return call(batch)
        except Exception as exc:  # what the fuzzer is looking for
            detail = f"{name}: {type(exc).__name__}: {exc}"[:300]
            path = self._save(f"exception-{label}-{name}", batch,
                              traceback.format_exc())
            self.report.exceptions.append(Finding("exception", detail, path))
            for k, item in enumerate(batch):
                try:
                    call([item])
                except Exception:
                    single = self._save(f"exception-{label}-{name}-input-{k}", [item],
                                        traceback.format_exc())
                    self.report.exceptions.append(Finding("exception (one input)", detail,
                                                          single))
            return None

    def _violation(self, label: str, what: str, items: list[tuple[str, bytes]]) -> None:
        path = self._save(f"violation-{label}-{len(self.report.violations)}", items, what)
        self.report.violations.append(Finding("accounting", what, path))

    def _check_json(self, label: str, name: str, batch: list[tuple[str, bytes]],
                    row_msg: np.ndarray, reject_msg: np.ndarray) -> None:
        n = len(batch)
        rows = np.bincount(row_msg, minlength=n) > 0
        rejects = np.bincount(reject_msg, minlength=n)
        for k in np.flatnonzero(rows == (rejects > 0)).tolist()[:3]:
            self._violation(label, f"{name}: message {k} has rows={bool(rows[k])} and "
                            f"{int(rejects[k])} rejects", [batch[k]])
        for k in np.flatnonzero(rejects > 1).tolist()[:3]:
            self._violation(label, f"{name}: message {k} rejected {int(rejects[k])} times",
                            [batch[k]])

    def _rejected_total(self) -> float:
        return sum(s.value for metric in self._metrics.messages_rejected.collect()
                   for s in metric.samples if s.name.endswith("_total"))

    def _account(self, label: str, batch: list[tuple[str, bytes]], raw: RawBatch,
                 wb: WriteBatch, counted: float) -> None:
        n, base = len(raw), raw.received_us[0]
        rows = np.zeros(n, dtype=bool)
        for table in (wb.positions, wb.readings, wb.reads):
            if table is not None and table["received_at"].size:
                rows[table["received_at"] - base] = True
        dead = np.bincount(np.array([d.received_at_us - base for d in wb.dead_letters],
                                    dtype=np.int64), minlength=n)
        status = np.zeros(n, dtype=bool)
        status[[t - base for _, _, t in wb.statuses]] = True
        for d in wb.dead_letters:
            self.report.rejected[f"{d.stream}/{d.error}"] += 1
        if counted != len(wb.dead_letters):
            self._violation(label, f"rejected counter moved {counted:g}, "
                            f"{len(wb.dead_letters)} dead letters", batch)
        json_msg = np.array([s in ("sensor", "rfid") for s in wb.msg_stream], dtype=bool)
        for k in np.flatnonzero(json_msg & ((rows & (dead > 0)) | (dead > 1))).tolist()[:3]:
            self._violation(label, f"JSON message {k}: rows={bool(rows[k])}, "
                            f"{int(dead[k])} dead letters", [batch[k]])
        for table, batch_rows in (("anomalies", wb.anomalies), ("geofence_events",
                                                                wb.geofence_events)):
            for text in (batch_rows.detail.tolist() if batch_rows is not None else []):
                if not _strict_json(text):
                    self._violation(label, f"{table}.detail is not JSON the database takes: "
                                    f"{str(text)[:200]}", batch)
                    break
        outcome = np.where(rows, "rows", np.where(dead > 0, "dead_letter",
                                                  np.where(status, "status", ""))).astype(object)
        for k in np.flatnonzero(outcome == "").tolist():
            why = self._unaccounted(wb.msg_stream[k], raw.payloads[k], int(base + k))
            if why is None:
                self._violation(label, f"message {k} ({wb.msg_stream[k]}) produced nothing",
                                [batch[k]])
            else:
                outcome[k] = why
        self.report.outcomes.update(outcome.tolist())

    def _unaccounted(self, stream: str, payload: bytes, received_us: int) -> str | None:
        """Why a message without rows, dead letter or status is still accounted for."""
        if stream == "status" and not payload.strip():
            return "status_clear"
        if stream != "nmea":
            return None
        out = decode_batch([payload], np.zeros(1, np.int64), np.array([received_us]),
                           NmeaState(), self._nmea_config)
        if len(out.rejects):
            return None
        if out.positions["time"].size:
            return "nmea_joined_other_epoch"
        return "nmea_skipped_only" if sum(out.skipped.values()) else None


def _strict_json(text: object) -> bool:
    """Whether ``text`` is None or JSON that PostgreSQL's jsonb accepts (no NaN/Infinity)."""
    if text is None:
        return True

    def no_constant(token: str) -> None:
        raise ValueError(token)

    try:
        json.loads(str(text), parse_constant=no_constant)
    except ValueError:
        return False
    return True


def summary(report: Report) -> str:
    """The report as printed by bench/fuzz.py."""
    r = report
    lines = [
        f"inputs {r.inputs:,} in {r.batches:,} batches, {r.seconds:.1f} s: "
        f"{r.inputs / max(r.seconds, 1e-9):,.0f} inputs/s (slowest batch "
        f"{r.slowest_batch_s:.2f} s)",
        "generated by kind: " + ", ".join(f"{k} {v:,}" for k, v in sorted(r.kinds.items())),
        "pipeline outcome per message: " + ", ".join(
            f"{k} {v:,}" for k, v in r.outcomes.most_common()),
        "dead letters by stream/reason: " + ", ".join(
            f"{k} {v:,}" for k, v in r.rejected.most_common()),
        f"exceptions {len(r.exceptions)}, hangs {len(r.hangs)}, "
        f"accounting violations {len(r.violations)}",
    ]
    for f in (*r.exceptions, *r.hangs, *r.violations)[:20]:
        lines.append(f"  {f.what}: {f.detail} -> {f.path}")
    lines.append("invariant checked per batch: no exception, no batch over the hang limit; "
                 "each JSON decoder gives every message rows or exactly one reject; every "
                 "pipeline message has rows, a dead letter or a status (or is an empty "
                 "status, or NMEA counted as skipped / feeding another message's epoch); "
                 "rejected counter == dead letters; anomaly and event details are JSON jsonb takes")
    return "\n".join(lines)
