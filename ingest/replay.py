"""Publish a recorded NMEA log as one device, one MQTT message per epoch, in order."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from beiflow.ingest.config import MqttUrl


class PublishError(RuntimeError):
    """The broker did not accept what we published."""


def publish_in_order(url: MqttUrl, topic: str, payloads: Sequence[bytes], *, rate_hz: float,
                     qos: int = 1, window: int = 1000, client_id: str = "",
                     connect_timeout_s: float = 10.0) -> int:
    """Publish ``payloads`` to ``topic`` at ``rate_hz`` (0: as fast as the broker takes them).

    At most ``window`` messages are outstanding: paho silently drops QoS>0 messages
    beyond its queue while ``publish()`` still reports success, so we wait for the
    oldest before queueing more. Returns the number of messages the broker acknowledged.
    Raises ``PublishError`` when the broker refuses the connection or (MQTT v5) answers a
    publish with a failure reason such as "Not authorized".
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    url.configure(client)  # credentials; TLS verifying the broker's certificate
    client.max_inflight_messages_set(min(window, 65535))
    connected = threading.Event()
    refused: list[str] = []
    denied: list[str] = []

    def on_connect(_c: object, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        if reason.is_failure:
            refused.append(f"broker refused the connection: {reason}")
        connected.set()

    def on_publish(_c: object, _u: object, _mid: int, reason: ReasonCode, _p: object) -> None:
        if reason.is_failure and not denied:
            denied.append(str(reason))

    def on_disconnect(_c: object, _u: object, _f: object, reason: ReasonCode,
                      _p: object) -> None:
        if not connected.is_set():  # e.g. the broker rejected our client certificate
            refused.append(f"connection closed before CONNACK ({reason})")
            connected.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_publish = on_publish
    try:
        client.connect(url.host, url.port, keepalive=30)
    except OSError as exc:
        raise PublishError(f"cannot connect to {url.host}:{url.port}: {exc}") from exc
    client.loop_start()
    pending: collections.deque[mqtt.MQTTMessageInfo] = collections.deque()
    done = 0
    try:
        if not connected.wait(connect_timeout_s) or refused:
            raise PublishError(refused[0] if refused
                               else f"no CONNACK within {connect_timeout_s:g} s")
        start = time.perf_counter()
        for i, payload in enumerate(payloads):
            if rate_hz > 0:
                delay = start + i / rate_hz - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            info = client.publish(topic, payload, qos=qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise PublishError(f"publish failed: {mqtt.error_string(info.rc)}")
            pending.append(info)
            while len(pending) >= window:
                _settle(pending.popleft())
                done += 1
        while pending:
            _settle(pending.popleft())
            done += 1
        if denied:
            raise PublishError(f"broker rejected messages: {denied[0]}")
    finally:
        client.disconnect()
        client.loop_stop()
    return done


def _settle(info: mqtt.MQTTMessageInfo, timeout_s: float = 30.0) -> None:
    info.wait_for_publish(timeout=timeout_s)
    if not info.is_published():
        raise PublishError(f"broker did not acknowledge within {timeout_s:g} s")
