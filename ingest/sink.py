"""TimescaleDB sink: one transaction per micro-batch, binary COPY into a stage, idempotent upsert.

Rows are built as a NumPy structured array in PostgreSQL's binary COPY format (no
per-row Python), copied into a temporary stage table and moved into the hypertable
with ``INSERT ... ON CONFLICT``. A replay of the same data therefore adds nothing, and
an epoch split over two batches is merged into one row.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
from psycopg import sql

from beiflow.processing.events import AnomalyBatch, GeofenceEventBatch
from beiflow.schemas.columns import MERGE_AND_FLAGS, POSITION_COLUMNS, Column

log = logging.getLogger(__name__)

_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 minus 1970-01-01, microseconds
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"

#: Binary wire type and stage SQL type for each column dtype.
_WIRE: dict[str, tuple[str, str]] = {
    "int16": (">i2", "smallint"),
    "int32": (">i4", "integer"),
    "int64": (">i8", "bigint"),
    "float64": (">f8", "double precision"),
}


@dataclass(slots=True)
class DeadLetter:
    """Rejected input: the exact bytes, where they came from and why."""

    received_at_us: int
    topic: str
    payload: bytes
    error: str
    stream: str | None = None
    device_id: str | None = None
    detail: str | None = None


@dataclass(slots=True)
class WriteBatch:
    """Everything one micro-batch commits, in one transaction."""

    #: Dense device index -> (device_id, site).
    devices: list[tuple[str, str]]
    #: Per message: device index (-1 when the topic named no valid device), stream name,
    #: arrival time; feeds the devices registry.
    msg_device: np.ndarray
    msg_stream: list[str]
    msg_received_at: np.ndarray
    positions: dict[str, np.ndarray] | None = None
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: (device index, "online" | "offline", arrival time) from status topics.
    statuses: list[tuple[int, str, int]] = field(default_factory=list)
    #: Sensor readings (SENSOR_COLUMNS + device, metric) and the batch's metric names.
    readings: dict[str, np.ndarray] | None = None
    metric_names: list[str] = field(default_factory=list)
    #: RFID reads (RFID_COLUMNS + device, epc, sgtin_* and gtin).
    reads: dict[str, np.ndarray] | None = None
    anomalies: AnomalyBatch | None = None
    geofence_events: GeofenceEventBatch | None = None
    #: Fence index -> geofence_id for ``geofence_events``.
    fence_ids: list[str] = field(default_factory=list)
    #: Dense device index -> kind (road, vessel, rail, crane) where configured.
    kinds: list[str | None] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a committed write did."""

    rows: dict[str, int]
    commit_time_us: int
    db_seconds: float


def binary_copy(columns: list[tuple[np.ndarray, str, bool]]) -> bytes:
    """Encode equal-length arrays as a PostgreSQL binary COPY stream.

    Each entry is (values, dtype name, is_timestamp); timestamps are int64 microseconds
    since the Unix epoch. All fields are fixed width and non-NULL: the stage keeps
    NaN / -1 and the upsert turns them into NULL.
    """
    n = columns[0][0].size
    spec: list[tuple[str, str]] = [("nfields", ">i2")]
    for i, (_, dtype, _) in enumerate(columns):
        spec += [(f"l{i}", ">i4"), (f"v{i}", _WIRE[dtype][0])]
    rows = np.empty(n, dtype=np.dtype(spec))
    rows["nfields"] = len(columns)
    for i, (values, dtype, is_ts) in enumerate(columns):
        rows[f"l{i}"] = np.dtype(_WIRE[dtype][0]).itemsize
        rows[f"v{i}"] = values - _PG_EPOCH_US if is_ts else values
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


_TS_COLUMNS = frozenset({"time", "received_at"})
#: Columns merged by the upsert: everything nullable.
_NULLABLE = tuple(c for c in POSITION_COLUMNS if c.name not in ("time", "received_at",
                                                                 "date_source", "flags"))


def _null_if_missing(col: Column) -> sql.Composable:
    missing = sql.SQL("'NaN'::float8") if col.dtype.kind == "f" else sql.SQL("-1")
    expr = sql.SQL("NULLIF(s.{}, {})").format(sql.Identifier(col.name), missing)
    return expr


