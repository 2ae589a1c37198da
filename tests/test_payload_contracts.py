"""The published JSON Schemas and the fast decoders accept exactly the same payloads.

One corpus (``tests/data/payloads``, plus batches at and over the size limits generated
here) goes through both ``jsonschema`` (draft 2020-12, ``date-time`` format checked) and
``decode_rfid``/``decode_sensor``; every item must get the same verdict, and the decoder
the reason its file name states. Time-window rules (future/stale) are outside JSON
Schema: the decoders run with unlimited tolerances here and are tested in
test_rfid.py/test_sensor.py.

JSON Schema patterns are ECMA-262 regular expressions, where ``$`` matches only at the
end of the string; Python's ``re`` also matches before a final newline. The validator
here gets a ``pattern`` keyword with ECMA's meaning of ``$`` so that ``"temp_c\\n"`` is
judged as the schema states it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError, validators
from rfc3339_validator import validate_rfc3339

from beiflow.ingest.jsonbatch import DEVICE_ID_PATTERN, MAX_EPOCH_MS, TIME_PATTERN, parse_times
from beiflow.ingest.rfid import EPC_PATTERN, RfidConfig, decode_rfid
from beiflow.ingest.sensor import (
    METRIC_NAME_PATTERN,
    STATE_SUFFIX_PATTERN,
    UNIT_SUFFIX_PATTERN,
    MetricTable,
    SensorConfig,
    decode_sensor,
    is_metric_name,
)
from beiflow.ingest.topics import NAME_RE

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "data" / "payloads"
SCHEMAS = {name: json.loads((ROOT / "schemas" / f"{name}.json").read_text())
           for name in ("rfid", "sensor")}
RECEIVED = 1_740_816_930_000_000
NO_WINDOW = {"future_tolerance_s": math.inf, "past_tolerance_s": math.inf}
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[
        ValidationError]:
    if validator.is_type(instance, "string") and not re.search(
            pattern.replace("$", r"\Z"), instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


Validator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


def schema_accepts(stream: str, payload: bytes) -> bool:
    """The JSON Schema verdict on raw bytes: strict UTF-8 JSON, then the schema."""

    def no_constant(token: str) -> None:
        raise ValueError(token)

    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=no_constant)
    except ValueError:
        return False
    validator = Validator(SCHEMAS[stream], format_checker=Draft202012Validator.FORMAT_CHECKER)
    return validator.is_valid(doc)


def decoder_reason(stream: str, payload: bytes) -> str:
    """``valid`` or the decoder's reject reason for one payload."""
    dev = np.zeros(1, np.int32)
    rec = np.full(1, RECEIVED, np.int64)
    if stream == "rfid":
        b = decode_rfid([payload], dev, rec, RfidConfig(**NO_WINDOW))
        rows, rejects = b.reads["time"].size, b.rejects
    else:
        s = decode_sensor([payload], dev, rec, MetricTable(), SensorConfig(**NO_WINDOW))
        rows, rejects = s.readings["time"].size, s.rejects
    if len(rejects):
        assert rows == 0
        return str(rejects.reason[0])
    assert rows > 0
    return "valid"


def _read(i: int) -> dict[str, Any]:
    return {"epc": f"30742{i:019X}", "antenna": i % 4, "rssi_dbm": -50.5,
            "time": 1_740_816_930_000 + i}


def _sample(i: int) -> dict[str, Any]:
    return {"time": 1_740_816_930_000 + i, "values": {"temp_c": i / 4, "door_open": i % 2}}


def _generated() -> list[tuple[str, str, bytes]]:
    """Batches at and over the limits (too big to keep as files)."""
    return [
        ("rfid", "valid--1000-reads", json.dumps({"reads": [_read(i) for i in range(1000)]})),
        ("rfid", "too_many_readings--1001-reads",
         json.dumps({"reads": [_read(i) for i in range(1001)]})),
        ("sensor", "valid--1000-samples",
         json.dumps({"samples": [_sample(i) for i in range(1000)]})),
        ("sensor", "too_many_readings--1001-samples",
         json.dumps({"samples": [_sample(i) for i in range(1001)]})),
    ]


