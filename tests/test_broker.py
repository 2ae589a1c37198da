"""The private broker keeps persistent sessions across a restart."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from beiflow.ingest.broker import PrivateBroker
from beiflow.ingest.config import parse_mqtt_url
from beiflow.ingest.replay import publish_in_order


def _session(url: str, got: list[bytes], ready: threading.Event) -> mqtt.Client:
    u = parse_mqtt_url(url)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="persist-1", protocol=mqtt.MQTTv5)
    c.on_message = lambda _c, _u, m: got.append(m.payload)
    c.on_subscribe = lambda *_a: ready.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect(u.host, u.port, clean_start=False, properties=props)
    c.loop_start()
    return c


def test_queued_messages_survive_a_broker_restart() -> None:
    broker = PrivateBroker().start()
    try:
        got: list[bytes] = []
        ready = threading.Event()
        c = _session(broker.url, got, ready)
        c.subscribe("persist/#", qos=1)
        assert ready.wait(10)
        c.disconnect()
        c.loop_stop()
        publish_in_order(parse_mqtt_url(broker.url), "persist/a", [b"one", b"two"], rate_hz=0)
        broker.stop()
        broker.start()  # same port and persistence directory
        c = _session(broker.url, got, threading.Event())
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        c.disconnect()
        c.loop_stop()
        assert got == [b"one", b"two"]
    finally:
        broker.close()
