"""A minimal asyncio MQTT publisher (3.1.1 and 5) for simulated devices.

Why our own: a simulator publishes from thousands of device connections, and aiomqtt
(paho underneath) costs several times our CPU per message. ``WireClient`` speaks
just what a publishing device needs, written from the MQTT 3.1.1 and 5.0 specifications:

* CONNECT with its own client id, optional user name/password, a last will, clean
  start, keep alive; CONNACK refusals raise ``WireError`` naming the reason code.
  With MQTT 5 the server's Receive Maximum and Server Keep Alive are honoured.
* PUBLISH at QoS 0 or 1 (QoS 2 is not implemented; a will may have any QoS). Packets
  are framed into one output buffer (topic encodings cached per topic) that is written
  once per event-loop iteration, so many publishes cost one ``send``.
* Back-pressure: QoS 1 in flight never exceeds ``max_inflight`` (PUBACKs are tracked by
  packet id), and ``publish``/``publish_many`` wait while the transport's write buffer is
  above its high-water mark. ``publish_nowait`` never waits: it raises instead.
* PINGREQ keep alive (sent when either direction has been idle for half the period); a
  server silent for 1.5 keep-alive periods is a lost connection.
* ``disconnect()`` sends DISCONNECT (the broker discards the will); ``abort()`` drops the
  socket (the broker publishes the will), as a crashing or silent device does.
* A lost connection or a server DISCONNECT raises ``WireError`` from the next
  ``publish``/``flush``. There is no reconnect and no session resumption: messages in
  flight when the connection drops are counted in ``sent`` but never in ``acked``.
* Not checked client-side (the broker closes the connection instead): topic validity,
  the server's Maximum Packet Size and Maximum QoS.

Measured (bench/simulator.py, one core): about 1-3.5 us CPU per QoS 1 message, framing and
PUBACK handling included; the broker is the limit of a publisher on the next core.
"""

from __future__ import annotations

import asyncio
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from ssl import SSLContext

#: CONNACK return codes of MQTT 3.1.1 (section 3.2.2.3).
_REASONS_V4: dict[int, str] = {
    1: "unacceptable protocol version", 2: "identifier rejected", 3: "server unavailable",
    4: "bad user name or password", 5: "not authorized",
}
#: MQTT 5 reason codes a publisher can meet (section 2.4).
_REASONS_V5: dict[int, str] = {
    0x04: "disconnect with will message", 0x10: "no matching subscribers",
    0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
    0x83: "implementation specific error", 0x84: "unsupported protocol version",
    0x85: "client identifier not valid", 0x86: "bad user name or password",
    0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned",
    0x8B: "server shutting down", 0x8C: "bad authentication method",
    0x8D: "keep alive timeout", 0x8E: "session taken over", 0x90: "topic name invalid",
    0x93: "receive maximum exceeded", 0x95: "packet too large", 0x97: "quota exceeded",
    0x99: "payload format invalid", 0x9A: "retain not supported", 0x9B: "QoS not supported",
    0x9C: "use another server", 0x9D: "server moved", 0x9F: "connection rate exceeded",
}
#: MQTT 5 property identifiers by value width; -2 a length-prefixed string or binary,
#: -4 a string pair. Only what CONNACK, PUBACK and DISCONNECT can carry.
_PROPERTY_WIDTH: dict[int, int] = {
    0x11: 4, 0x12: -2, 0x13: 2, 0x15: -2, 0x16: -2, 0x1A: -2, 0x1C: -2, 0x1F: -2, 0x21: 2,
    0x22: 2, 0x24: 1, 0x25: 1, 0x26: -4, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1,
}
_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"
#: Remaining-length encodings up to 16 KiB (two bytes), shared by all clients.
_LENGTHS: list[bytes] = [bytes((n,)) if n < 128 else bytes((n & 0x7F | 0x80, n >> 7))
                         for n in range(16384)]
_OUT_HIGH_WATER = 64 * 1024


