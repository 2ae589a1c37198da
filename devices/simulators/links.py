"""How simulated devices reach the broker: one connection per device, or multiplexed.

* ``DeviceLinks``: every device is its own MQTT client, as in the field: client id = device
  id, optional login, a last will ``offline`` (retained) on its status topic and a retained
  ``online`` after connecting. ``silence`` drops a device's socket without DISCONNECT, so
  the broker publishes the will, as a device that loses power does; ``resume`` reconnects.
* ``MuxLinks``: devices share a few connections (load tests: the broker and the pipeline
  see the same topics and payloads, but there is one client id, and no will, per
  connection). ``silence`` just stops the device's messages; the pipeline notices by
  the silence alone.

Both publish a tick's messages in order per device and wait for PUBACKs only through the
in-flight window, so a slow broker slows the simulator instead of growing its memory.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from beiflow.devices.simulators.mqttwire import Will, WireClient, WireError


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect (credentials never printed)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    qos: int = 1

    def client(self, client_id: str, will: Will | None = None,
               max_inflight: int = 1000) -> WireClient:
        """A not yet connected client for ``client_id``."""
        return WireClient(self.host, self.port, client_id=client_id, username=self.username,
                          password=self.password, will=will, ssl=self.tls,
                          max_inflight=max_inflight)


def tls_context(ca_file: str | None, cert_file: str | None = None,
                key_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context that verifies the broker (``ca_file`` or the system store)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


@dataclass(frozen=True, slots=True)
class Message:
    """One publication of one device."""

    device: str
    topic: str
    payload: bytes
    retain: bool = False


class DeviceLinks:
    """One MQTT connection per device, each with its own client id and last will."""

    def __init__(self, endpoint: Endpoint, status_topics: dict[str, str],
                 connect_concurrency: int = 200) -> None:
        self._ep = endpoint
        self._status = status_topics
        self._clients: dict[str, WireClient] = {}
        self._gate = asyncio.Semaphore(connect_concurrency)

    async def open(self) -> None:
        """Connect every device (bounded concurrency) and announce it online."""
        await asyncio.gather(*(self._connect(d) for d in self._status))

    async def _connect(self, device: str) -> None:
        topic = self._status[device]
        client = self._ep.client(device, Will(topic, b"offline", qos=1, retain=True),
                                 max_inflight=100)
        async with self._gate:
            await client.connect()
        client.publish_nowait(topic, b"online", qos=1, retain=True)
        self._clients[device] = client

    async def send(self, messages: Sequence[Message]) -> None:
        """Publish each message on its device's own connection."""
        qos = self._ep.qos
        for m in messages:
            client = self._clients.get(m.device)
            if client is None:
                continue  # silenced
            try:
                await client.publish(m.topic, m.payload, qos, m.retain)
            except WireError:
                self._clients.pop(m.device, None)  # not flushed again by close()
                raise

    async def silence(self, device: str) -> None:
        """Drop the device's connection without DISCONNECT: its will says offline."""
        client = self._clients.pop(device, None)
        if client is not None:
            await client.flush()
            client.abort()

    async def resume(self, device: str) -> None:
        """Reconnect a silenced device."""
        if device not in self._clients:
            await self._connect(device)

    async def close(self) -> None:
        """Flush, publish ``offline`` and disconnect cleanly."""
        async def one(device: str, client: WireClient) -> None:
            client.publish_nowait(self._status[device], b"offline", qos=1, retain=True)
            await client.flush()
            await client.disconnect()

        await asyncio.gather(*(one(d, c) for d, c in self._clients.items()))
        self._clients.clear()


class MuxLinks:
    """Devices multiplexed over ``connections`` MQTT connections (load tests)."""

    def __init__(self, endpoint: Endpoint, status_topics: dict[str, str], connections: int,
                 client_prefix: str = "beiflow-sim") -> None:
        self._ep = endpoint
        self._status = status_topics
        self._clients = [endpoint.client(f"{client_prefix}-{i}", max_inflight=5000)
                         for i in range(max(1, connections))]
        self._of = {d: self._clients[i % len(self._clients)] for i, d in
                    enumerate(status_topics)}
        self._silent: set[str] = set()

    async def open(self) -> None:
        """Connect and announce every device online (retained)."""
        await asyncio.gather(*(c.connect() for c in self._clients))
        for device, topic in self._status.items():
            await self._of[device].publish(topic, b"online", 1, True)

    async def send(self, messages: Sequence[Message]) -> None:
        """Publish on each device's shared connection; silenced devices are skipped."""
        qos, silent, of = self._ep.qos, self._silent, self._of
        for m in messages:
            if m.device not in silent:
                await of[m.device].publish(m.topic, m.payload, qos, m.retain)

    async def silence(self, device: str) -> None:
        """Stop the device's messages (no will on a shared connection)."""
        self._silent.add(device)

    async def resume(self, device: str) -> None:
        """Let the device's messages through again."""
        self._silent.discard(device)

    async def close(self) -> None:
        """Publish every device ``offline``, wait for the PUBACKs and disconnect."""
        for device, topic in self._status.items():
            await self._of[device].publish(topic, b"offline", 1, True)
        for c in self._clients:
            await c.flush()
            await c.disconnect()
