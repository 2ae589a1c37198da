"""WireClient, our asyncio MQTT publisher, against a real Mosquitto with paho-mqtt as the
subscribing oracle; a scripted loopback server covers what a broker will not do on demand
(fragmented and MQTT 5 PUBACKs, keep alive)."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from beiflow.devices.simulators.mqttwire import Will, WireClient, WireError, _varint
from beiflow.ingest.broker import PrivateBroker, free_port
from tests.conftest import wait_for
from tests.test_security import _ca, _hand_to_broker, _leaf

Msg = tuple[str, bytes, int, bool]
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Subscriber:
    """A paho subscriber recording (topic, payload, qos, retain) in arrival order."""

    def __init__(self, broker: PrivateBroker, topic: str, *, ca: Path | None = None) -> None:
        self.messages: list[Msg] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4()}")
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, msg.qos, bool(msg.retain)))

    def got(self) -> list[Msg]:
        with self._lock:
            return list(self.messages)

    def wait(self, n: int, what: str = "messages") -> list[Msg]:
        wait_for(lambda: len(self.got()) >= n, what=f"{n} {what}")
        return self.got()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscribe(broker: PrivateBroker) -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(topic: str, on: PrivateBroker = broker, ca: Path | None = None) -> Subscriber:
        s = Subscriber(on, topic, ca=ca)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _client(broker: PrivateBroker, **kw: Any) -> WireClient:
    kw.setdefault("client_id", f"wire-{uuid.uuid4().hex[:8]}")
    return WireClient("127.0.0.1", broker.port, **kw)


# -- framing ----------------------------------------------------------------------------------

def test_variable_byte_integer_matches_the_specification_table() -> None:
    # MQTT 5.0 section 1.5.5 / 3.1.1 section 2.2.3: the boundaries of 1..4 bytes
    cases = {0: "00", 127: "7f", 128: "8001", 16383: "ff7f", 16384: "808001",
             2097151: "ffff7f", 2097152: "80808001", 268435455: "ffffff7f"}
    for n, hexed in cases.items():
        assert _varint(n).hex() == hexed


# -- against Mosquitto ------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [4, 5])
def test_messages_arrive_exactly_and_in_order(broker: PrivateBroker, topic_root: str,
                                              subscribe: Callable[..., Subscriber],
                                              protocol: int) -> None:
    sub = subscribe(f"{topic_root}/#")
    sent: list[Msg] = []
    for i in range(300):
        topic = f"{topic_root}/yantai/dev-{i % 7}/nmea"
        payload = bytes([i % 256]) * (i % 40) + f"$GNRMC,{i}*00\r\n".encode()
        sent.append((topic, payload, i % 2, False))
    # an empty payload, non-ASCII topic, and packets whose length needs 3 varint bytes
    sent += [(f"{topic_root}/yantai/empty/status", b"", 1, False),
             (f"{topic_root}/烟台/dev-x/nmea", b"\x00\xff", 1, False),
             (f"{topic_root}/yantai/big/nmea", os.urandom(200_000), 1, False),
             (f"{topic_root}/yantai/big/nmea", os.urandom(16_380), 0, False)]

    async def go() -> WireClient:
        async with _client(broker, protocol=protocol) as c:
            for i, (topic, payload, qos, _r) in enumerate(sent):
                if i % 3:
                    await c.publish(topic, payload, qos)
                else:
                    c.publish_nowait(topic, payload, qos)
            await c.flush()
            return c

    c = run(go())
    assert (c.sent, c.acked, c.rejected) == (len(sent), sum(m[2] for m in sent), 0)
    assert sub.wait(len(sent)) == sent


def test_retained_status_reaches_a_later_subscriber(broker: PrivateBroker, topic_root: str,
                                                     subscribe: Callable[..., Subscriber]
                                                     ) -> None:
    status = f"{topic_root}/yantai/dev-1/status"

    async def go() -> None:
        async with _client(broker) as c:
            await c.publish(status, b"online", qos=1, retain=True)
            await c.publish_many([(status, b"starting"), (status, b"online")], retain=True)
            await c.flush()

    run(go())
    assert subscribe(f"{topic_root}/#").wait(1) == [(status, b"online", 1, True)]


def test_in_flight_window_is_never_exceeded(broker: PrivateBroker, topic_root: str,
                                            subscribe: Callable[..., Subscriber]) -> None:
    sub = subscribe(f"{topic_root}/#")
    items = [(f"{topic_root}/yantai/dev-{i % 50}/nmea", f"epoch {i}".encode())
             for i in range(1000)]
    seen: list[int] = []

    async def go() -> WireClient:
        async with _client(broker, max_inflight=10) as c:
            for topic, payload in items[:500]:
                await c.publish(topic, payload)
                seen.append(c.inflight)
            await c.publish_many(items[500:])
            seen.append(c.inflight)
            await c.flush()
            assert c.inflight == 0
            # without waiting, the eleventh QoS 1 publish is refused and nothing is framed
            for topic, payload in items[:10]:
                c.publish_nowait(topic, payload)
            with pytest.raises(WireError, match="window full"):
                c.publish_nowait(*items[10])
            c.publish_nowait(items[10][0], b"qos 0 is not windowed", qos=0)
            await c.flush()
            return c

    c = run(go())
    assert max(seen) == 10
    assert (c.sent, c.acked) == (1011, 1010)
    got = sub.wait(1011)
    assert [(t, p) for t, p, *_ in got[:1000]] == items


@pytest.mark.parametrize("protocol", [4, 5])
def test_will_fires_on_abort_and_not_on_disconnect(broker: PrivateBroker, topic_root: str,
                                                   subscribe: Callable[..., Subscriber],
                                                   protocol: int) -> None:
    sub = subscribe(f"{topic_root}/+/+/status")
    crash, clean = (f"{topic_root}/yantai/{d}/status" for d in ("crash", "clean"))

    async def go() -> None:
        for status in (crash, clean):
            c = _client(broker, protocol=protocol, will=Will(status, b"offline"))
            await c.connect()
            await c.publish(status, b"online", retain=True)
            await c.flush()
            if status == crash:
                c.abort()
            else:
                await c.disconnect()
            assert not c.connected
            with pytest.raises(WireError):
                await c.publish(status, b"after close")
        # a marker after the clean disconnect: its will, had there been one, comes first
        async with _client(broker) as marker:
            await marker.publish(clean, b"marker")
            await marker.flush()

    run(go())
    got = sub.wait(4)
    assert sorted(got) == sorted([(crash, b"online", 1, False), (clean, b"online", 1, False),
                                  (crash, b"offline", 1, False), (clean, b"marker", 1, False)])
    late = subscribe(f"{topic_root}/+/+/status").wait(2, "retained statuses")
    assert sorted(late) == [(clean, b"online", 1, True), (crash, b"offline", 1, True)]
    assert len(sub.got()) == 4


@pytest.mark.parametrize("protocol", [4, 5])
def test_a_server_side_disconnect_raises_on_the_next_call(broker: PrivateBroker,
                                                          topic_root: str,
                                                          protocol: int) -> None:
    async def go() -> None:
        client_id = f"dup-{uuid.uuid4().hex[:6]}"
        first = _client(broker, client_id=client_id, protocol=protocol)
        await first.connect()
        # the same client id again: the broker closes the first connection
        async with _client(broker, client_id=client_id, protocol=protocol):
            async with asyncio.timeout(10):
                while first.connected:
                    await asyncio.sleep(0.01)
            with pytest.raises(WireError, match="connection lost: closed by the server"):
                await first.publish(f"{topic_root}/x/y/nmea", b"lost")
            with pytest.raises(WireError, match="connection lost"):
                await first.flush()

    run(go())


def test_nothing_listening_is_a_wire_error() -> None:
    c = WireClient("127.0.0.1", free_port(), client_id="nobody")
    with pytest.raises(WireError, match=r"connect to 127\.0\.0\.1"):
        run(c.connect())


# -- credentials -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def broker_dir() -> Iterator[Callable[[], Path]]:
    """Directories the broker can read (pytest's tmp_path is private to root, and Mosquitto
    started as root drops to its own user before reading passwords and certificates)."""
    made: list[Path] = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="beiflow-wire-")))
        return made[-1]

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def auth_broker(broker_dir: Callable[[], Path]) -> Iterator[PrivateBroker]:
    """A broker with a password file and no anonymous access."""
    d = broker_dir()
    passwd = d / "passwd"
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([tool, "-b", "-c", str(passwd), "dev-1", "pw-dev-1"], check=True,
                   capture_output=True)
    _hand_to_broker(d)
    with PrivateBroker(binary=os.environ.get("BEIFLOW_MOSQUITTO"), allow_anonymous=False,
                       extra=f"password_file {passwd}\n") as b:
        yield b


@pytest.mark.parametrize(("protocol", "refused"), [
    (4, "connection refused: not authorized (0x05)"),
    (5, "connection refused: not authorized (0x87)"),
])
def test_credentials(auth_broker: PrivateBroker, topic_root: str, protocol: int,
                     refused: str) -> None:
    async def go() -> None:
        async with _client(auth_broker, username="dev-1", password="pw-dev-1",
                           protocol=protocol) as c:
            await c.publish(f"{topic_root}/yantai/dev-1/nmea", b"ok")
            await c.flush()
            assert c.acked == 1
        for creds in ({"username": "dev-1", "password": "wrong"}, {}):
            c = _client(auth_broker, protocol=protocol, **creds)
            with pytest.raises(WireError) as err:
                await c.connect()
            assert str(err.value) == refused
            assert err.value.reason_code == int(refused[-5:-1], 16)
            assert not c.connected

    run(go())


# -- TLS -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls(broker_dir: Callable[[], Path]) -> Iterator[tuple[PrivateBroker, Path]]:
    """A TLS-only broker with a certificate from our own CA; (broker, pki directory)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl not found: apt-get install openssl")
    d = broker_dir()
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _leaf(d, "server", "ca", "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
          "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _hand_to_broker(d)
    opts = f"cafile {d / 'ca.crt'}\ncertfile {d / 'server.crt'}\nkeyfile {d / 'server.key'}"
    with PrivateBroker(binary=os.environ.get("BEIFLOW_MOSQUITTO"), listener_options=opts,
                       tls=True) as b:
        yield b, d


def test_tls_with_ca_verification(tls: tuple[PrivateBroker, Path], topic_root: str,
                                  subscribe: Callable[..., Subscriber]) -> None:
    broker, pki = tls
    sub = subscribe(f"{topic_root}/#", on=broker, ca=pki / "ca.crt")
    topic = f"{topic_root}/yantai/dev-1/nmea"

    async def go() -> None:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        async with _client(broker, ssl=ctx, will=Will(f"{topic_root}/s", b"off")) as c:
            c.publish_nowait(topic, b"over tls")
            await c.publish(topic, b"again", qos=0)
            await c.flush()
        for untrusted in (ssl.create_default_context(cafile=str(pki / "rogue-ca.crt")),
                          ssl.create_default_context()):
            with pytest.raises(WireError, match="certificate verify failed"):
                await _client(broker, ssl=untrusted).connect()
        with pytest.raises(WireError, match="connection closed before CONNACK"):
            await _client(broker).connect()  # plain MQTT to the TLS listener

    run(go())
    assert sub.wait(2) == [(topic, b"over tls", 1, False), (topic, b"again", 0, False)]


# -- a scripted server -------------------------------------------------------------------------

class Script:
    """A loopback server that accepts MQTT clients and answers each packet (first header
    byte + body, without the remaining length) as told, in ``chunk``-byte fragments."""

    def __init__(self, reply: Callable[[bytes], bytes], chunk: int = 65536) -> None:
        self.reply, self.chunk = reply, chunk
        self.packets: list[bytes] = []
        self.port = 0

    async def __aenter__(self) -> Script:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while header := await reader.read(1):
                length, mult = 0, 1
                while (digit := (await reader.readexactly(1))[0]) & 0x80:
                    length += (digit & 0x7F) * mult
                    mult *= 128
                packet = header + await reader.readexactly(length + (digit & 0x7F) * mult)
                self.packets.append(packet)
                answer = self.reply(packet)
                for i in range(0, len(answer), self.chunk):
                    writer.write(answer[i:i + self.chunk])
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def test_fragmented_and_mqtt5_pubacks_are_counted() -> None:
    def reply(packet: bytes) -> bytes:
        if packet[0] == 0x10:
            return b"\x20\x03\x00\x00\x00"  # CONNACK, MQTT 5, no properties
        if packet[0] != 0x32:
            return b""
        tlen = int.from_bytes(packet[1:3], "big")
        pb = packet[3 + tlen:5 + tlen]
        pid = int.from_bytes(pb, "big")
        # success with no reason, "no matching subscribers", "not authorized" + a property
        return (b"\x40\x02" + pb if pid % 3 == 0 else b"\x40\x03" + pb + b"\x10"
                if pid % 3 == 1 else b"\x40\x08" + pb + b"\x87\x04\x1f\x00\x01x")

    async def go() -> WireClient:
        async with Script(reply, chunk=3) as server:
            c = WireClient("127.0.0.1", server.port, client_id="frag", protocol=5,
                           max_inflight=4)
            await c.connect()
            await c.publish_many((f"t/{i}", b"p") for i in range(30))
            await c.flush()
            await c.disconnect()
            return c

    c = run(go())
    assert (c.sent, c.acked, c.rejected, c.inflight) == (30, 30, 10, 0)


def test_an_mqtt5_server_disconnect_names_its_reason() -> None:
    def reply(packet: bytes) -> bytes:
        if packet[0] == 0x10:
            return b"\x20\x03\x00\x00\x00"
        # DISCONNECT "server shutting down" with a reason string
        return b"\xe0\x0b\x8b\x09\x1f\x00\x06reboot" if packet[0] == 0x32 else b""

    async def go() -> WireError:
        async with Script(reply) as server:
            c = WireClient("127.0.0.1", server.port, client_id="bye", protocol=5)
            await c.connect()
            await c.publish("t/1", b"p")
            with pytest.raises(WireError) as err:
                await c.flush()
            return err.value

    err = run(go())
    assert str(err) == "disconnected by the server: server shutting down (0x8B): reboot"
    assert err.reason_code == 0x8B


def _connack_then(ping_answer: bytes) -> Callable[[bytes], bytes]:
    def reply(packet: bytes) -> bytes:
        return {0x10: b"\x20\x02\x00\x00", 0xC0: ping_answer}.get(packet[0], b"")
    return reply


def test_keepalive_pings_and_a_silent_server_is_a_lost_connection() -> None:
    async def go(reply: Callable[[bytes], bytes]) -> tuple[bool, int, WireError | None]:
        async with Script(reply) as server:
            c = WireClient("127.0.0.1", server.port, client_id="ka", keepalive_s=1)
            await c.connect()
            async with asyncio.timeout(20):
                while c.connected and server.packets.count(b"\xc0") < 3:
                    await asyncio.sleep(0.05)
            alive, pings = c.connected, server.packets.count(b"\xc0")
            try:
                await c.flush()
            except WireError as exc:
                return alive, pings, exc
            await c.disconnect()
            return alive, pings, None

    assert run(go(_connack_then(b"\xd0\x00"))) == (True, 3, None)
    alive, pings, err = run(go(_connack_then(b"")))
    assert not alive and pings >= 1
    assert err is not None and "no answer from the server" in str(err)
