"""Topic layout ``{root}/{site}/{device_id}/{stream}`` and the dense device index."""

from __future__ import annotations

import re
from dataclasses import dataclass

STREAMS: tuple[str, ...] = ("nmea", "rfid", "sensor", "status")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A parsed topic: the device's dense index (or -1), its stream, or why it is invalid."""

    device: int
    stream: str
    error: str | None = None


class DeviceIndex:
    """Device id -> dense index, stable for the life of the process."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self.ids: list[str] = []
        self.sites: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, device_id: str, site: str) -> int:
        """The device's index, assigned on first sight; the latest site is remembered."""
        idx = self._index.get(device_id)
        if idx is None:
            idx = self._index[device_id] = len(self.ids)
            self.ids.append(device_id)
            self.sites.append(site)
        elif self.sites[idx] != site:
            self.sites[idx] = site
        return idx


class TopicParser:
    """Parses topics under one root, caching results (topics repeat for every message)."""

    def __init__(self, root: str, devices: DeviceIndex, *, max_cached: int = 1_000_000) -> None:
        self._prefix = root.rstrip("/") + "/"
        self._devices = devices
        self._cache: dict[bytes, TopicInfo] = {}
        self._max_cached = max_cached

    def subscription(self) -> str:
        """The wildcard filter covering every device topic."""
        return f"{self._prefix}+/+/+"

    def parse(self, topic: bytes) -> TopicInfo:
        """Parse one topic (raw UTF-8 bytes as received); invalid ones get ``device=-1``
        and an error reason."""
        info = self._cache.get(topic)
        if info is not None:
            return info
        try:
            info = self._parse(topic.decode("utf-8"))
        except UnicodeDecodeError:
            info = TopicInfo(-1, "unknown", "bad_topic")
        if len(self._cache) < self._max_cached:
            self._cache[topic] = info
        return info

    def _parse(self, topic: str) -> TopicInfo:
        if not topic.startswith(self._prefix):
            return TopicInfo(-1, "unknown", "bad_topic")
        parts = topic[len(self._prefix):].split("/")
        if len(parts) != 3:
            return TopicInfo(-1, "unknown", "bad_topic")
        site, device_id, stream = parts
        if stream not in STREAMS:
            return TopicInfo(-1, "unknown", "unknown_stream")
        if not NAME_RE.match(site) or not NAME_RE.match(device_id):
            return TopicInfo(-1, stream, "bad_device_id")
        return TopicInfo(self._devices.get(device_id, site), stream)
