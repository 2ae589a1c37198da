"""Shipped configuration files agree with the code."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from beiflow.ingest.broker import BROKER_LIMITS
from beiflow.ingest.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_example_toml_lists_every_option_with_its_default() -> None:
    path = ROOT / "deploy" / "beiflow.example.toml"
    data = tomllib.loads(path.read_text())
    assert load_config(path, env={}) == Config()   # every value there is the default
    defaults = dataclasses.asdict(Config())
    assert {s: set(v) for s, v in data.items()} == {s: set(v) for s, v in defaults.items()}


def test_shipped_mosquitto_config_sets_the_limits_we_rely_on() -> None:
    conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    settings = dict(
        line.split(None, 1) for line in conf.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    for key, value in BROKER_LIMITS.items():
        assert settings.get(key, "").strip() == value, key
