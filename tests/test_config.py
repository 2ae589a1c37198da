"""Configuration precedence and validation (no services needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from beiflow.ingest.config import ConfigError, load_config, parse_hostport, parse_mqtt_url


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "beiflow.toml"
    p.write_text(text)
    return p


def test_defaults_without_anything() -> None:
    cfg = load_config(env={})
    assert cfg.mqtt.url == "mqtt://127.0.0.1:1883"
    assert cfg.mqtt.qos == 1
    assert cfg.mqtt.receive_maximum == 65535
    assert cfg.batch.max_messages == 5000


def test_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[mqtt]\nurl = "mqtt://file:1883"\ntopic_root = "fromfile"\n'
                           '[db]\ndsn = "dbname=file"\n[batch]\nmax_messages = 7\n')
    env = {"BEIFLOW_MQTT_URL": "mqtt://env:1884", "BEIFLOW_DB_DSN": "dbname=env"}
    cfg = load_config(path, env=env, overrides={"db.dsn": "dbname=flag", "mqtt.url": None})
    assert cfg.mqtt.url == "mqtt://env:1884"       # env beats file; a None flag is unset
    assert cfg.db.dsn == "dbname=flag"              # flag beats env
    assert cfg.mqtt.topic_root == "fromfile"        # file beats default
    assert cfg.batch.max_messages == 7
    assert cfg.metrics.addr == "127.0.0.1:9464"     # default


def test_unknown_key_is_named_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'mqtt\.recieve_maximum'"):
        load_config(_toml(tmp_path, "[mqtt]\nrecieve_maximum = 10\n"), env={})
    with pytest.raises(ConfigError, match="unknown config key 'nosuch'"):
        load_config(_toml(tmp_path, "[nosuch]\nx = 1\n"), env={})


def test_wrong_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"batch\.max_messages: expected int"):
        load_config(_toml(tmp_path, '[batch]\nmax_messages = "many"\n'), env={})


def test_env_values_are_coerced() -> None:
    cfg = load_config(env={"BEIFLOW_METRICS_ADDR": "0.0.0.0:0"})
    assert parse_hostport(cfg.metrics.addr, "metrics.addr") == ("0.0.0.0", 0)


def test_invalid_values_fail_at_startup() -> None:
    with pytest.raises(ConfigError, match="scheme"):
        load_config(env={"BEIFLOW_MQTT_URL": "http://x"})
    with pytest.raises(ConfigError, match=r"metrics\.addr"):
        load_config(env={"BEIFLOW_METRICS_ADDR": "nohostport"})


def test_mqtt_url_parsing_keeps_password_out_of_repr() -> None:
    url = parse_mqtt_url("mqtts://dev%40a:s3cret@broker.example:8884")
    assert (url.host, url.port, url.tls, url.username) == ("broker.example", 8884, True, "dev@a")
    assert url.password == "s3cret"
    assert "s3cret" not in repr(url)
    assert parse_mqtt_url("mqtts://h").port == 8883
