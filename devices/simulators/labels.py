"""Ground truth the simulators write: one JSON line per event they know to happen.

A label names the event as the pipeline stores it, so ``beiflow score`` can match it
directly: ``kind`` is a ``geofence_events.event`` (enter, exit, dwell, overspeed), an
``anomalies.kind`` (jump, jamming, spoofing, statistical, ...) or a ``dead_letters``
reason (bad_checksum, bad_json, ...). ``details`` says what was done (``injected``: the
injection's name, e.g. ``teleport``) and, for geofence events, which ``fence`` (its name).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

#: Label kinds that are geofence events; dead-letter reasons are listed in DEAD_LETTER_KINDS.
GEOFENCE_KINDS: frozenset[str] = frozenset({"enter", "exit", "dwell", "overspeed"})
#: Label kinds matched against ``dead_letters.error``.
DEAD_LETTER_KINDS: frozenset[str] = frozenset({
    "bad_checksum", "missing_checksum", "truncated", "not_nmea", "bad_field", "bad_json",
    "non_finite", "schema", "bad_time", "future_time", "bad_epc", "bad_metric_name",
    "oversize", "empty_payload"})


@dataclass(frozen=True, slots=True)
class Label:
    """One event the simulator caused or knows to happen, at device time ``time``."""

    time: float  # Unix seconds, UTC
    device: str
    kind: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> str:
        """Where the pipeline records this kind of event."""
        if self.kind in GEOFENCE_KINDS:
            return "geofence_events"
        if self.kind in DEAD_LETTER_KINDS:
            return "dead_letters"
        return "anomalies"

    def to_json(self) -> str:
        """One JSON line (``time`` as RFC 3339 with microseconds)."""
        t = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="microseconds")
        return json.dumps({"time": t.replace("+00:00", "Z"), "device": self.device,
                           "kind": self.kind, "details": self.details},
                          separators=(",", ":"), sort_keys=False)

    @classmethod
    def from_json(cls, line: str) -> Label:
        """Parse one line written by :meth:`to_json`."""
        obj = json.loads(line)
        t = datetime.fromisoformat(obj["time"].replace("Z", "+00:00")).timestamp()
        return cls(t, obj["device"], obj["kind"], obj.get("details") or {})


class LabelWriter:
    """Appends labels to a JSON-lines file (or any text stream), flushed per call, and to
    ``keep`` when given (a live scorer's copy)."""

    def __init__(self, out: TextIO | None, keep: list[Label] | None = None) -> None:
        self._out = out
        self._keep = keep
        self.count = 0

    def write(self, labels: Iterable[Label]) -> None:
        """Write ``labels``; a writer without a stream only counts (and keeps) them."""
        labels = list(labels)
        if self._keep is not None:
            self._keep.extend(labels)
        lines = [lb.to_json() for lb in labels]
        self.count += len(lines)
        if self._out is not None and lines:
            self._out.write("\n".join(lines) + "\n")
            self._out.flush()