def _positions_upsert() -> sql.Composed:
    and_flags = MERGE_AND_FLAGS
    names = [c.name for c in POSITION_COLUMNS]
    select = [
        sql.SQL("s.{}").format(sql.Identifier(c.name)) if c.name in _TS_COLUMNS
        or c.name in ("date_source", "flags") else _null_if_missing(c)
        for c in POSITION_COLUMNS
    ]
    merge: list[sql.Composable] = [
        sql.SQL("{0} = COALESCE(p.{0}, EXCLUDED.{0})").format(sql.Identifier(c.name))
        for c in _NULLABLE
    ]
    merge.append(sql.SQL(
        "date_source = COALESCE(LEAST(NULLIF(p.date_source, 0), NULLIF(EXCLUDED.date_source, 0)),"
        " 0)"))
    merge.append(sql.SQL(
        "flags = ((p.flags | EXCLUDED.flags) & ~{0}) | (p.flags & EXCLUDED.flags & {0})"
    ).format(sql.Literal(and_flags)))
    changed: list[sql.Composable] = [
        sql.SQL("(p.{0} IS NULL AND EXCLUDED.{0} IS NOT NULL)").format(sql.Identifier(c.name))
        for c in _NULLABLE
    ]
    changed.append(sql.SQL("p.date_source IS DISTINCT FROM COALESCE(LEAST(NULLIF(p.date_source,"
                           " 0), NULLIF(EXCLUDED.date_source, 0)), 0)"))
    changed.append(sql.SQL(
        "p.flags <> (((p.flags | EXCLUDED.flags) & ~{0}) | (p.flags & EXCLUDED.flags & {0}))"
    ).format(sql.Literal(and_flags)))
    return sql.SQL(
        "INSERT INTO positions AS p (device_id, {cols})"
        " SELECT d.device_id, {select} FROM beiflow_stage_positions s"
        " JOIN unnest(%s::text[]) WITH ORDINALITY AS d(device_id, idx) ON d.idx = s.dev + 1"
        " ON CONFLICT (device_id, time) DO UPDATE SET {merge} WHERE {changed}"
    ).format(
        cols=sql.SQL(", ").join(map(sql.Identifier, names)),
        select=sql.SQL(", ").join(select),
        merge=sql.SQL(", ").join(merge),
        changed=sql.SQL(" OR ").join(changed),
    )


def _stage_ddl() -> sql.Composed:
    cols: list[sql.Composable] = [sql.SQL("dev integer")]
    for c in POSITION_COLUMNS:
        typ = "timestamptz" if c.name in _TS_COLUMNS else _WIRE[c.dtype.name][1]
        cols.append(sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(typ)))
    return sql.SQL(
        "CREATE TEMP TABLE IF NOT EXISTS beiflow_stage_positions ({}) ON COMMIT DELETE ROWS"
    ).format(sql.SQL(", ").join(cols))


