"""Precision and recall of what the pipeline stored, against the labels a simulator wrote.

Labels (``devices/simulators/labels.py``) name events as the pipeline stores them. Each
kind is looked up where it lands (``Label.table``): ``geofence_events`` (``event``; a
label's ``details.fence`` names the fence, by ``geofences.name`` or ``geofence_id``),
``anomalies`` (``kind``) or ``dead_letters`` (``error``, at ``received_at``, device
``device_id``; dead letters without a device cannot be matched).

A record of kind ``scenario`` (device ``*``, ``details.devices``) marks the start of a run
and names the devices it simulated; it is not an event. The *scope* is the devices of the
scenario records and of the labels, from the first record minus the window up to
``until``: the last label plus the window, or ``now`` in live use. Detections outside the
scope are not looked at, so other runs in the same database do not count.

Matching: a detection matches a label of the same device and kind (and fence, when the
label names one) when ``|t_detection - t_label| <= window_s``; each label and each
detection is used at most once. The number of pairs is maximised, not greedily chosen by
closeness: all label windows have the same width, so taking labels in time order and
giving each the earliest free detection inside its window is optimal (a sweep over
``searchsorted`` ranges). Labels with a fence are matched first; labels without one then
take the remaining detections of any fence. Recall = matched labels / labels, precision =
matched detections / detections; either is ``None`` where its denominator is 0 (gates
treat ``None`` as met). Kinds that were detected but never labelled (state reports such
as ``stopped``/``moving``) are listed apart and not scored, unless asked for.

Live use (``now`` given, e.g. by ``beiflow demo`` every few seconds): a label is due once
``time + window_s <= now``; later ones are pending and left out. A detection is settled
once ``time <= now - 2 * window_s`` (no pending label can reach it) or when it matched;
unsettled ones are pending and left out. ``now`` should trail the wall clock by the
ingest lag, or detections still in flight count as misses.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from beiflow.devices.simulators.labels import Label

#: Kind of the record that starts a scenario (not an event).
SCENARIO_KIND = "scenario"
US = 1_000_000

_DETECTIONS_SQL = """
SELECT (extract(epoch FROM e.time) * 1000000)::int8, e.device_id, e.event,
       coalesce(g.name, e.geofence_id)
FROM geofence_events e LEFT JOIN geofences g USING (geofence_id)
WHERE e.device_id = ANY(%(devices)s) AND e.time BETWEEN %(lo)s AND %(hi)s
UNION ALL
SELECT (extract(epoch FROM time) * 1000000)::int8, device_id, kind, NULL
FROM anomalies
WHERE device_id = ANY(%(devices)s) AND time BETWEEN %(lo)s AND %(hi)s
UNION ALL
SELECT (extract(epoch FROM received_at) * 1000000)::int8, device_id, error, NULL
FROM dead_letters
WHERE device_id = ANY(%(devices)s) AND received_at BETWEEN %(lo)s AND %(hi)s
"""


class LabelFileError(ValueError):
    """A labels file that cannot be read or parsed."""


@dataclass(frozen=True, slots=True)
class KindScore:
    """Counts for one kind (or the total over the scored kinds)."""

    kind: str
    table: str
    labels: int
    detections: int
    matched: int

    @property
    def precision(self) -> float | None:
        """Matched detections / detections (None without detections)."""
        return self.matched / self.detections if self.detections else None

    @property
    def recall(self) -> float | None:
        """Matched labels / labels (None without labels)."""
        return self.matched / self.labels if self.labels else None


@dataclass(frozen=True, slots=True)
class ScoreReport:
    """What :func:`score` found: per-kind rows, their total and what was left out."""

    rows: tuple[KindScore, ...]
    total: KindScore
    unlabelled: dict[str, int]  # kind -> detections, for detected kinds not scored
    window_s: float
    devices: int
    start: float | None  # scope, Unix seconds (None: nothing to score)
    until: float | None
    now: float | None
    pending_labels: int = 0
    pending_detections: int = 0
    ignored: dict[str, int] = field(default_factory=dict)  # labelled kinds not scored

    def misses(self, *, min_precision: float | None = None,
               min_recall: float | None = None) -> list[str]:
        """One message per scored kind under a stated minimum (undefined values pass)."""
        out = []
        for row in self.rows:
            for name, value, floor in (("precision", row.precision, min_precision),
                                       ("recall", row.recall, min_recall)):
                if floor is not None and value is not None and value < floor:
                    out.append(f"{row.kind}: {name} {value:.3f} < {floor:g}")
        return out

    def summary(self) -> str:
        """A few words for a status line: total precision and recall."""
        t = self.total
        return (f"precision {_fmt(t.precision)} recall {_fmt(t.recall)} "
                f"({t.matched}/{t.labels} labels, {t.detections} detections)")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (precision and recall included, null where undefined)."""
        def row(r: KindScore) -> dict[str, Any]:
            return {**asdict(r), "precision": r.precision, "recall": r.recall}

        return {"window_s": self.window_s, "devices": self.devices,
                "start": _iso(self.start), "until": _iso(self.until), "now": _iso(self.now),
                "rows": [row(r) for r in self.rows], "total": row(self.total),
                "unlabelled": self.unlabelled, "ignored": self.ignored,
                "pending_labels": self.pending_labels,
                "pending_detections": self.pending_detections}


