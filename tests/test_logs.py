"""Logs: JSON lines with context, and never a password."""

from __future__ import annotations

import json
import logging

import pytest

from beiflow.ingest.logs import JsonFormatter, redact, setup_logging


@pytest.mark.parametrize(("text", "expected"), [
    ("mqtt://ingest:s3cr3t@broker:1883", "mqtt://ingest:***@broker:1883"),
    ("mqtts://u:p%40ss@h", "mqtts://u:***@h"),
    ("postgresql://beiflow:pw@db:5432/beiflow", "postgresql://beiflow:***@db:5432/beiflow"),
    ("host=db password=hunter2 dbname=x", "host=db password=*** dbname=x"),
    ("host=db password='a b' dbname=x", "host=db password=*** dbname=x"),
    ("mqtt://broker:1883 and dbname=x", "mqtt://broker:1883 and dbname=x"),
])
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_json_lines_carry_context_and_no_secret() -> None:
    record = logging.LogRecord("beiflow.ingest.collector", logging.ERROR, __file__, 1,
                               "cannot reach %s", ("postgresql://a:pw@db/x",), None)
    record.batch = 17
    record.device = "bd-0001"
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "error" and line["logger"] == "beiflow.ingest.collector"
    assert line["message"] == "cannot reach postgresql://a:***@db/x"
    assert (line["batch"], line["device"]) == (17, "bd-0001")
    assert line["time"].endswith("Z")


def test_setup_logging_json_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("INFO", "json")
    try:
        logging.getLogger("beiflow.test").info("hello %s", "mqtt://u:p@h", extra={"batch": 3})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["message"] == "hello mqtt://u:***@h" and line["batch"] == 3
