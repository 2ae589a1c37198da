"""Security: MQTT over TLS (own CA, server and client certificates), credentials never on
the command line or in logs, per-device ACLs on a real Mosquitto, a least-privilege
database role for ingest, endpoints on localhost by default."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from beiflow.ingest.broker import BROKER_LIMITS, PrivateBroker
from beiflow.ingest.config import Config, as_dict, load_config, mqtt_endpoint
from beiflow.ingest.db import grant_ingest
from beiflow.ingest.metrics import Metrics
from beiflow.ingest.replay import PublishError, publish_in_order
from beiflow.ingest.runner import Ingest, start_ingest
from tests.conftest import count, wait_for
from tests.nmea_log import make_log

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2024, 5, 1, 8, 0, 0, tzinfo=UTC)
MOSQUITTO = os.environ.get("BEIFLOW_MOSQUITTO")


def _epochs(n: int, device: int = 0) -> list[bytes]:
    from beiflow.ingest.nmea import split_epochs
    return split_epochs(make_log(n, start=START, device=device))


# -- certificates ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def broker_readable() -> Iterator[Callable[[str], Path]]:
    """Private directories the broker can read: Mosquitto started as root drops to the
    ``mosquitto`` user before it loads certificates, passwords and ACLs."""
    made: list[Path] = []

    def make(prefix: str) -> Path:
        d = Path(tempfile.mkdtemp(prefix=f"beiflow-{prefix}-"))
        made.append(d)
        return d

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def _hand_to_broker(d: Path) -> None:
    if os.geteuid() != 0:
        return  # mosquitto runs as us
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    for p in (d, *d.iterdir()):
        os.chown(p, user.pw_uid, user.pw_gid)


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _leaf(d: Path, name: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
             cwd=d)


@pytest.fixture(scope="module")
def pki(broker_readable: Callable[[str], Path]) -> Path:
    """A CA with a server certificate (127.0.0.1, localhost) and a client certificate, and a
    rogue CA with a client certificate of its own."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl not found: apt-get install openssl")
    d = broker_readable("pki")
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _leaf(d, "server", "ca", "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
          "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _leaf(d, "client", "ca", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    _leaf(d, "rogue", "rogue-ca", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    _hand_to_broker(d)
    return d


def _tls_broker(pki: Path, *, require_certificate: bool) -> PrivateBroker:
    opts = (f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\n"
            f"keyfile {pki / 'server.key'}\n"
            f"require_certificate {'true' if require_certificate else 'false'}")
    return PrivateBroker(binary=MOSQUITTO, listener_options=opts, tls=True)


@pytest.fixture(scope="module")
def tls_broker(pki: Path) -> Iterator[PrivateBroker]:
    """A TLS-only broker (no plain listener)."""
    with _tls_broker(pki, require_certificate=False) as b:
        yield b


@pytest.fixture(scope="module")
def mtls_broker(pki: Path) -> Iterator[PrivateBroker]:
    """A TLS-only broker that requires client certificates signed by the CA."""
    with _tls_broker(pki, require_certificate=True) as b:
        yield b


def _cfg(config: Config, url: str, **mqtt: str) -> Config:
    return replace(config, mqtt=replace(config.mqtt, url=url, **mqtt))


@pytest.fixture
def start_unready() -> Iterator[Callable[[Config], Ingest]]:
    """Start an ingest without waiting for it to become ready; closed at teardown."""
    started: list[Ingest] = []

    def start(cfg: Config) -> Ingest:
        ing = start_ingest(cfg, metrics=Metrics())
        started.append(ing)
        return ing

    yield start
    for ing in started:
        ing.close()


def _never_ready(ing: Ingest, seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ing.collector.ready():
            return False
        time.sleep(0.1)
    return True


def _device_rows(dsn: str, device: str) -> int:
    return count(dsn, "SELECT count(*) FROM positions WHERE device_id = %s", device)


# -- 1. TLS --------------------------------------------------------------------------------

def test_ingest_over_tls_verifies_the_broker_and_lands_messages(
        config: Config, tls_broker: PrivateBroker, pki: Path,
        run_ingest: Callable[..., Ingest], db_dsn: str) -> None:
    assert tls_broker.url.startswith("mqtts://")
    cfg = _cfg(config, tls_broker.url, ca_file=str(pki / "ca.crt"))
    run_ingest(cfg)
    device = f"tls-{uuid.uuid4().hex[:6]}"
    topic = f"{cfg.mqtt.topic_root}/yantai/{device}/nmea"
    assert publish_in_order(mqtt_endpoint(cfg.mqtt), topic, _epochs(5), rate_hz=0) == 5
    wait_for(lambda: _device_rows(db_dsn, device) == 5, what="5 positions over TLS")

    # the broker speaks only TLS: a plain client gets nowhere
    with pytest.raises(PublishError):
        publish_in_order(mqtt_endpoint(replace(cfg.mqtt, url=f"mqtt://127.0.0.1:"
                                               f"{tls_broker.port}", ca_file="")),
                         topic, _epochs(1), rate_hz=0, connect_timeout_s=3)


def test_a_broker_certificate_we_do_not_trust_is_refused(
        config: Config, tls_broker: PrivateBroker, pki: Path,
        start_unready: Callable[[Config], Ingest], caplog: pytest.LogCaptureFixture) -> None:
    # no ca_file: the system CA store, which does not know our test CA
    cfg = _cfg(config, tls_broker.url)
    with caplog.at_level(logging.ERROR, logger="beiflow.ingest.collector"):
        ing = start_unready(cfg)
        assert _never_ready(ing)
    assert "certificate verify failed" in caplog.text
    assert ing.metrics.registry.get_sample_value("beiflow_mqtt_connected") == 0
    with pytest.raises(PublishError, match="certificate verify failed"):
        publish_in_order(mqtt_endpoint(cfg.mqtt), "t/x/y/nmea", _epochs(1), rate_hz=0)
    # the wrong CA: verification fails too (rogue CA, same names)
    rogue = mqtt_endpoint(replace(cfg.mqtt, ca_file=str(pki / "rogue-ca.crt")))
    with pytest.raises(PublishError, match="certificate verify failed"):
        publish_in_order(rogue, "t/x/y/nmea", _epochs(1), rate_hz=0)


def test_simulator_over_tls_verifies_the_broker(
        config: Config, tls_broker: PrivateBroker, pki: Path, tmp_path: Path,
        run_ingest: Callable[..., Ingest], db_dsn: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`beiflow simulate` takes TLS from the same settings as ingest: it lands messages
    through a TLS-only broker it can verify and refuses one it cannot."""
    from beiflow.ingest.cli import main

    cfg = _cfg(config, tls_broker.url, ca_file=str(pki / "ca.crt"))
    run_ingest(cfg)
    root = cfg.mqtt.topic_root
    good = tmp_path / "sim.toml"
    good.write_text(f'[mqtt]\nca_file = "{pki / "ca.crt"}"\n')
    argv = ["simulate", "yantai-port", "--mqtt-url", tls_broker.url, "--topic-root", root,
            "--devices", "10", "--duration", "3", "--no-anomalies"]
    started = datetime.now(UTC)
    assert main(["--config", str(good), *argv]) == 0
    assert "published" in capsys.readouterr().out
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM positions WHERE device_id LIKE "
                                   "'truck-%%' AND received_at >= %s", started) > 0,
             what="simulated terminals' positions over TLS")
    rogue = tmp_path / "rogue.toml"
    rogue.write_text(f'[mqtt]\nca_file = "{pki / "rogue-ca.crt"}"\n')
    assert main(["--config", str(rogue), *argv]) == 1
    assert "certificate verify failed" in capsys.readouterr().err


def test_client_certificates(config: Config, mtls_broker: PrivateBroker, pki: Path,
                             run_ingest: Callable[..., Ingest],
                             start_unready: Callable[[Config], Ingest], db_dsn: str) -> None:
    ca = str(pki / "ca.crt")
    good = _cfg(config, mtls_broker.url, ca_file=ca, cert_file=str(pki / "client.crt"),
                key_file=str(pki / "client.key"))
    run_ingest(good)
    device = f"mtls-{uuid.uuid4().hex[:6]}"
    topic = f"{good.mqtt.topic_root}/yantai/{device}/nmea"
    assert publish_in_order(mqtt_endpoint(good.mqtt), topic, _epochs(3), rate_hz=0) == 3
    wait_for(lambda: _device_rows(db_dsn, device) == 3, what="3 positions over mutual TLS")

    # a certificate from another CA, and none at all, are refused by the broker
    rogue = replace(good, mqtt=replace(good.mqtt, client_id=f"rogue-{device}",
                                       cert_file=str(pki / "rogue.crt"),
                                       key_file=str(pki / "rogue.key")))
    assert _never_ready(start_unready(rogue))
    for mq in (rogue.mqtt, replace(good.mqtt, cert_file="", key_file="")):
        with pytest.raises(PublishError, match="closed before CONNACK"):
            publish_in_order(mqtt_endpoint(mq), topic, _epochs(1), rate_hz=0,
                             connect_timeout_s=3)
    assert _device_rows(db_dsn, device) == 3


# -- credentials -------------------------------------------------------------------------------

def test_credentials_from_env_or_file_never_shown(tmp_path: Path) -> None:
    secret = "s3cret-" + uuid.uuid4().hex
    cfg = load_config(env={"BEIFLOW_MQTT_USERNAME": "beiflow-ingest",
                           "BEIFLOW_MQTT_PASSWORD": secret})
    ep = mqtt_endpoint(cfg.mqtt)
    assert (ep.username, ep.password) == ("beiflow-ingest", secret)
    assert secret not in repr(cfg) and secret not in repr(ep)
    assert secret not in str(as_dict(cfg))
    # the URL wins over the environment; the file is the last resort (first line only)
    pw = tmp_path / "pw"
    pw.write_text(f"{secret}\nignored\n")
    cfg = load_config(env={"BEIFLOW_MQTT_USERNAME": "dev-1"},
                      overrides={"mqtt.password_file": str(pw)})
    assert mqtt_endpoint(cfg.mqtt).password == secret
    cfg = load_config(env={"BEIFLOW_MQTT_URL": "mqtt://u:p@h:1883",
                           "BEIFLOW_MQTT_PASSWORD": secret})
    assert (mqtt_endpoint(cfg.mqtt).username, mqtt_endpoint(cfg.mqtt).password) == ("u", "p")
    for bad in ({"mqtt.cert_file": "c.pem"}, {"mqtt.url": "mqtt://h", "mqtt.ca_file": "ca"}):
        with pytest.raises(ValueError):
            load_config(env={}, overrides=bad)


# -- 2. per-device ACLs --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def acl_broker(broker_readable: Callable[[str], Path]) -> Iterator[tuple[PrivateBroker, str]]:
    """A broker with password authentication and the shipped ACL; (broker, topic root)."""
    d = broker_readable("acl")
    passwd = d / "passwd"
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    for user in ("beiflow-ingest", "dev-a", "dev-b"):
        args = [tool, "-b", *(["-c"] if user == "beiflow-ingest" else []), str(passwd), user,
                f"pw-{user}"]
        subprocess.run(args, check=True, capture_output=True)
    # the shipped ACL, with a topic root of this module's own
    root = f"a{uuid.uuid4().hex[:8]}"
    acl = d / "acl"
    acl.write_text((ROOT / "deploy/mosquitto/acl.example").read_text().replace(
        "telemetry/", f"{root}/"))
    _hand_to_broker(d)
    b = PrivateBroker(binary=MOSQUITTO, allow_anonymous=False,
                      extra=f"password_file {passwd}\nacl_file {acl}\n")
    with b:
        yield b, root


def _as(url: str, user: str) -> str:
    return url.replace("mqtt://", f"mqtt://{user}:pw-{user}@")


def test_a_device_cannot_publish_as_another(config: Config, acl_broker: tuple[PrivateBroker, str],
                                            tmp_path: Path, run_ingest: Callable[..., Ingest],
                                            db_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    broker, root = acl_broker
    pw = tmp_path / "ingest-pw"
    pw.write_text("pw-beiflow-ingest\n")
    cfg = load_config(env={"BEIFLOW_MQTT_USERNAME": "beiflow-ingest"}, overrides={
        "mqtt.url": broker.url, "mqtt.password_file": str(pw), "db.dsn": db_dsn,
        "metrics.addr": "127.0.0.1:0", "mqtt.topic_root": root, "batch.max_age_ms": 50,
        "mqtt.client_id": f"ingest-{root}", "mqtt.shared_group": "g1"})
    cfg = replace(cfg, nmea=replace(cfg.nmea, past_tolerance_s=10 * 365 * 86400.0))
    with caplog.at_level(logging.DEBUG):
        run_ingest(cfg)  # authenticated, subscribed through $share

        dev_a = mqtt_endpoint(replace(cfg.mqtt, url=_as(broker.url, "dev-a"), username="",
                                      password_file=""))
        # dev-a as dev-b: the broker answers "Not authorized" and drops it
        with pytest.raises(PublishError, match="Not authorized"):
            publish_in_order(dev_a, f"{root}/yantai/dev-b/nmea", _epochs(3, device=1),
                             rate_hz=0)
        # dev-a under its own id: lands
        assert publish_in_order(dev_a, f"{root}/yantai/dev-a/nmea", _epochs(4),
                                rate_hz=0) == 4
        wait_for(lambda: _device_rows(db_dsn, "dev-a") == 4, what="dev-a's positions")
        # the ingest account may read only
        ingest = mqtt_endpoint(cfg.mqtt)
        with pytest.raises(PublishError, match="Not authorized"):
            publish_in_order(ingest, f"{root}/yantai/dev-c/nmea", _epochs(2), rate_hz=0)
        # a wrong password is refused outright
        with pytest.raises(PublishError, match="refused"):
            publish_in_order(replace(dev_a, password="wrong"), f"{root}/yantai/dev-a/nmea",
                             _epochs(1), rate_hz=0)
        time.sleep(0.5)  # anything that slipped through would have landed by now
    assert _device_rows(db_dsn, "dev-b") == 0
    assert _device_rows(db_dsn, "dev-c") == 0
    assert count(db_dsn, "SELECT count(*) FROM dead_letters WHERE topic LIKE %s",
                 f"{root}/%") == 0
    assert "pw-beiflow-ingest" not in caplog.text and "pw-dev-a" not in caplog.text


def test_secure_mosquitto_config_keeps_our_limits_and_locks_down() -> None:
    conf = (ROOT / "deploy/mosquitto/mosquitto.secure.conf").read_text()
    lines = [ln.split(None, 1) for ln in conf.splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    settings = {k: v.strip() for k, v in lines}
    for key, value in BROKER_LIMITS.items():
        assert settings.get(key) == value, key
    assert settings["allow_anonymous"] == "false"
    assert {"password_file", "acl_file", "cafile", "certfile", "keyfile"} <= set(settings)
    assert [v for k, v in lines if k == "listener"] == ["8883"]  # TLS only


# -- 3. database roles ---------------------------------------------------------------------

@pytest.fixture
def ingest_role(admin_dsn: str, db_dsn: str) -> Iterator[str]:
    """A login role with only `beiflow db grant-ingest`'s privileges; its DSN."""
    role = f"beiflow_ingest_t{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'x' NOSUPERUSER NOCREATEDB "
                             "NOCREATEROLE").format(sql.Identifier(role)))
    try:
        grant_ingest(db_dsn, role)
        yield psycopg.conninfo.make_conninfo(db_dsn, user=role, password="x")
    finally:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_ingest_runs_with_a_role_that_cannot_change_the_schema(
        config: Config, ingest_role: str, run_ingest: Callable[..., Ingest],
        db_dsn: str) -> None:
    cfg = replace(config, db=replace(config.db, dsn=ingest_role))
    run_ingest(cfg)
    device = f"role-{uuid.uuid4().hex[:6]}"
    topic = f"{cfg.mqtt.topic_root}/yantai/{device}/nmea"
    epochs = _epochs(4)
    assert publish_in_order(mqtt_endpoint(cfg.mqtt), topic, [*epochs, b"\x00garbage"],
                            rate_hz=0) == 5
    wait_for(lambda: _device_rows(db_dsn, device) == 4, what="positions as the ingest role")
    wait_for(lambda: count(db_dsn, "SELECT count(*) FROM dead_letters WHERE topic = %s",
                           topic) == 1, what="a dead letter as the ingest role")
    # a replay exercises the upsert (UPDATE) path
    assert publish_in_order(mqtt_endpoint(cfg.mqtt), topic, epochs, rate_hz=0) == 4
    with psycopg.connect(ingest_role, autocommit=True) as conn:
        for stmt in ("CREATE TABLE evil (x int)", "DROP TABLE positions",
                     "ALTER TABLE positions ADD COLUMN evil int", "DELETE FROM positions",
                     "TRUNCATE dead_letters", "UPDATE geofences SET name = 'x'",
                     "CREATE TEMP TABLE ok_tmp (x int)"):
            if stmt.startswith("CREATE TEMP"):
                conn.execute(stmt)  # the sink's stage tables need this
                continue
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)
    assert _device_rows(db_dsn, device) == 4


# -- 4. endpoints ----------------------------------------------------------------------------

def test_metrics_and_health_bind_to_localhost_by_default() -> None:
    assert Config().metrics.addr.startswith("127.0.0.1:")
    assert load_config(env={}).metrics.addr == "127.0.0.1:9464"
