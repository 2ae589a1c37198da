"""`beiflow score`: labels against rows in the real test database, hand-worked cases."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from beiflow.devices.simulators.labels import Label, LabelWriter
from beiflow.ingest.cli import main
from beiflow.ingest.score import KindScore, ScoreReport, _match, format_report, score

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC).timestamp()


@dataclass
class Rows:
    """Inserts detections for this test's own devices and fences; removed at teardown."""

    conn: psycopg.Connection
    tag: str

    def dev(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def fence(self, gid: str, name: str | None) -> None:
        self.conn.execute("INSERT INTO geofences (geofence_id, name, kind, geometry)"
                          " VALUES (%s, %s, 'polygon', '{}')", (self.dev(gid), name))

    def event(self, t: float, dev: str, gid: str, event: str) -> None:
        self.conn.execute("INSERT INTO geofence_events (time, device_id, geofence_id, event)"
                          " VALUES (%s, %s, %s, %s)", (_dt(t), self.dev(dev), self.dev(gid),
                                                       event))

    def anomaly(self, t: float, dev: str, kind: str) -> None:
        self.conn.execute("INSERT INTO anomalies (time, device_id, stream, kind, score)"
                          " VALUES (%s, %s, 'nmea', %s, 1)", (_dt(t), self.dev(dev), kind))

    def dead(self, t: float, dev: str | None, error: str) -> None:
        payload = uuid.uuid4().bytes
        self.conn.execute(
            "INSERT INTO dead_letters (received_at, topic, payload, error, device_id,"
            " payload_sha256) VALUES (%s, %s, %s, %s, %s, %s)",
            (_dt(t), f"telemetry/s/{self.tag}/nmea", payload, error,
             dev and self.dev(dev), hashlib.sha256(payload).digest()))

    def label(self, t: float, dev: str, kind: str, **details: object) -> Label:
        return Label(T0 + t, self.dev(dev), kind, dict(details))

    def score(self, labels: list[Label], **kw: object) -> ScoreReport:
        return score(self.conn, labels, **kw)  # type: ignore[arg-type]


@pytest.fixture
def rows(db_dsn: str) -> Iterator[Rows]:
    tag = f"sc{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        yield Rows(conn, tag)
        for table in ("geofence_events", "anomalies", "dead_letters"):
            conn.execute(f"DELETE FROM {table} WHERE device_id LIKE %s", (f"{tag}-%",))
        conn.execute("DELETE FROM geofences WHERE geofence_id LIKE %s", (f"{tag}-%",))


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(T0 + t, UTC)


def _row(report: ScoreReport, kind: str) -> tuple[int, int, int]:
    (r,) = [r for r in report.rows if r.kind == kind]
    return r.labels, r.detections, r.matched


def test_exact_match_window_edge_and_miss(rows: Rows) -> None:
    rows.fence("g", "Gate N")
    rows.event(0, "a", "g", "enter")        # exactly at the label
    rows.event(130, "a", "g", "exit")       # 30 s after the label: inside (inclusive)
    rows.event(230.001, "a", "g", "dwell")  # 30.001 s after: outside
    labels = [rows.label(0, "a", "enter", fence="Gate N"),
              rows.label(100, "a", "exit", fence="Gate N"),
              rows.label(200, "a", "dwell", fence="Gate N"),
              rows.label(300, "a", "enter", fence="Gate N")]  # never detected
    report = rows.score(labels, window_s=30)
    assert [r.kind for r in report.rows] == ["dwell", "enter", "exit"]
    assert _row(report, "enter") == (2, 1, 1)
    assert _row(report, "exit") == (1, 1, 1)
    assert _row(report, "dwell") == (1, 1, 0)
    assert report.total == KindScore("total", "", 4, 3, 2)
    assert report.total.precision == pytest.approx(2 / 3)
    assert report.total.recall == 0.5
    assert report.rows[0].table == "geofence_events"
    assert rows.score(labels, window_s=31).total.matched == 3


def test_two_labels_one_detection_and_maximal_pairing(rows: Rows) -> None:
    rows.anomaly(8, "a", "jump")
    labels = [rows.label(0, "a", "jump"), rows.label(10, "a", "jump")]
    (r,) = rows.score(labels, window_s=30).rows
    assert (r.labels, r.detections, r.matched, r.precision, r.recall) == (2, 1, 1, 1.0, 0.5)
    # labels at 100 and 112, detections at 108 and 121, window 10: closest-first would pair
    # 112-108 and leave 100 without a partner; both labels have one within 10 s.
    rows.anomaly(108, "b", "jump")
    rows.anomaly(121, "b", "jump")
    (r,) = rows.score([rows.label(100, "b", "jump"), rows.label(112, "b", "jump")],
                      window_s=10).rows
    assert (r.labels, r.detections, r.matched) == (2, 2, 2)


def test_wrong_fence_does_not_match_and_fence_ids_are_understood(rows: Rows) -> None:
    rows.fence("b1", "Berth 1")
    rows.fence("b2", "Berth 2")
    rows.event(0, "a", "b2", "enter")
    rows.event(50, "a", "b1", "enter")
    report = rows.score([rows.label(0, "a", "enter", fence="Berth 1")], window_s=60)
    assert _row(report, "enter") == (1, 2, 1)      # the Berth 1 event, 50 s later
    report = rows.score([rows.label(0, "a", "enter", fence="Berth 1")], window_s=30)
    assert _row(report, "enter") == (1, 1, 0)      # Berth 2 at 0 s is not it
    by_id = rows.label(0, "a", "enter", fence=rows.dev("b2"))
    assert _row(rows.score([by_id], window_s=30), "enter") == (1, 1, 1)
    anywhere = rows.label(0, "a", "enter")         # no fence named: any fence will do
    assert _row(rows.score([anywhere], window_s=30), "enter") == (1, 1, 1)


def test_duplicates_lower_precision_and_unlabelled_kinds_are_apart(rows: Rows) -> None:
    rows.anomaly(0, "a", "jump")
    rows.anomaly(1, "a", "jump")
    for t in (5, 6, 7):
        rows.anomaly(t, "a", "stopped")
    rows.anomaly(2, "other", "jump")            # not a device of this run: out of scope
    labels = [rows.label(0, "a", "jump")]
    report = rows.score(labels)
    assert [(r.kind, r.labels, r.detections, r.matched) for r in report.rows] == [
        ("jump", 1, 2, 1)]
    assert report.rows[0].precision == 0.5
    assert report.unlabelled == {"stopped": 3}
    text = format_report(report)
    assert "detected, never labelled (not scored): stopped 3" in text
    everything = rows.score(labels, all_kinds=True)
    assert _row(everything, "stopped") == (0, 3, 0)
    stopped = everything.rows[1]
    assert (stopped.precision, stopped.recall, everything.unlabelled) == (0.0, None, {})


def test_dead_letters_match_by_reason_device_and_arrival(rows: Rows) -> None:
    rows.dead(2, "a", "bad_checksum")
    rows.dead(3, "a", "bad_json")      # another reason
    rows.dead(4, "b", "bad_checksum")  # another device, not in this run
    rows.dead(5, None, "bad_checksum")  # no device: cannot be attributed
    report = rows.score([rows.label(0, "a", "bad_checksum"), rows.label(60, "a", "bad_json")])
    assert _row(report, "bad_checksum") == (1, 1, 1)
    assert _row(report, "bad_json") == (1, 1, 0)   # 57 s before its label
    assert report.rows[0].table == "dead_letters"


def test_scenario_record_scopes_devices_and_time(rows: Rows) -> None:
    rows.anomaly(-31, "a", "jump")    # before the run started (minus the window): ignored
    rows.anomaly(10, "quiet", "jump")  # a simulated device without labels: a false alarm
    rows.anomaly(20, "a", "jump")
    start = rows.label(0, "*", "scenario", devices=[rows.dev("a"), rows.dev("quiet")])
    report = rows.score([start, rows.label(20, "a", "jump")])
    assert _row(report, "jump") == (1, 2, 1)
    assert report.devices == 2
    assert report.start == T0 - 30
    assert report.until == T0 + 50
    assert _row(rows.score([rows.label(20, "a", "jump")]), "jump") == (1, 1, 1)


def test_live_now_leaves_out_what_is_not_due(rows: Rows) -> None:
    rows.anomaly(-45, "a", "jump")     # no label near: a false alarm, settled (<= now - 60)
    rows.anomaly(1, "a", "jump")
    rows.anomaly(52, "a", "jump")      # its label (50) is due only at 80: pending till then
    rows.anomaly(3, "a", "spoofing")
    labels = [rows.label(0, "a", "jump"), rows.label(50, "a", "jump"),
              rows.label(2, "a", "spoofing"), rows.label(-60, "a", "spoofing")]
    live = rows.score(labels, window_s=30, now=T0 + 60)
    assert (live.pending_labels, live.pending_detections) == (1, 1)
    assert _row(live, "jump") == (1, 2, 1)
    assert _row(live, "spoofing") == (2, 1, 1)
    assert "not yet due: 1 labels, 1 detections" in format_report(live)
    assert live.summary() == "precision 0.667 recall 0.667 (2/3 labels, 3 detections)"
    done = rows.score(labels, window_s=30, now=T0 + 80)
    assert _row(done, "jump") == (2, 3, 2)
    assert (done.pending_labels, done.pending_detections) == (0, 0)


def _write(path: Path, labels: list[Label]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        LabelWriter(f).write(labels)
    return path


def test_cli_prints_the_table_and_gates(rows: Rows, db_dsn: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rows.anomaly(0, "a", "jump")
    labels = _write(tmp_path / "labels.jsonl", [rows.label(0, "a", "jump"),
                                                rows.label(100, "a", "jump"),
                                                rows.label(0, "a", "jamming")])
    base = ["score", "--labels", str(labels), "--db-dsn", db_dsn]
    assert main([*base, "--min-recall", "0.5"]) == 1           # jamming: recall 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["kind", "table", "labels", "detections", "matched",
                                "precision", "recall"]
    assert lines[1].split() == ["jamming", "anomalies", "1", "0", "0", "-", "0.000"]
    assert lines[2].split() == ["jump", "anomalies", "2", "1", "1", "1.000", "0.500"]
    assert lines[4].split() == ["total", "3", "1", "1", "1.000", "0.333"]
    assert "jamming: recall 0.000 < 0.5" in err and "jump" not in err
    assert main([*base, "--kinds", "jump", "--min-recall", "0.5", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["kind"], r["recall"], r["precision"]) for r in doc["rows"]] == [
        ("jump", 0.5, 1.0)]
    assert doc["ignored"] == {"jamming": 1}
    assert main([*base, "--kinds", "jump", "--min-precision", "1"]) == 0


def test_cli_bad_labels_file_exits_2(db_dsn: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"time": "2024-03-01T08:00:00Z", "device": "a", "kind": "jump"}\n\n'
                   '{"device": "a"}\n')
    assert main(["score", "--labels", str(bad), "--db-dsn", db_dsn]) == 2
    assert f"{bad}:3: not a label" in capsys.readouterr().err
    assert main(["score", "--labels", str(tmp_path / "missing"), "--db-dsn", db_dsn]) == 2
    assert "No such file" in capsys.readouterr().err


def _max_matching(labels: list[tuple[int, int]], dets: list[tuple[int, int]],
                  w: int) -> int:
    """Size of a maximum matching by augmenting paths (Kuhn): the oracle for the sweep."""
    owner: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for j, (g, t) in enumerate(dets):
            if g == labels[i][0] and abs(t - labels[i][1]) <= w and j not in seen:
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, set()) for i in range(len(labels)))


events = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 60)), max_size=12)


@given(labels=events, dets=events, w=st.integers(0, 15))
def test_sweep_finds_a_maximum_matching(labels: list[tuple[int, int]],
                                        dets: list[tuple[int, int]], w: int) -> None:
    def keys(ev: list[tuple[int, int]]) -> list[tuple[str, str, str | None]]:
        return [("dev", "kind", str(g)) for g, _ in ev]

    l_hit, d_hit = _match(keys(labels), np.array([t for _, t in labels], dtype=np.int64),
                          keys(dets), np.array([t for _, t in dets], dtype=np.int64), w)
    assert l_hit.sum() == d_hit.sum() == _max_matching(labels, dets, w)
    # every matched label has a matched detection of its group within the window
    for i in np.flatnonzero(l_hit):
        g, t = labels[i]
        assert any(d_hit[j] and dg == g and abs(dt - t) <= w
                   for j, (dg, dt) in enumerate(dets))