_SENSOR_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS beiflow_stage_sensor (dev integer, metric integer,"
    " time timestamptz, received_at timestamptz, value double precision)"
    " ON COMMIT DELETE ROWS"
)
_SENSOR_INSERT = (
    "INSERT INTO sensor_readings (time, device_id, metric, value, received_at)"
    " SELECT s.time, d.device_id, m.metric, s.value, s.received_at FROM beiflow_stage_sensor s"
    " JOIN unnest(%s::text[]) WITH ORDINALITY AS d(device_id, idx) ON d.idx = s.dev + 1"
    " JOIN unnest(%s::text[]) WITH ORDINALITY AS m(metric, idx) ON m.idx = s.metric + 1"
    " ON CONFLICT DO NOTHING"
)
_RFID_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS beiflow_stage_rfid (dev integer, tag integer,"
    " time timestamptz, received_at timestamptz, antenna smallint, rssi_dbm double precision,"
    " phase_deg double precision, read_count integer) ON COMMIT DELETE ROWS"
)
_RFID_INSERT = (
    "INSERT INTO rfid_reads (time, device_id, epc, antenna, rssi_dbm, phase_deg, read_count,"
    " received_at)"
    " SELECT s.time, d.device_id, t.epc, s.antenna, s.rssi_dbm, NULLIF(s.phase_deg, 'NaN'),"
    " NULLIF(s.read_count, -1), s.received_at FROM beiflow_stage_rfid s"
    " JOIN unnest(%s::text[]) WITH ORDINALITY AS d(device_id, idx) ON d.idx = s.dev + 1"
    " JOIN unnest(%s::text[]) WITH ORDINALITY AS t(epc, idx) ON t.idx = s.tag + 1"
    " ON CONFLICT DO NOTHING"
)
_TAGS_UPSERT = (
    "INSERT INTO rfid_tags AS g (epc, sgtin_filter, company_prefix, item_ref, serial, gtin,"
    " first_seen, last_seen)"
    " SELECT u.epc, NULLIF(u.filter, -1), u.prefix, u.item_ref, NULLIF(u.serial, -1), u.gtin,"
    " u.first_seen, u.last_seen"
    " FROM unnest(%s::text[], %s::smallint[], %s::text[], %s::text[], %s::bigint[], %s::text[],"
    " %s::timestamptz[], %s::timestamptz[])"
    " AS u(epc, filter, prefix, item_ref, serial, gtin, first_seen, last_seen)"
    " ON CONFLICT (epc) DO UPDATE SET last_seen = EXCLUDED.last_seen,"
    " first_seen = LEAST(g.first_seen, EXCLUDED.first_seen)"
    " WHERE g.last_seen < EXCLUDED.last_seen OR g.first_seen > EXCLUDED.first_seen"
)
_ANOMALY_INSERT = (
    "INSERT INTO anomalies (time, device_id, stream, kind, score, detail)"
    " SELECT u.time, d.device_id, u.stream, u.kind, u.score, u.detail::jsonb"
    " FROM unnest(%s::timestamptz[], %s::int[], %s::text[], %s::text[], %s::float8[],"
    " %s::text[]) AS u(time, dev, stream, kind, score, detail)"
    " JOIN unnest(%s::text[]) WITH ORDINALITY AS d(device_id, idx) ON d.idx = u.dev + 1"
    " ON CONFLICT DO NOTHING"
)
_EVENT_INSERT = (
    "INSERT INTO geofence_events (time, device_id, geofence_id, event, detail)"
    " SELECT u.time, d.device_id, f.geofence_id, u.event, u.detail::jsonb"
    " FROM unnest(%s::timestamptz[], %s::int[], %s::int[], %s::text[], %s::text[])"
    " AS u(time, dev, fence, event, detail)"
    " JOIN unnest(%s::text[]) WITH ORDINALITY AS d(device_id, idx) ON d.idx = u.dev + 1"
    " JOIN unnest(%s::text[]) WITH ORDINALITY AS f(geofence_id, idx) ON f.idx = u.fence + 1"
    " ON CONFLICT DO NOTHING"
)

_DEAD_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS beiflow_stage_dead (received_at timestamptz, topic text,"
    " payload bytea, error text, stream text, device_id text, detail text,"
    " payload_sha256 bytea) ON COMMIT DELETE ROWS"
)
_DEAD_INSERT = (
    "INSERT INTO dead_letters (received_at, topic, payload, error, stream, device_id, detail,"
    " payload_sha256) SELECT * FROM beiflow_stage_dead ON CONFLICT DO NOTHING"
)
_DEVICES_UPSERT = (
    "INSERT INTO devices AS d (device_id, site, kind, first_seen, last_seen, streams)"
    " SELECT u.device_id, u.site, u.kind, u.first_seen, u.last_seen,"
    " string_to_array(u.streams, ',')"
    " FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[],"
    " %s::text[]) AS u(device_id, site, kind, first_seen, last_seen, streams)"
    " ON CONFLICT (device_id) DO UPDATE SET site = EXCLUDED.site,"
    " kind = COALESCE(EXCLUDED.kind, d.kind),"
    " last_seen = GREATEST(d.last_seen, EXCLUDED.last_seen),"
    " first_seen = LEAST(d.first_seen, EXCLUDED.first_seen),"
    " streams = ARRAY(SELECT DISTINCT unnest(d.streams || EXCLUDED.streams) ORDER BY 1)"
)