def load_labels(path: Path) -> list[Label]:
    """The labels of a JSON-lines file; :class:`LabelFileError` names the bad line."""
    labels = []
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    labels.append(Label.from_json(line))
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    raise LabelFileError(f"{path}:{n}: not a label ({exc!r})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelFileError(f"{path}: {exc}") from exc
    return labels


def score(conn: psycopg.Connection[Any], labels: Sequence[Label], *, window_s: float = 30.0,
          now: float | None = None, kinds: Collection[str] | None = None,
          all_kinds: bool = False) -> ScoreReport:
    """Match ``labels`` with the stored detections and count per kind.

    Scored kinds: ``kinds`` when given, else the labelled kinds (plus the detected-only
    ones with ``all_kinds``). Reads in its own transaction (a savepoint inside one).
    """
    if window_s < 0:
        raise ValueError("window_s must be >= 0")
    w = round(window_s * US)
    scen = [lb for lb in labels if lb.kind == SCENARIO_KIND]
    events = [lb for lb in labels if lb.kind != SCENARIO_KIND]
    devices = sorted({str(d) for lb in scen for d in lb.details.get("devices", ())}
                     | {lb.device for lb in events})
    times = [lb.time for lb in labels]
    if not devices or not times:
        return _report(Counter(), Counter(), Counter(), window_s, devices, None, None, now,
                       kinds, all_kinds)
    start = min(times) - window_s
    until = now if now is not None else max(lb.time for lb in events or scen) + window_s
    if now is not None:
        due = [lb for lb in events if lb.time + window_s <= now]
        pending_labels = len(events) - len(due)
        events = due
    else:
        pending_labels = 0

    with conn.transaction():
        fences = dict(conn.execute(
            "SELECT geofence_id, coalesce(name, geofence_id) FROM geofences").fetchall())
        rows = conn.execute(_DETECTIONS_SQL, {
            "devices": devices, "lo": _dt(start), "hi": _dt(until)}).fetchall()
    d_t = np.array([r[0] for r in rows], dtype=np.int64)
    d_dev = [r[1] for r in rows]
    d_kind = [r[2] for r in rows]
    d_fence = [r[3] for r in rows]

    l_t = np.rint(np.array([lb.time for lb in events], dtype=np.float64) * US).astype(np.int64)
    l_fence = [_label_fence(lb, fences) for lb in events]
    # fence-specific labels first (device, kind, fence), then the rest (device, kind)
    l_hit = np.zeros(len(events), dtype=bool)
    d_hit = np.zeros(len(rows), dtype=bool)
    has_fence = np.array([f is not None for f in l_fence], dtype=bool)
    for phase_labels, with_fence in ((np.flatnonzero(has_fence), True),
                                     (np.flatnonzero(~has_fence), False)):
        free = np.flatnonzero(~d_hit)
        l_keys = [(events[i].device, events[i].kind, l_fence[i] if with_fence else None)
                  for i in phase_labels]
        d_keys = [(d_dev[j], d_kind[j], d_fence[j] if with_fence else None) for j in free]
        lm, dm = _match(l_keys, l_t[phase_labels], d_keys, d_t[free], w)
        l_hit[phase_labels[lm]] = True
        d_hit[free[dm]] = True

    settled = (d_hit | (d_t <= round(now * US) - 2 * w) if now is not None
               else np.ones_like(d_hit))
    label_n = Counter(lb.kind for lb in events)
    matched_n = Counter(lb.kind for lb, hit in zip(events, l_hit, strict=True) if hit)
    det_n = Counter(k for k, ok in zip(d_kind, settled, strict=True) if ok)
    return _report(label_n, det_n, matched_n, window_s, devices, start, until, now, kinds,
                   all_kinds, pending=(pending_labels, len(rows) - int(settled.sum())))


def _label_fence(label: Label, fences: dict[str, str]) -> str | None:
    """The fence a label names, as its name (a ``geofence_id`` is translated)."""
    fence = label.details.get("fence")
    if fence is None or label.table != "geofence_events":
        return None
    return fences.get(str(fence), str(fence))


def _match(l_keys: list[tuple[str, str, str | None]], l_t: np.ndarray,
           d_keys: list[tuple[str, str, str | None]], d_t: np.ndarray,
           w: int) -> tuple[np.ndarray, np.ndarray]:
    """Maximum one-to-one matching within ``w`` µs per key: (label hit, detection hit)."""
    l_hit = np.zeros(len(l_keys), dtype=bool)
    d_hit = np.zeros(len(d_keys), dtype=bool)
    if not l_keys or not d_keys:
        return l_hit, d_hit
    # dense key codes shared by labels and detections; sort key = code * span + time
    codes: dict[tuple[str, str, str | None], int] = {}
    l_code = np.array([codes.setdefault(k, len(codes)) for k in l_keys], dtype=np.int64)
    d_code = np.array([codes.setdefault(k, len(codes)) for k in d_keys], dtype=np.int64)
    t0 = min(int(l_t.min()), int(d_t.min()))
    span = max(int(l_t.max()), int(d_t.max())) - t0 + w + 1
    if len(codes) * span >= 2**62:
        raise ValueError("scope too long to score at once; split the labels")
    l_key = l_code * span + (l_t - t0)
    d_key = d_code * span + (d_t - t0)
    l_order = np.argsort(l_key, kind="stable")
    d_order = np.argsort(d_key, kind="stable")
    d_sorted = d_key[d_order]
    lo = np.searchsorted(d_sorted, l_key[l_order] - w, side="left")
    hi = np.searchsorted(d_sorted, l_key[l_order] + w, side="right")
    # Windows are equally wide, so lo and hi never decrease: one pointer sweeps them all.
    # Labels whose range no neighbour shares are decided without the sweep.
    shared = np.zeros(len(lo), dtype=bool)
    shared[1:] = lo[1:] < hi[:-1]
    shared[:-1] |= shared[1:]
    alone = ~shared & (hi > lo)
    l_hit[l_order[alone]] = True
    d_hit[d_order[lo[alone]]] = True
    j = 0
    for i, a, b in zip(np.flatnonzero(shared).tolist(), lo[shared].tolist(),
                       hi[shared].tolist(), strict=True):
        j = max(j, a)
        if j < b:
            l_hit[l_order[i]] = True
            d_hit[d_order[j]] = True
            j += 1
    return l_hit, d_hit


def _report(label_n: Counter[str], det_n: Counter[str], matched_n: Counter[str],
            window_s: float, devices: list[str], start: float | None, until: float | None,
            now: float | None, kinds: Collection[str] | None, all_kinds: bool,
            pending: tuple[int, int] = (0, 0)) -> ScoreReport:
    if kinds is not None:
        scored = list(dict.fromkeys(kinds))
    else:
        scored = sorted(set(label_n) | (set(det_n) if all_kinds else set()))
    rows = tuple(KindScore(k, Label(0.0, "", k).table, label_n[k], det_n[k], matched_n[k])
                 for k in scored)
    total = KindScore("total", "", sum(r.labels for r in rows),
                      sum(r.detections for r in rows), sum(r.matched for r in rows))
    return ScoreReport(
        rows=rows, total=total,
        unlabelled={k: n for k, n in sorted(det_n.items())
                    if k not in scored and not label_n[k]},
        ignored={k: n for k, n in sorted(label_n.items()) if k not in scored},
        window_s=window_s, devices=len(devices), start=start, until=until, now=now,
        pending_labels=pending[0], pending_detections=pending[1])


def format_report(report: ScoreReport) -> str:
    """An aligned text table, then what was left out and the scope."""
    head = ("kind", "table", "labels", "detections", "matched", "precision", "recall")
    body = [(r.kind, r.table, str(r.labels), str(r.detections), str(r.matched),
             _fmt(r.precision), _fmt(r.recall)) for r in (*report.rows, report.total)]
    widths = [max(len(row[c]) for row in (head, *body)) for c in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(n) if i < 2 else c.rjust(n)
                         for i, (c, n) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(head), *(line(b) for b in body[:-1]), "-" * len(line(head)), line(body[-1])]
    if report.unlabelled:
        out.append("detected, never labelled (not scored): "
                   + ", ".join(f"{k} {n}" for k, n in report.unlabelled.items()))
    if report.ignored:
        out.append("labelled, not scored: "
                   + ", ".join(f"{k} {n}" for k, n in report.ignored.items()))
    scope = (f"{_iso(report.start)} .. {_iso(report.until)}" if report.start is not None
             else "nothing to score")
    out.append(f"window {report.window_s:g} s, {report.devices} devices, {scope}")
    if report.now is not None:
        out.append(f"not yet due: {report.pending_labels} labels, "
                   f"{report.pending_detections} detections")
    return "\n".join(out)


def format_json(report: ScoreReport) -> str:
    """The report as one JSON object."""
    return json.dumps(report.to_dict(), indent=2)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _iso(t: float | None) -> str | None:
    return None if t is None else _dt(t).isoformat().replace("+00:00", "Z")
