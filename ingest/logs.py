"""Logging set-up: human text or one JSON object per line, never a secret."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

#: ``user:password@`` in URLs and ``password=...`` in libpq DSNs.
_SECRET = re.compile(r"(?P<pre>://[^:/@\s]+:)[^@\s]+@|(?P<kw>password\s*=\s*)('[^']*'|\S+)",
                     re.IGNORECASE)
#: LogRecord attributes that are not user-supplied context.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def redact(text: str) -> str:
    """``text`` with URL passwords and DSN ``password=`` values replaced by ``***``."""
    def repl(m: re.Match[str]) -> str:
        return f"{m.group('pre')}***@" if m.group("pre") else f"{m.group('kw')}***"
    return _SECRET.sub(repl, text)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and any ``extra`` context
    (``batch``, ``device``, ``messages``, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, int | float | bool | None) \
                    else redact(str(value))
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        """Emit to the current stderr."""
        self.stream = sys.stderr
        super().emit(record)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger on stderr (replacing only a handler set up here before)."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else _RedactingFormatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StderrHandler)]
    root.addHandler(handler)
    root.setLevel(level)
