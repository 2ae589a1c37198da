"""Configuration: defaults in code < TOML file < environment < command-line flags.

Every section is a frozen dataclass; unknown keys are an error naming the dotted
path. Nothing here touches the network, so a bad config fails at start-up.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_origin, get_type_hints
from urllib.parse import unquote, urlsplit


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """Broker connection and subscription."""

    url: str = "mqtt://127.0.0.1:1883"
    topic_root: str = "telemetry"
    client_id: str = "beiflow-ingest"
    #: Shared-subscription group; collectors with the same group split the stream.
    shared_group: str = ""
    qos: int = 1
    #: Persistent session lifetime: messages published while we are away are kept.
    session_expiry_s: int = 7 * 86400
    #: MQTT v5 Receive Maximum: how many unacknowledged QoS 1 messages we accept.
    receive_maximum: int = 65535
    keepalive_s: int = 30
    #: Broker login when the URL has none (env BEIFLOW_MQTT_USERNAME).
    username: str = ""
    #: Password when the URL has none (env BEIFLOW_MQTT_PASSWORD); never printed or logged.
    password: str = field(default="", repr=False)
    #: File whose first line is the password (used when neither URL nor password has one).
    password_file: str = ""
    #: mqtts://: CA bundle to verify the broker with (empty: the system CA store).
    ca_file: str = ""
    #: mqtts://: client certificate and its key (PEM), for brokers requiring certificates.
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True, slots=True)
class DbConfig:
    """TimescaleDB connection."""

    dsn: str = "postgresql://127.0.0.1:5432/beiflow"
    #: Seconds between reconnection attempts while the database is unreachable.
    retry_s: float = 1.0


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """Micro-batching: a batch is flushed when it is this large or this old."""

    max_messages: int = 5000
    max_age_ms: int = 200


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus ``/metrics`` and ``/healthz`` endpoint (port 0 picks a free one)."""

    addr: str = "127.0.0.1:9464"


@dataclass(frozen=True, slots=True)
class NmeaSettings:
    """NMEA decoding tolerances."""

    future_tolerance_s: float = 300.0
    past_tolerance_s: float = 86400.0
    max_sentence_len: int = 164
    require_checksum: bool = True


@dataclass(frozen=True, slots=True)
class SensorSettings:
    """Sensor payload limits (schemas/sensor.json)."""

    future_tolerance_s: float = 300.0
    past_tolerance_s: float = 30 * 86400.0
    max_samples: int = 1000
    max_metrics: int = 64


@dataclass(frozen=True, slots=True)
class RfidSettings:
    """RFID payload limits (schemas/rfid.json)."""

    future_tolerance_s: float = 300.0
    past_tolerance_s: float = 30 * 86400.0
    max_reads: int = 1000


@dataclass(frozen=True, slots=True)
class GeofenceSettings:
    """Geofence events."""

    #: Consecutive fixes on the new side of a boundary before enter/exit (1: no debounce).
    debounce: int = 3
    #: Seconds between checks of the ``geofences`` table for changes (no restart needed).
    poll_s: float = 5.0


