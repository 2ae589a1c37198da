"""Column names, NumPy dtypes and units shared by decoders, the core and the SQL schema.

A batch is a mapping of equal-length 1-D NumPy arrays. Times are ``int64``
microseconds since the Unix epoch (UTC). Missing floats are ``NaN``; missing small
integers are ``-1``. ``device`` is a dense ``int32`` index into the batch's device
list; the sink maps it back to the ``device_id`` text key.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag
from typing import ClassVar

import numpy as np


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a columnar batch and of its table."""

    name: str
    dtype: np.dtype
    sql: str
    unit: str = ""
    doc: str = ""


def _c(name: str, dtype: str, sql: str, unit: str = "", doc: str = "") -> Column:
    return Column(name, np.dtype(dtype), sql, unit, doc)


#: Missing value of the small-integer columns.
INT_NULL = -1

#: Constellations whose per-fix satellite quality is kept (from GSV), in column order.
CONSTELLATIONS: tuple[str, ...] = ("gps", "bds", "glo", "gal", "qzss")

#: NMEA talker -> constellation of its GSV sentences.
TALKER_CONSTELLATION: dict[str, str] = {
    "GP": "gps",
    "BD": "bds",
    "GB": "bds",
    "GL": "glo",
    "GA": "gal",
    "GQ": "qzss",
}


class FixFlag(IntFlag):
    """Quality flags carried by every position row (``flags`` column)."""

    NONE = 0
    #: Device time lies further in the future than the configured tolerance.
    CLOCK_FUTURE = 1
    #: Device time lies further in the past than the configured tolerance.
    CLOCK_PAST = 2
    #: The date came from the arrival time, not from the receiver (GGA-only stream).
    DATE_FROM_RECEIVE = 4
    #: No valid fix in this epoch (RMC status V, GGA quality 0, or no coordinates).
    NO_FIX = 8
    #: Speed implied by the previous fix of the device exceeds the plausible bound.
    JUMP = 16
    #: Same position and time as the device's previous fix.
    DUPLICATE = 32
    #: Device time earlier than the device's latest fix (out of order).
    TIME_BACKWARDS = 64
    #: Coordinates at (0, 0): a receiver reporting a default position.
    NULL_ISLAND = 128
    #: Fix quality or HDOP too poor to trust for geofencing.
    POOR_QUALITY = 256


#: Flags a merged row keeps only when every part had them: they describe one delivery or
#: one partial view of an epoch (a redelivered copy is a duplicate; the stored row is not).
MERGE_AND_FLAGS = int(FixFlag.NO_FIX | FixFlag.DATE_FROM_RECEIVE | FixFlag.DUPLICATE
                      | FixFlag.TIME_BACKWARDS)


class DateSource:
    """Where an epoch's calendar date came from (``date_source`` column)."""

    RMC = 1
    ZDA = 2
    #: The latest RMC/ZDA date seen earlier from the same device.
    PREVIOUS = 3
    RECEIVE = 4
    UNKNOWN = 0

    NAMES: ClassVar[dict[int, str]] = {
        0: "unknown", 1: "rmc", 2: "zda", 3: "previous", 4: "receive",
    }


#: Columns of a position batch, in the order of the ``positions`` table after the key.
POSITION_COLUMNS: tuple[Column, ...] = (
    _c("time", "int64", "timestamptz", "us", "device time of the epoch"),
    _c("received_at", "int64", "timestamptz", "us", "arrival time at the collector"),
    _c("lat", "float64", "double precision", "deg", "WGS-84 latitude, north positive"),
    _c("lon", "float64", "double precision", "deg", "WGS-84 longitude, east positive"),
    _c("alt_m", "float64", "double precision", "m", "altitude above mean sea level"),
    _c("speed_mps", "float64", "double precision", "m/s", "speed over ground"),
    _c("course_deg", "float64", "double precision", "deg", "course over ground, true"),
    _c("fix_quality", "int16", "smallint", "", "GGA quality 0-8; GNS mapped to it"),
    _c("sats", "int16", "smallint", "", "satellites used in the fix"),
    _c("hdop", "float64", "real", "", "horizontal dilution of precision"),
    _c("pdop", "float64", "real", "", "position dilution of precision (GSA)"),
    _c("vdop", "float64", "real", "", "vertical dilution of precision (GSA)"),
    _c("status", "int16", "smallint", "", "RMC/GLL status: 1 valid (A), 0 void (V), -1 none"),
    _c("mode", "int16", "smallint", "", "NMEA 2.3+ mode indicator as its ASCII code, -1 none"),
    _c("date_source", "int16", "smallint", "", "DateSource code"),
    _c("flags", "int32", "integer", "", "FixFlag bits"),
    *(
        _c(f"sv_{c}", "int16", "smallint", "", f"{c} satellites in view (GSV)")
        for c in CONSTELLATIONS
    ),
    *(
        _c(f"cn0_{c}_dbhz", "float64", "real", "dB-Hz", f"mean C/N0 of tracked {c} satellites")
        for c in CONSTELLATIONS
    ),
)

POSITION_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in POSITION_COLUMNS)


def empty_columns(columns: tuple[Column, ...], n: int) -> dict[str, np.ndarray]:
    """Arrays of length ``n`` filled with each column's missing value."""
    out: dict[str, np.ndarray] = {}
    for col in columns:
        if col.dtype.kind == "f":
            out[col.name] = np.full(n, np.nan, dtype=col.dtype)
        elif col.name in ("flags", "date_source"):
            out[col.name] = np.zeros(n, dtype=col.dtype)
        else:
            out[col.name] = np.full(n, INT_NULL, dtype=col.dtype)
    return out


#: Columns of a sensor-reading batch (one row per device, time and metric); the batch
#: also carries ``device`` (int32), ``metric`` (int32 code into the process's metric
#: table) and ``msg`` (int32 message index).
SENSOR_COLUMNS: tuple[Column, ...] = (
    _c("time", "int64", "timestamptz", "us", "device time of the sample"),
    _c("received_at", "int64", "timestamptz", "us", "arrival time at the collector"),
    _c("value", "float64", "double precision", "", "the reading, in the unit its name ends in"),
)

#: Columns of an RFID-read batch (one row per tag read); plus ``device`` (the reader,
#: int32), ``msg`` (int32) and ``epc`` (object array of upper-case hex strings).
RFID_COLUMNS: tuple[Column, ...] = (
    _c("time", "int64", "timestamptz", "us", "read time"),
    _c("received_at", "int64", "timestamptz", "us", "arrival time at the collector"),
    _c("antenna", "int16", "smallint", "", "reader antenna port, -1 unknown"),
    _c("rssi_dbm", "float64", "real", "dBm", "received signal strength"),
    _c("phase_deg", "float64", "real", "deg", "backscatter phase, NaN unknown"),
    _c("read_count", "int32", "integer", "", "reads aggregated into this row, -1 unknown"),
)
