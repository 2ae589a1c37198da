"""Sensor payloads (``schemas/sensor.json``) to one row per (sample, metric).

A grid or cold-chain node publishes one sample ``{"time": ..., "values": {...}}`` or a
batch ``{"samples": [...]}``. Each payload is parsed by a typed msgspec decoder (types,
required and unknown keys, finite numbers); metric names, state values and times are
then checked over the whole batch at once.

Metric names: :data:`METRIC_NAME_PATTERN` (``[a-z][a-z0-9_]{0,63}``) ending in ``_``
plus one of :data:`UNIT_SUFFIXES`, the unit of the value (``voltage_v``, ``temp_c``,
``humidity_pct``). Names ending in a :data:`STATE_SUFFIXES` suffix (``door_open``,
``compressor_on``, ``smoke_alarm``) are states: their value is the number 0 or 1. JSON
``true``/``false`` are not accepted for them (or anywhere): every value is a JSON
number, one rule for all metrics, so a device that sends ``true`` or ``"1"`` learns it
at once instead of having one metric silently treated differently.

A message with any problem contributes no rows; it comes back as one reject, the first
failing check in this order: JSON syntax (``bad_json``, ``non_finite`` for the
``NaN``/``Infinity`` tokens or numbers beyond a double), types, unknown keys and
ranges (``schema``), a top-level ``device_id`` other than the topic's device
(``device_mismatch``), required and misplaced keys (``schema``), batch size
(``too_many_readings``), empty ``values`` (``schema``), metrics per sample
(``too_many_readings``), names (``bad_metric_name``), state values (``schema``), times
(``bad_time``, ``future_time``, ``stale_time``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain

import msgspec
import numpy as np
from msgspec import UNSET, UnsetType

from beiflow.ingest.jsonbatch import (
    DeviceId,
    JsonRejects,
    RejectLog,
    check_lengths,
    check_times,
    claims_other_device,
    decode_error,
    path_key,
)
from beiflow.schemas.columns import SENSOR_COLUMNS

__all__ = [
    "METRIC_NAME_PATTERN",
    "REJECT_REASONS",
    "STATE_SUFFIXES",
    "STATE_SUFFIX_PATTERN",
    "UNIT_SUFFIXES",
    "UNIT_SUFFIX_PATTERN",
    "MetricTable",
    "SensorBatch",
    "SensorConfig",
    "decode_sensor",
    "is_metric_name",
]

#: Reject reasons (dead-letter reasons and metric labels).
REJECT_REASONS: tuple[str, ...] = (
    "bad_json", "non_finite", "schema", "device_mismatch", "too_many_readings",
    "bad_metric_name", "bad_time", "future_time", "stale_time",
)
#: Metric name characters and length (ECMA-262 syntax, as in the schema).
METRIC_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
#: Unit suffixes a metric name ends in (after ``_``), and what each means.
UNIT_SUFFIXES: dict[str, str] = {
    "v": "volt",
    "mv": "millivolt",
    "kv": "kilovolt",
    "a": "ampere",
    "ma": "milliampere",
    "w": "watt",
    "kw": "kilowatt",
    "va": "volt-ampere (apparent power)",
    "kva": "kilovolt-ampere",
    "var": "volt-ampere reactive",
    "kvar": "kilovolt-ampere reactive",
    "wh": "watt-hour",
    "kwh": "kilowatt-hour",
    "hz": "hertz",
    "pf": "power factor, -1 to 1",
    "ohm": "ohm",
    "c": "degree Celsius",
    "pct": "percent",
    "pa": "pascal",
    "hpa": "hectopascal",
    "kpa": "kilopascal",
    "lux": "lux",
    "ppm": "parts per million",
    "ppb": "parts per billion",
    "ugm3": "microgram per cubic metre",
    "db": "decibel",
    "dbm": "decibel-milliwatt",
    "m": "metre",
    "mm": "millimetre",
    "mps": "metre per second",
    "deg": "degree (angle)",
    "s": "second",
    "count": "count, dimensionless",
    "open": "state: 1 open, 0 closed",
    "on": "state: 1 on, 0 off",
    "alarm": "state: 1 active, 0 clear",
}
#: Suffixes of state metrics, whose value is 0 or 1.
STATE_SUFFIXES: tuple[str, ...] = ("open", "on", "alarm")
#: The unit-suffix rule as the schema states it.
UNIT_SUFFIX_PATTERN = "_(?:" + "|".join(UNIT_SUFFIXES) + ")$"
#: The state-metric rule as the schema states it.
STATE_SUFFIX_PATTERN = "_(?:" + "|".join(STATE_SUFFIXES) + ")$"

_NAME = re.compile(METRIC_NAME_PATTERN[1:-1])
_UNIT_ENDINGS = tuple("_" + s for s in UNIT_SUFFIXES)
_STATE_ENDINGS = tuple("_" + s for s in STATE_SUFFIXES)


def is_metric_name(name: str) -> bool:
    """Whether ``name`` is a valid metric name (pattern and unit suffix)."""
    return _NAME.fullmatch(name) is not None and name.endswith(_UNIT_ENDINGS)


class MetricTable:
    """Metric name -> stable int32 code, in order of first sight; owned by the caller
    across batches (the sink maps codes back through :attr:`names`)."""

    __slots__ = ("_codes", "_state", "names")

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.names: list[str] = []
        self._codes: dict[str, int] = {}
        self._state = np.zeros(0, dtype=bool)
        for name in names:
            self.add(name)

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str) -> int:
        """Code of ``name``, assigning the next one if new; ValueError if invalid."""
        code = self._codes.get(name)
        if code is None:
            if not is_metric_name(name):
                raise ValueError(f"not a metric name: {name!r}")
            code = self._codes[name] = len(self.names)
            self.names.append(name)
        return code

    def codes(self, names: Sequence[str]) -> np.ndarray:
        """Codes of ``names`` (int32), new valid names added, -1 for invalid ones."""
        get = self._codes.get
        found = list(map(get, names))
        if None in found:
            for name in dict.fromkeys(n for n, c in zip(names, found, strict=True) if c is None):
                if is_metric_name(name):
                    self.add(name)
            found = [get(n, -1) for n in names]
        return np.array(found, dtype=np.int32)

    def state_mask(self) -> np.ndarray:
        """Whether each code is a state metric (value 0 or 1)."""
        if self._state.size != len(self.names):
            self._state = np.fromiter((n.endswith(_STATE_ENDINGS) for n in self.names),
                                      dtype=bool, count=len(self.names))
        return self._state


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorConfig:
    """Decoder limits."""

    #: A sample time later than arrival by more than this rejects the message:
    #: future_time.
    future_tolerance_s: float = 300.0
    #: A sample time earlier than arrival by more than this (30 days: loggers that
    #: upload after a trip) rejects the message: stale_time.
    past_tolerance_s: float = 30 * 86400.0
    #: More samples in one message: too_many_readings (the schema's ``maxItems``).
    max_samples: int = 1000
    #: More metrics in one sample: too_many_readings (the schema's ``maxProperties``).
    max_metrics: int = 64

    def __post_init__(self) -> None:
        if not (self.future_tolerance_s >= 0 and self.past_tolerance_s >= 0):
            raise ValueError("time tolerances must be >= 0")
        if self.max_samples < 1 or self.max_metrics < 1:
            raise ValueError("max_samples and max_metrics must be >= 1")


@dataclass(frozen=True, slots=True)
class SensorBatch:
    """What one batch decoded to.

    ``readings``: every column of ``SENSOR_COLUMNS`` plus ``device`` (int32), ``metric``
    (int32 code into the caller's :class:`MetricTable`) and ``msg`` (int32 message
    index), one row per (sample, metric), in message, sample and key order.
    """

    readings: dict[str, np.ndarray]
    rejects: JsonRejects


_Time = int | float | str


class _Sample(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    time: _Time
    values: dict[str, float]


class _Message(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    time: _Time | UnsetType = UNSET
    values: dict[str, float] | UnsetType = UNSET
    samples: list[_Sample] | UnsetType = UNSET
    device_id: DeviceId | UnsetType = UNSET


_DECODER = msgspec.json.Decoder(_Message)


def _problem(m: _Message, max_samples: int) -> tuple[str, str] | None:
    if m.samples is UNSET:
        for name in ("time", "values"):
            if getattr(m, name) is UNSET:
                return "schema", f"{name}: required field missing"
        return None
    for name in ("time", "values"):
        if getattr(m, name) is not UNSET:
            return "schema", f"{name}: unknown field (not allowed next to samples)"
    if not m.samples:
        return "schema", "samples: empty batch"
    if len(m.samples) > max_samples:
        return "too_many_readings", f"samples: {len(m.samples)} samples > {max_samples}"
    return None


def decode_sensor(payloads: Sequence[bytes], device: np.ndarray, received_at: np.ndarray,
                  metrics: MetricTable, config: SensorConfig = SensorConfig(), *,
                  device_ids: Sequence[str] | None = None) -> SensorBatch:
    """Decode sensor payloads into reading rows and rejects.

    ``device[i]`` is the dense index of the node that sent ``payloads[i]`` and
    ``received_at[i]`` its arrival time (int64 microseconds since the Unix epoch). New
    valid metric names are added to ``metrics``. ``device_ids`` (id per dense index)
    enables the ``device_mismatch`` check of a payload's ``device_id``.
    """
    n = len(payloads)
    dev, rec = check_lengths(device, received_at, n)
    log = RejectLog(n)
    groups: list[list[_Sample]] = []
    msgs: list[int] = []
    batched: list[bool] = []
    for i, payload in enumerate(payloads):
        try:
            m = _DECODER.decode(payload)
        except (ValueError, RecursionError) as exc:  # msgspec.DecodeError, bad UTF-8
            log.add(i, *decode_error(payload, exc))
            continue
        if claims_other_device(log, i, m.device_id, dev[i], device_ids):
            continue
        problem = _problem(m, config.max_samples)
        if problem is not None:
            log.add(i, *problem)
            continue
        batched.append(m.samples is not UNSET)
        groups.append(m.samples if m.samples is not UNSET
                      else [_Sample(m.time, m.values)])  # type: ignore[arg-type]
        msgs.append(i)
    counts = np.fromiter(map(len, groups), dtype=np.int64, count=len(groups))
    sample_msg = np.repeat(np.asarray(msgs, dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    pos = np.arange(sample_msg.size) - np.repeat(starts, counts)
    is_batch = np.repeat(np.asarray(batched, dtype=bool), counts)
    flat = list(chain.from_iterable(groups))
    times = [s.time for s in flat]
    dicts = [s.values for s in flat]

    def where(s: int, name: str) -> str:
        return f"samples[{pos[s]}].{name}" if is_batch[s] else name

    width = np.fromiter(map(len, dicts), dtype=np.int64, count=len(dicts))
    for s in log.first_per_message(width == 0, sample_msg).tolist():
        log.add(int(sample_msg[s]), "schema", f"{where(s, 'values')}: no metrics")
    for s in log.first_per_message(width > config.max_metrics, sample_msg).tolist():
        log.add(int(sample_msg[s]), "too_many_readings",
                f"{where(s, 'values')}: {width[s]} metrics > {config.max_metrics}")

    names = list(chain.from_iterable(dicts))
    value = np.fromiter(chain.from_iterable(map(dict.values, dicts)), dtype=np.float64,
                        count=len(names))
    row_sample = np.repeat(np.arange(len(dicts)), width)
    row_msg = sample_msg[row_sample]
    metric = metrics.codes(names)
    for r in log.first_per_message(metric < 0, row_msg).tolist():
        log.add(int(row_msg[r]), "bad_metric_name",
                f"{path_key(where(row_sample[r], 'values'), names[r])}: not a metric name "
                "([a-z][a-z0-9_]{0,63} ending in a unit suffix)")
    known = metric >= 0
    state = np.zeros(metric.size, dtype=bool)
    state[known] = metrics.state_mask()[metric[known]]
    for r in log.first_per_message(state & (value != 0) & (value != 1), row_msg).tolist():
        log.add(int(row_msg[r]), "schema",
                f"{path_key(where(row_sample[r], 'values'), names[r])}: a state metric is 0 or 1, "
                f"got {float(value[r])!r}")

    recv = rec[sample_msg]
    time_us = check_times(log, times, sample_msg, recv, lambda s: where(s, "time"),
                          config.future_tolerance_s, config.past_tolerance_s)

    keep = np.flatnonzero(~log.rejected[row_msg])
    msg = row_msg[keep]
    rows = row_sample[keep]
    out: dict[str, np.ndarray] = {
        "time": time_us[rows],
        "received_at": recv[rows],
        "value": value[keep],
    }
    assert tuple(out) == tuple(c.name for c in SENSOR_COLUMNS)
    out["device"] = dev[msg]
    out["metric"] = metric[keep]
    out["msg"] = msg.astype(np.int32)
    return SensorBatch(readings=out, rejects=log.freeze())