@dataclass(frozen=True, slots=True)
class DevicesSettings:
    """What the pipeline knows of devices beyond their topics."""

    #: Device id glob -> kind (road, vessel, rail, crane): selects the jump speed bound.
    kinds: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Input limits; anything beyond them is dead-lettered with a reason."""

    max_payload_bytes: int = 65536
    #: NMEA sentences (plus lines of other text) per message: too_many_sentences.
    max_sentences_per_message: int = 256
    #: Devices per site (a device counts toward the site it was first seen under); a new
    #: device beyond it: too_many_devices. Devices already known are never evicted.
    max_devices_per_site: int = 10000
    #: Distinct sites; a new device of a new site beyond it: too_many_sites.
    max_sites: int = 1000


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration of a beiflow process."""

    mqtt: MqttConfig = field(default_factory=MqttConfig)
    db: DbConfig = field(default_factory=DbConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    nmea: NmeaSettings = field(default_factory=NmeaSettings)
    sensor: SensorSettings = field(default_factory=SensorSettings)
    rfid: RfidSettings = field(default_factory=RfidSettings)
    geofence: GeofenceSettings = field(default_factory=GeofenceSettings)
    devices: DevicesSettings = field(default_factory=DevicesSettings)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


#: Environment variable -> dotted config key.
ENV_KEYS: dict[str, str] = {
    "BEIFLOW_MQTT_URL": "mqtt.url",
    "BEIFLOW_DB_DSN": "db.dsn",
    "BEIFLOW_METRICS_ADDR": "metrics.addr",
    "BEIFLOW_TOPIC_ROOT": "mqtt.topic_root",
    "BEIFLOW_CLIENT_ID": "mqtt.client_id",
    "BEIFLOW_SHARED_GROUP": "mqtt.shared_group",
    "BEIFLOW_MQTT_USERNAME": "mqtt.username",
    "BEIFLOW_MQTT_PASSWORD": "mqtt.password",
}


def _coerce(value: Any, typ: Any, path: str) -> Any:
    if get_origin(typ) is dict:
        if isinstance(value, Mapping) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return dict(value)
        raise ConfigError(f"{path}: expected a table of strings, got {value!r}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false",
                                                        "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str and isinstance(value, str):
        return value
    raise ConfigError(f"{path}: expected {typ.__name__}, got {value!r}")


def _build(cls: type, data: Mapping[str, Any], base: Any, prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown config key {(prefix + str(key))!r}")
    changes: dict[str, Any] = {}
    for name, value in data.items():
        typ = hints[name]
        path = f"{prefix}{name}"
        if is_dataclass(typ):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path}: expected a table, got {value!r}")
            changes[name] = _build(typ, value, getattr(base, name), f"{path}.")  # type: ignore[arg-type]
        else:
            changes[name] = _coerce(value, typ, path)
    return replace(base, **changes)


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge defaults, an optional TOML file, the environment and dotted overrides."""
    cfg = Config()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        cfg = _build(Config, data, cfg, "")
    env = os.environ if env is None else env
    from_env = {key: env[var] for var, key in ENV_KEYS.items() if env.get(var)}
    if from_env:
        cfg = _build(Config, _nest(from_env), cfg, "")
    if overrides:
        cfg = _build(Config, _nest({k: v for k, v in overrides.items() if v is not None}), cfg,
                     "")
    _validate(cfg)
    return cfg


def _validate(cfg: Config) -> None:
    url = parse_mqtt_url(cfg.mqtt.url)
    if bool(cfg.mqtt.cert_file) != bool(cfg.mqtt.key_file):
        raise ConfigError("mqtt.cert_file and mqtt.key_file: set both or neither")
    if not url.tls and (cfg.mqtt.ca_file or cfg.mqtt.cert_file):
        raise ConfigError("mqtt.ca_file / mqtt.cert_file need an mqtts:// url")
    parse_hostport(cfg.metrics.addr, "metrics.addr")
    if cfg.mqtt.qos not in (0, 1):
        raise ConfigError("mqtt.qos: must be 0 or 1")
    if not 1 <= cfg.mqtt.receive_maximum <= 65535:
        raise ConfigError("mqtt.receive_maximum: must be 1..65535")
    if cfg.batch.max_messages < 1 or cfg.batch.max_age_ms < 1:
        raise ConfigError("batch.max_messages and batch.max_age_ms must be positive")
    if cfg.limits.max_payload_bytes < 64:
        raise ConfigError("limits.max_payload_bytes: must be at least 64")
    for key in ("max_sentences_per_message", "max_devices_per_site", "max_sites"):
        if getattr(cfg.limits, key) < 1:
            raise ConfigError(f"limits.{key}: must be at least 1")
    if cfg.geofence.debounce < 1:
        raise ConfigError("geofence.debounce: must be at least 1")
    kinds = {"road", "vessel", "rail", "crane"}
    for pattern, kind in cfg.devices.kinds.items():
        if kind not in kinds:
            raise ConfigError(f"devices.kinds.{pattern}: kind must be one of {sorted(kinds)}")


@dataclass(frozen=True, slots=True)
class MqttUrl:
    """A parsed ``mqtt[s]://user:pass@host:port`` URL."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: TLS: CA bundle (None: the system store), client certificate and key.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def configure(self, client: Any) -> None:
        """Set credentials and TLS on a paho client. TLS always verifies the broker's
        certificate and host name (against ``ca_file`` or the system CA store)."""
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(ca_certs=self.ca_file, certfile=self.cert_file,
                           keyfile=self.key_file)


def mqtt_endpoint(cfg: MqttConfig) -> MqttUrl:
    """The broker to connect to with credentials and TLS files resolved: user and password
    from the URL, else ``mqtt.username`` / ``mqtt.password`` (environment), else the first
    line of ``mqtt.password_file``."""
    url = parse_mqtt_url(cfg.url)
    username = url.username or cfg.username or None
    password = url.password or cfg.password or None
    if password is None and cfg.password_file:
        try:
            with open(cfg.password_file, encoding="utf-8") as fh:
                password = fh.readline().rstrip("\r\n") or None
        except OSError as exc:
            raise ConfigError(
                f"mqtt.password_file: cannot read {cfg.password_file}: {exc.strerror}") from exc
    if password is not None and username is None:
        raise ConfigError("mqtt: a password is set but no username")
    return replace(url, username=username, password=password, ca_file=cfg.ca_file or None,
                   cert_file=cfg.cert_file or None, key_file=cfg.key_file or None)


def parse_mqtt_url(url: str) -> MqttUrl:
    """Parse a broker URL; the password never appears in errors or reprs."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError(f"mqtt.url: scheme must be mqtt or mqtts, got {parts.scheme!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError("mqtt.url: invalid port") from exc
    if not parts.hostname:
        raise ConfigError("mqtt.url: no host")
    return MqttUrl(
        host=parts.hostname,
        port=port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def parse_hostport(value: str, key: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too); port 0 means pick a free one."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key}: expected host:port, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def as_dict(cfg: Config) -> dict[str, Any]:
    """The configuration as nested plain data (for ``beiflow config``), secrets masked."""
    data = dataclasses.asdict(cfg)
    url = parse_mqtt_url(cfg.mqtt.url)
    if url.password:
        data["mqtt"]["url"] = cfg.mqtt.url.replace(f":{url.password}@", ":***@")
    if cfg.mqtt.password:
        data["mqtt"]["password"] = "***"
    return data
