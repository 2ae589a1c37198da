"""Publish a recorded NMEA log as one device, one MQTT message per epoch, in order."""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from beiflow.ingest.config import MqttUrl


class PublishError(RuntimeError):
    """The broker did not accept what we published."""


def publish_in_order(url: MqttUrl, topic: str, payloads: Sequence[bytes], *, rate_hz: float,
                     qos: int = 1, window: int = 1000, client_id: str = "") -> int:
    """Publish ``payloads`` to ``topic`` at ``rate_hz`` (0: as fast as the broker takes them).

    At most ``window`` messages are outstanding: paho silently drops QoS>0 messages
    beyond its queue while ``publish()`` still reports success, so we wait for the
    oldest before queueing more. Returns the number of messages the broker acknowledged.
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    if url.username:
        client.username_pw_set(url.username, url.password)
    if url.tls:
        client.tls_set()
    client.max_inflight_messages_set(min(window, 65535))
    client.connect(url.host, url.port, keepalive=30)
    client.loop_start()
    pending: collections.deque[mqtt.MQTTMessageInfo] = collections.deque()
    done = 0
    try:
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
    finally:
        client.disconnect()
        client.loop_stop()
    return done


def _settle(info: mqtt.MQTTMessageInfo, timeout_s: float = 30.0) -> None:
    info.wait_for_publish(timeout=timeout_s)
    if not info.is_published():
        raise PublishError(f"broker did not acknowledge within {timeout_s:g} s")