def corpus() -> list[tuple[str, str, bytes]]:
    """Every corpus item: (stream, name, payload)."""
    items = [(path.parent.name, path.stem, path.read_bytes())
             for path in sorted(CORPUS.glob("*/*.json"))]
    items += [(s, n, p.encode()) for s, n, p in _generated()]
    return items


ITEMS = corpus()


@pytest.mark.parametrize(("stream", "name", "payload"), ITEMS,
                         ids=[f"{s}/{n}" for s, n, _ in ITEMS])
def test_schema_and_decoder_give_the_same_verdict(stream: str, name: str,
                                                  payload: bytes) -> None:
    expected = name.split("--")[0]
    assert schema_accepts(stream, payload) is (expected == "valid")
    assert decoder_reason(stream, payload) == expected


@pytest.mark.parametrize("stream", ["rfid", "sensor"])
def test_corpus_covers_both_verdicts_and_every_static_reason(stream: str) -> None:
    names = [n for s, n, _ in ITEMS if s == stream]
    reasons = {n.split("--")[0] for n in names}
    assert sum(n.startswith("valid--") for n in names) >= 20
    assert sum(not n.startswith("valid--") for n in names) >= 40
    common = {"valid", "bad_json", "non_finite", "schema", "bad_time", "too_many_readings"}
    assert reasons == common | ({"bad_epc"} if stream == "rfid" else {"bad_metric_name"})


@pytest.mark.parametrize("stream", ["rfid", "sensor"])
def test_schema_is_a_valid_2020_12_schema_with_a_valid_example(stream: str) -> None:
    schema = SCHEMAS[stream]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] and schema["description"]
    examples = [*schema["examples"], *schema["$defs"]["batch"]["examples"]]
    assert len(schema["examples"]) == 1
    for example in examples:
        payload = json.dumps(example).encode()
        assert schema_accepts(stream, payload)
        assert decoder_reason(stream, payload) == "valid"


def test_schemas_state_the_decoders_constants() -> None:
    rfid, sensor = SCHEMAS["rfid"]["$defs"], SCHEMAS["sensor"]["$defs"]
    for defs in (rfid, sensor):
        string, integer = defs["time"]["oneOf"]
        assert string["pattern"] == TIME_PATTERN
        assert string["format"] == "date-time"
        assert (integer["minimum"], integer["maximum"]) == (0, MAX_EPOCH_MS)
    assert rfid["read"]["properties"]["epc"]["pattern"] == EPC_PATTERN
    for defs in (rfid, sensor):
        assert defs["device_id"]["pattern"] == DEVICE_ID_PATTERN == NAME_RE.pattern
        for form in ("single", "batch"):
            assert defs[form]["properties"]["device_id"] == {"$ref": "#/$defs/device_id"}
    assert rfid["batch"]["properties"]["reads"]["maxItems"] == RfidConfig().max_reads
    values = sensor["values"]
    assert [p["pattern"] for p in values["propertyNames"]["allOf"]] == [
        METRIC_NAME_PATTERN, UNIT_SUFFIX_PATTERN]
    assert list(values["patternProperties"]) == [STATE_SUFFIX_PATTERN]
    assert values["maxProperties"] == SensorConfig().max_metrics
    assert sensor["batch"]["properties"]["samples"]["maxItems"] == SensorConfig().max_samples
    assert values["additionalProperties"]["maximum"] == np.finfo(np.float64).max


def test_duplicate_key_with_an_invalid_earlier_value_is_stricter_than_the_schema() -> None:
    """JSON Schema sees only the last of duplicate keys; the decoder checks each one.

    RFC 8259 leaves duplicate names undefined and I-JSON (RFC 7493) forbids them, so
    the decoder rejecting this is deliberate; it is the one known difference.
    """
    payload = b'{"time": 1740816930000, "values": {"temp_c": "x", "temp_c": 4.5}}'
    assert schema_accepts("sensor", payload)
    assert decoder_reason("sensor", payload) == "schema"