class WireError(Exception):
    """Connection refused, lost or closed; ``reason_code`` is the broker's when it gave one."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


@dataclass(frozen=True, slots=True)
class Will:
    """The last will the broker publishes if the connection ends without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def _varint(n: int) -> bytes:
    """MQTT variable byte integer."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """The variable byte integer at ``pos`` and the position after it; None when ``buf``
    ends (at ``end``) before it does, ``ValueError`` when it runs over four bytes."""
    value, mult = 0, 1
    while pos < end:
        digit = buf[pos]
        pos += 1
        value += (digit & 0x7F) * mult
        if digit < 0x80:
            return value, pos
        mult *= 128
        if mult > 128**3:
            raise ValueError("variable byte integer longer than four bytes")
    return None


def _utf8(value: str | bytes) -> bytes:
    """Two-byte length prefix and the bytes (UTF-8 for ``str``)."""
    b = value.encode() if isinstance(value, str) else value
    if len(b) > 0xFFFF:
        raise ValueError("MQTT strings are at most 65,535 bytes")
    return len(b).to_bytes(2, "big") + b


def _reason(code: int, protocol: int) -> str:
    name = (_REASONS_V5 if protocol == 5 else _REASONS_V4).get(code, "unknown reason")
    return f"{name} (0x{code:02X})"


def _properties(body: bytes, pos: int) -> tuple[dict[int, bytes], int]:
    """MQTT 5 properties at ``pos``: raw value per identifier, and the position after them."""
    try:
        got = _read_varint(body, pos, len(body))
    except ValueError as exc:
        raise WireError(f"malformed packet: {exc}") from None
    if got is None:
        raise WireError("malformed packet: truncated properties")
    length, pos = got
    end, props = pos + length, {}
    while pos < end:
        pid = body[pos]
        width = _PROPERTY_WIDTH.get(pid)
        if width is None:
            raise WireError(f"malformed packet: unknown property 0x{pid:02X}")
        pos += 1
        if width == -2:
            width = 2 + int.from_bytes(body[pos:pos + 2], "big")
        elif width == -4:
            first = 2 + int.from_bytes(body[pos:pos + 2], "big")
            width = first + 2 + int.from_bytes(body[pos + first:pos + first + 2], "big")
        props[pid] = body[pos:pos + width]
        pos += width
    return props, end


class WireClient(asyncio.Protocol):
    """One MQTT connection that publishes; see the module docstring for the behaviour.

    Counters: ``sent`` packets framed by ``publish*`` (any QoS), ``acked`` QoS 1 PUBACKs
    received, ``rejected`` PUBACKs with an MQTT 5 failure reason (counted in ``acked`` too).
    """

    def __init__(self, host: str, port: int, *, client_id: str, username: str | None = None,
                 password: str | None = None, will: Will | None = None,
                 ssl: SSLContext | None = None, keepalive_s: int = 60,
                 max_inflight: int = 1000, protocol: int = 4,
                 connect_timeout_s: float = 10.0) -> None:
        if protocol not in (4, 5):
            raise ValueError("protocol is 4 (MQTT 3.1.1) or 5")
        if not 1 <= max_inflight <= 0xFFFF:
            raise ValueError("max_inflight must be within 1..65535")
        self.host, self.port, self.client_id = host, port, client_id
        self.username, self.password, self.will, self.ssl = username, password, will, ssl
        self.keepalive_s, self.max_inflight, self.protocol = keepalive_s, max_inflight, protocol
        self.connect_timeout_s = connect_timeout_s
        self.sent = self.acked = self.rejected = 0
        self._props = b"\x00" if protocol == 5 else b""  # empty MQTT 5 property list
        self._topics: dict[str, bytes] = {}
        self._inflight: set[int] = set()
        self._next_pid = 1
        self._out = bytearray()
        self._rx = b""
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._connack: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._progress: asyncio.Future[None] | None = None  # PUBACKs, resume or error
        self._paused = False
        self._error: WireError | None = WireError("not connected")
        self._last_rx = self._last_tx = 0.0

    # -- connection ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection and wait for CONNACK; ``WireError`` if it fails."""
        loop = self._loop = asyncio.get_running_loop()
        self._connack, self._closed = loop.create_future(), loop.create_future()
        self._error = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await loop.create_connection(
                    lambda: self, self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None)
                await self._connack
        except WireError:
            self._drop()
            raise
        except (OSError, TimeoutError) as exc:
            self._connack.cancel()  # connection_lost must not set an unretrieved exception
            self._drop()
            what = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise WireError(f"connect to {self.host}:{self.port} failed: {what}") from exc

    def _connect_packet(self) -> bytes:
        v5 = self.protocol == 5
        flags = 0x02  # clean session / clean start
        payload = _utf8(self.client_id)
        if self.will is not None:
            w = self.will
            flags |= 0x04 | w.qos << 3 | (0x20 if w.retain else 0)
            payload += (b"\x00" if v5 else b"") + _utf8(w.topic) + _utf8(w.payload)
        if self.username is not None:
            flags |= 0x80
            payload += _utf8(self.username)
        if self.password is not None:
            flags |= 0x40
            payload += _utf8(self.password)
        variable = (_utf8("MQTT") + bytes((self.protocol, flags))
                    + self.keepalive_s.to_bytes(2, "big") + self._props)
        body = variable + payload
        return b"\x10" + _varint(len(body)) + body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._connect_packet())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            self._error = WireError(f"connection lost: {exc or 'closed by the server'}")
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(WireError(
                f"connection closed before CONNACK: {exc or 'closed by the server'}"))
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self._transport = None
        self._stop_timers()
        self._wake()

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _stop_timers(self) -> None:
        for handle in (self._flush_handle, self._ping_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._ping_handle = None

    async def disconnect(self) -> None:
        """Send DISCONNECT (the broker discards the will) and close; unacked QoS 1 is lost."""
        if self._transport is None:
            return
        self._out += _DISCONNECT
        self._write_out()
        self._error = WireError("disconnected by the client")
        self._transport.close()
        assert self._closed is not None
        await self._closed

    def abort(self) -> None:
        """Drop the socket without DISCONNECT: the broker publishes the will."""
        if self._transport is not None:
            self._error = WireError("aborted by the client")
            self._transport.abort()

    @property
    def connected(self) -> bool:
        """CONNACK accepted and the connection not (yet) lost."""
        return self._error is None and self._transport is not None

    @property
    def inflight(self) -> int:
        """QoS 1 publishes not acknowledged yet."""
        return len(self._inflight)

    async def __aenter__(self) -> WireClient:
        await self.connect()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.disconnect()

    # -- publishing ---------------------------------------------------------------------

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1,
                       retain: bool = False) -> None:
        """Frame one PUBLISH now; ``WireError`` if the connection is gone or QoS 1 would
        exceed the in-flight window (nothing is framed then)."""
        if self._error is not None:
            raise self._error
        inflight = self._inflight
        if qos and len(inflight) >= self.max_inflight:
            raise WireError(f"in-flight window full ({self.max_inflight})")
        enc = self._topics.get(topic)
        if enc is None:
            enc = self._topics[topic] = _utf8(topic)
        n = len(enc) + len(self._props) + len(payload)
        out = self._out
        if qos == 1:
            pid = self._next_pid
            while pid in inflight:
                pid = pid % 0xFFFF + 1
            self._next_pid = pid % 0xFFFF + 1
            inflight.add(pid)
            out.append(0x32 | retain)
            n += 2
            out += _LENGTHS[n] if n < 16384 else _varint(n)
            out += enc
            out += pid.to_bytes(2, "big")
        elif qos == 0:
            out.append(0x30 | retain)
            out += _LENGTHS[n] if n < 16384 else _varint(n)
            out += enc
        else:
            raise ValueError("WireClient publishes at QoS 0 or 1")
        out += self._props
        out += payload
        self.sent += 1
        if len(out) >= _OUT_HIGH_WATER:
            self._write_out()
        elif self._flush_handle is None:
            assert self._loop is not None
            self._flush_handle = self._loop.call_soon(self._write_out)

    async def publish(self, topic: str, payload: bytes, qos: int = 1,
                      retain: bool = False) -> None:
        """Frame one PUBLISH, first waiting for in-flight and write-buffer room."""
        if self._paused or (qos and len(self._inflight) >= self.max_inflight):
            await self._room(qos)
        self.publish_nowait(topic, payload, qos, retain)

    async def publish_many(self, items: Iterable[tuple[str, bytes]], qos: int = 1,
                           retain: bool = False) -> None:
        """Publish (topic, payload) pairs in order, waiting for room as ``publish`` does."""
        publish = self.publish_nowait
        inflight = self._inflight
        limit = self.max_inflight if qos else 1 << 62
        for topic, payload in items:
            if self._paused or len(inflight) >= limit:
                await self._room(qos)
            publish(topic, payload, qos, retain)

    async def flush(self) -> None:
        """Write what is buffered and wait until every QoS 1 publish is acknowledged."""
        self._write_out()
        while self._inflight and self._error is None:
            await self._wait()
        if self._error is not None:
            raise self._error

    async def _room(self, qos: int) -> None:
        self._write_out()
        while self._error is None and (
                self._paused or (qos and len(self._inflight) >= self.max_inflight)):
            await self._wait()
        if self._error is not None:
            raise self._error

    async def _wait(self) -> None:
        if self._progress is None:
            assert self._loop is not None
            self._progress = self._loop.create_future()
        await self._progress

    def _wake(self) -> None:
        if self._progress is not None:
            if not self._progress.done():
                self._progress.set_result(None)
            self._progress = None

    def _write_out(self) -> None:
        self._flush_handle = None
        if self._out and self._transport is not None:
            self._transport.write(self._out)
            self._out = bytearray()
            assert self._loop is not None
            self._last_tx = self._loop.time()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    # -- receiving ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        assert self._loop is not None
        self._last_rx = self._loop.time()
        if self._rx:
            data, self._rx = self._rx + data, b""
        n = len(data)
        # the common case under load: nothing but 4-byte PUBACKs
        if n % 4 == 0 and data[0::4] == b"\x40" * (n // 4) \
                and data[1::4] == b"\x02" * (n // 4):
            pids = array("H", data)
            if sys.byteorder == "little":
                pids.byteswap()
            self._acks(pids[1::2])
            return
        pos = 0
        while n - pos >= 2:
            try:
                got = _read_varint(data, pos + 1, n)
            except ValueError:
                self._protocol_error("malformed remaining length")
                return
            if got is None:
                break  # length incomplete
            length, i = got
            if i + length > n:
                break
            self._packet(data[pos], data[i:i + length])
            pos = i + length
        self._rx = data[pos:]

    def _acks(self, pids: Iterable[int]) -> None:
        before = len(self._inflight)
        self._inflight.difference_update(pids)
        self.acked += before - len(self._inflight)
        self._wake()

    def _packet(self, header: int, body: bytes) -> None:
        kind = header >> 4
        if kind == 4 and len(body) >= 2:  # PUBACK
            if len(body) > 2 and body[2] >= 0x80:
                self.rejected += 1
            self._acks((int.from_bytes(body[:2], "big"),))
        elif kind == 2 and len(body) >= 2:  # CONNACK
            self._on_connack(body)
        elif kind == 13:  # PINGRESP
            pass
        elif kind == 14 and self.protocol == 5:  # server DISCONNECT
            code = body[0] if body else 0
            props, _ = _properties(body, 1) if len(body) > 1 else ({}, 1)
            detail = f": {props[0x1F][2:].decode(errors='replace')}" if 0x1F in props else ""
            self._fail(WireError(f"disconnected by the server: "
                                 f"{_reason(code, 5)}{detail}", code))
        else:
            self._protocol_error(f"unexpected packet type {kind}")

    def _on_connack(self, body: bytes) -> None:
        assert self._connack is not None and self._loop is not None
        code = body[1]
        props = _properties(body, 2)[0] if self.protocol == 5 and len(body) > 2 else {}
        if code:
            detail = f": {props[0x1F][2:].decode(errors='replace')}" if 0x1F in props else ""
            err = WireError(f"connection refused: {_reason(code, self.protocol)}{detail}",
                            code)
            self._error = err
            if not self._connack.done():
                self._connack.set_exception(err)
            self._drop()
            return
        if 0x21 in props:  # Receive Maximum: the server's cap on our QoS 1 in flight
            self.max_inflight = min(self.max_inflight, int.from_bytes(props[0x21], "big"))
        if 0x13 in props:  # Server Keep Alive overrides ours
            self.keepalive_s = int.from_bytes(props[0x13], "big")
        self._last_tx = self._last_rx = self._loop.time()
        if self.keepalive_s:
            self._ping_handle = self._loop.call_later(self.keepalive_s / 2, self._keepalive)
        if not self._connack.done():
            self._connack.set_result(None)

    def _keepalive(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if now - self._last_rx > 1.5 * self.keepalive_s:
            self._fail(WireError(f"no answer from the server for {now - self._last_rx:.0f} s"))
            return
        if max(now - self._last_tx, now - self._last_rx) >= self.keepalive_s / 2:
            self._out += _PINGREQ
            self._write_out()
        self._ping_handle = self._loop.call_later(self.keepalive_s / 2, self._keepalive)

    def _protocol_error(self, what: str) -> None:
        self._fail(WireError(f"protocol error from the server: {what}"))

    def _fail(self, err: WireError) -> None:
        self._error = err
        self._drop()
        self._wake()
