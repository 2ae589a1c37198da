"""The command line: help, config errors, decode, and `beiflow ingest` as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from beiflow.ingest.broker import PrivateBroker
from beiflow.ingest.cli import build_parser, main
from beiflow.ingest.config import parse_mqtt_url
from beiflow.ingest.replay import publish_in_order
from tests.conftest import count, wait_for
from tests.nmea_log import make_log

COMMANDS = [["demo"], ["ingest"], ["simulate"], ["replay"], ["decode"], ["db"], ["score"],
            ["db", "migrate"], ["geofence"], ["geofence", "import"], ["config"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_subcommand_has_useful_help(cmd: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: beiflow " + " ".join(cmd))
    if cmd[0] in ("ingest", "demo", "replay", "simulate"):
        assert "--mqtt-url" in out


def test_top_level_help_lists_the_contract_commands() -> None:
    text = build_parser().format_help()
    for name in ("demo", "ingest", "simulate", "replay", "decode", "db"):
        assert name in text


def test_config_error_names_the_key_and_exits_2(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text("[batch]\nmax_mesages = 3\n")
    assert main(["--config", str(bad), "config"]) == 2
    assert "batch.max_mesages" in capsys.readouterr().err


def test_config_command_masks_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--mqtt-url", "mqtt://ingest:hunter2@broker:1883"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert json.loads(out)["mqtt"]["url"] == "mqtt://ingest:***@broker:1883"


def test_decode_prints_json_lines_with_the_contract_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "t.nmea"
    log.write_bytes(make_log(3, start=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC))
                    + b"$GPGGA,garbage*00\r\n")
    assert main(["decode", str(log)]) == 1          # one problem
    out, err = capsys.readouterr()
    fixes = [json.loads(line) for line in out.splitlines()]
    assert len(fixes) == 3
    assert list(fixes[0]) == ["time", "lat", "lon", "alt_m", "speed_mps", "course_deg",
                              "fix_quality", "sats", "hdop"]
    assert fixes[0]["time"] == "2024-05-06T07:08:09.250Z"
    assert "bad_checksum" in err


def test_ingest_process_lands_messages_and_stops_on_sigterm(
        broker: PrivateBroker, db_dsn: str, topic_root: str) -> None:
    env = {**os.environ, "BEIFLOW_MQTT_URL": broker.url, "BEIFLOW_DB_DSN": db_dsn,
           "BEIFLOW_METRICS_ADDR": "127.0.0.1:0", "BEIFLOW_TOPIC_ROOT": topic_root,
           "BEIFLOW_CLIENT_ID": f"proc-{topic_root}"}
    proc = subprocess.Popen([sys.executable, "-m", "beiflow", "ingest"], env=env,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert proc.stderr is not None
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    try:
        wait_for(lambda: any("subscribed to" in line for line in lines), what="subscription")
        # one message holding 12 epochs (~180 sentences, under the per-message limit):
        # the decoder splits them
        log = make_log(12, start=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC), seed=21)
        publish_in_order(parse_mqtt_url(broker.url), f"{topic_root}/s1/proc-dev/nmea",
                         [log], rate_hz=0)
        wait_for(lambda: count(db_dsn, "SELECT count(*) FROM positions"
                               " WHERE device_id = 'proc-dev'") == 12, what="rows from process")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines)
    assert "metrics on http://127.0.0.1:" in err        # port 0 was resolved and logged
    assert "received SIGTERM" in err