def _schema_time_ok(s: str) -> bool:
    return re.search(TIME_PATTERN.replace("$", r"\Z"), s) is not None and validate_rfc3339(
        s.upper())


_TIME_CHARS = st.sampled_from(list("0123456789-:T.Z+tz 9"))
_TIMES = st.one_of(
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                 timezones=st.timezones()).map(dt.datetime.isoformat),
    st.text(_TIME_CHARS, max_size=36),
    st.text(max_size=40),
    st.builds(lambda d, frac, off: f"{d:%Y-%m-%dT%H:%M:%S}{frac}{off}",
              st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
              st.sampled_from(["", ".5", ".123456", ".1234565", ".999999999", ".", ".1234567890"]),
              st.sampled_from(["Z", "z", "+00:00", "-23:59", "+24:00", "+0530", "", "-00:00"])),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_TIMES, max_size=8))
def test_time_strings_parse_exactly_as_the_schema_accepts_them(strings: list[str]) -> None:
    us, ok = parse_times(strings)
    for s, u, good in zip(strings, us.tolist(), ok.tolist(), strict=True):
        assert good is _schema_time_ok(s), s
        if good:
            frac = re.search(r"\.([0-9]+)", s)
            digits = frac[1] if frac else ""
            base = dt.datetime.fromisoformat(re.sub(r"\.[0-9]+", "", s.upper()))
            exact = (base - EPOCH) // dt.timedelta(microseconds=1)
            extra = int((digits + "0000000")[:7])  # rounded half up to the microsecond
            assert u == exact + (extra + 5) // 10, s


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-10, MAX_EPOCH_MS + 10), st.floats(allow_nan=False),
                          st.integers(-(10**30), 10**30)), max_size=8))
def test_epoch_milliseconds_are_integers_in_range(values: list[int | float]) -> None:
    us, ok = parse_times(values)
    for v, u, good in zip(values, us.tolist(), ok.tolist(), strict=True):
        integral = isinstance(v, int) or (math.isfinite(v) and v == int(v))
        assert good is (integral and 0 <= v <= MAX_EPOCH_MS)
        if good:
            assert u == int(v) * 1000


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from(list("aZ09_.-/ \né")), max_size=66),
       st.sampled_from(["rfid", "sensor"]), st.booleans())
def test_device_id_check_matches_the_schema_pattern(device_id: str, stream: str,
                                                    batch: bool) -> None:
    item: dict[str, Any] = (_read(1) if stream == "rfid" else _sample(1))
    doc = ({"device_id": device_id, ("reads" if stream == "rfid" else "samples"): [item]}
           if batch else {"device_id": device_id, **item})
    payload = json.dumps(doc).encode()
    verdict = schema_accepts(stream, payload)
    assert verdict is (decoder_reason(stream, payload) == "valid")
    assert verdict is (NAME_RE.fullmatch(device_id) is not None)


_EPC_CHARS = st.sampled_from(list("0123456789abcdefABCDEFgG x\n"))


@settings(max_examples=300, deadline=None)
@given(st.text(_EPC_CHARS, max_size=130))
def test_epc_check_matches_the_schema_pattern(epc: str) -> None:
    payload = json.dumps({"epc": epc, "antenna": 1, "rssi_dbm": -50,
                          "time": 1_740_816_930_000}).encode()
    assert schema_accepts("rfid", payload) is (decoder_reason("rfid", payload) == "valid")


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from(list("abcz019_vackwhopnlrgm-A\n")), max_size=70))
def test_metric_name_check_matches_the_schema(name: str) -> None:
    payload = json.dumps({"time": 1_740_816_930_000, "values": {name: 1}}).encode()
    verdict = schema_accepts("sensor", payload)
    assert verdict is (decoder_reason("sensor", payload) == "valid")
    assert verdict is is_metric_name(name)