_STATUS_UPDATE = (
    "UPDATE devices d SET status = u.status, status_at = u.at"
    " FROM (SELECT DISTINCT ON (device_id) * FROM unnest(%s::text[], %s::text[],"
    " %s::timestamptz[]) AS x(device_id, status, at) ORDER BY device_id, at DESC) u"
    " WHERE d.device_id = u.device_id AND (d.status_at IS NULL OR d.status_at <= u.at)"
)

_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us_to_datetime(us: int) -> datetime:
    """Microseconds since the Unix epoch as an aware UTC datetime."""
    return _UNIX_EPOCH + timedelta(microseconds=int(us))


class TimescaleSink:
    """Writes micro-batches to TimescaleDB; raises ``psycopg.Error`` when it cannot."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection | None = None
        self._upsert = _positions_upsert()
        self._stage_cols = sql.SQL(", ").join(
            [sql.Identifier("dev"), *(sql.Identifier(c.name) for c in POSITION_COLUMNS)])

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, autocommit=False, connect_timeout=5)
            with self._conn.transaction():
                for ddl in (_stage_ddl(), _DEAD_STAGE, _SENSOR_STAGE, _RFID_STAGE):
                    self._conn.execute(ddl)
        return self._conn

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def ping(self) -> bool:
        """True when the database answers."""
        try:
            self._connection().execute("SELECT 1")
            self._connection().rollback()
            return True
        except psycopg.Error:
            self.close()
            return False

    def write(self, batch: WriteBatch) -> WriteResult:
        """Commit the batch in one transaction; on any error roll back, drop the connection
        and re-raise so the caller retries and acknowledges nothing."""
        t0 = time.perf_counter()
        try:
            conn = self._connection()
            with conn.transaction():
                rows = self._write(conn, batch)
            commit_us = time.time_ns() // 1000
        except psycopg.Error:
            self.close()
            raise
        return WriteResult(rows, commit_us, time.perf_counter() - t0)

    def _write(self, conn: psycopg.Connection, batch: WriteBatch) -> dict[str, int]:
        rows: dict[str, int] = {}
        ids = [d[0] for d in batch.devices]
        with conn.cursor() as cur:
            self._write_devices(cur, batch)
            if batch.statuses:
                cur.execute(_STATUS_UPDATE, (
                    [batch.devices[d][0] for d, _, _ in batch.statuses],
                    [s for _, s, _ in batch.statuses],
                    [us_to_datetime(t) for _, _, t in batch.statuses],
                ))
            pos = batch.positions
            if pos is not None and pos["time"].size:
                cols = [(pos["device"], "int32", False)] + [
                    (pos[c.name], c.dtype.name, c.name in _TS_COLUMNS) for c in POSITION_COLUMNS
                ]
                with cur.copy(sql.SQL("COPY beiflow_stage_positions ({}) FROM STDIN"
                                      " (FORMAT BINARY)").format(self._stage_cols)) as copy:
                    copy.write(binary_copy(cols))
                cur.execute(self._upsert, (ids,))
                rows["positions"] = cur.rowcount
            if batch.readings is not None and batch.readings["time"].size:
                rows["sensor_readings"] = self._write_sensor(cur, batch.readings,
                                                             batch.metric_names, ids)
            if batch.reads is not None and batch.reads["time"].size:
                rows["rfid_reads"] = self._write_rfid(cur, batch.reads, ids)
            if batch.anomalies is not None and len(batch.anomalies):
                a = batch.anomalies
                cur.execute(_ANOMALY_INSERT, (
                    [us_to_datetime(t) for t in a.time.tolist()], a.device.tolist(),
                    a.stream.tolist(), a.kind.tolist(), a.score.tolist(), a.detail.tolist(),
                    ids))
                rows["anomalies"] = cur.rowcount
            if batch.geofence_events is not None and len(batch.geofence_events):
                e = batch.geofence_events
                cur.execute(_EVENT_INSERT, (
                    [us_to_datetime(t) for t in e.time.tolist()], e.device.tolist(),
                    e.fence.tolist(), e.event.tolist(), e.detail.tolist(), ids,
                    batch.fence_ids))
                rows["geofence_events"] = cur.rowcount
            if batch.dead_letters:
                with cur.copy("COPY beiflow_stage_dead FROM STDIN") as copy:
                    for dl in batch.dead_letters:
                        copy.write_row((
                            us_to_datetime(dl.received_at_us),
                            dl.topic, dl.payload, dl.error, dl.stream, dl.device_id, dl.detail,
                            hashlib.sha256(dl.payload).digest(),
                        ))
                cur.execute(_DEAD_INSERT)
                rows["dead_letters"] = cur.rowcount
        return rows

    @staticmethod
    def _write_sensor(cur: psycopg.Cursor, r: dict[str, np.ndarray], metric_names: list[str],
                      ids: list[str]) -> int:
        with cur.copy("COPY beiflow_stage_sensor (dev, metric, time, received_at, value)"
                      " FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(binary_copy([
                (r["device"], "int32", False), (r["metric"], "int32", False),
                (r["time"], "int64", True), (r["received_at"], "int64", True),
                (r["value"], "float64", False)]))
        cur.execute(_SENSOR_INSERT, (ids, metric_names))
        return cur.rowcount

    @staticmethod
    def _write_rfid(cur: psycopg.Cursor, r: dict[str, np.ndarray], ids: list[str]) -> int:
        epcs, first, tag = np.unique(r["epc"].astype(str), return_index=True,
                                     return_inverse=True)
        with cur.copy("COPY beiflow_stage_rfid (dev, tag, time, received_at, antenna,"
                      " rssi_dbm, phase_deg, read_count) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(binary_copy([
                (r["device"], "int32", False), (tag.astype(np.int32), "int32", False),
                (r["time"], "int64", True), (r["received_at"], "int64", True),
                (r["antenna"], "int16", False), (r["rssi_dbm"], "float64", False),
                (r["phase_deg"], "float64", False), (r["read_count"], "int32", False)]))
        cur.execute(_RFID_INSERT, (ids, epcs.tolist()))
        inserted = cur.rowcount
        t_first = np.full(epcs.size, np.iinfo(np.int64).max)
        t_last = np.full(epcs.size, np.iinfo(np.int64).min)
        np.minimum.at(t_first, tag, r["time"])
        np.maximum.at(t_last, tag, r["time"])
        cur.execute(_TAGS_UPSERT, (
            epcs.tolist(), r["sgtin_filter"][first].tolist(),
            r["sgtin_company_prefix"][first].tolist(), r["sgtin_item_ref"][first].tolist(),
            r["sgtin_serial"][first].tolist(), r["gtin"][first].tolist(),
            [us_to_datetime(t) for t in t_first.tolist()],
            [us_to_datetime(t) for t in t_last.tolist()]))
        return inserted

    @staticmethod
    def _write_devices(cur: psycopg.Cursor, batch: WriteBatch) -> None:
        dev = batch.msg_device
        known = dev >= 0
        if not known.any():
            return
        d, t = dev[known], batch.msg_received_at[known]
        uniq, inv = np.unique(d, return_inverse=True)
        first = np.full(uniq.size, np.iinfo(np.int64).max)
        last = np.full(uniq.size, np.iinfo(np.int64).min)
        np.minimum.at(first, inv, t)
        np.maximum.at(last, inv, t)
        streams_of: dict[int, set[str]] = {}
        stream_arr = np.asarray(batch.msg_stream, dtype=object)[known]
        for s in set(batch.msg_stream):
            for i in np.unique(inv[stream_arr == s]):
                streams_of.setdefault(int(i), set()).add(s)
        cur.execute(_DEVICES_UPSERT, (
            [batch.devices[i][0] for i in uniq],
            [batch.devices[i][1] for i in uniq],
            [batch.kinds[i] if i < len(batch.kinds) else None for i in uniq],
            [us_to_datetime(x) for x in first],
            [us_to_datetime(x) for x in last],
            [",".join(sorted(streams_of[i])) for i in range(uniq.size)],
        ))
