"""Topic layout ``{root}/{site}/{device_id}/{stream}`` and the dense device index."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

STREAMS: tuple[str, ...] = ("nmea", "rfid", "sensor", "status")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A parsed topic: the device's dense index (or -1), its stream, or why it is invalid."""

    device: int
    stream: str
    error: str | None = None
    detail: str | None = None


class DeviceIndex:
    """Device id -> dense index, stable for the life of the process.

    Against cardinality attacks, :meth:`refusal` turns away a new device of a site that
    already has ``max_per_site`` devices, or of a new site once ``max_sites`` sites are
    known. A device counts toward the site it was first seen under (moving neither frees
    nor takes a place, so moves cannot grow the index); devices are never evicted.
    Devices of the ``devices`` table (:meth:`preload`) count from the start and are never
    refused, so a restart followed by a flood of made-up ids cannot lock them out; they
    get an index only when seen.
    """

    def __init__(self, *, max_per_site: int | None = None, max_sites: int | None = None
                 ) -> None:
        self._index: dict[str, int] = {}
        self.ids: list[str] = []
        self.sites: list[str] = []
        self._per_site: dict[str, int] = {}
        self._known: set[str] = set()
        self._max_per_site = max_per_site
        self._max_sites = max_sites

    def __len__(self) -> int:
        return len(self.ids)

    def preload(self, devices: Iterable[tuple[str, str]]) -> None:
        """Count (device id, site) pairs the database knows toward their sites' limits."""
        for device_id, site in devices:
            if device_id not in self._known and device_id not in self._index:
                self._known.add(device_id)
                self._per_site[site] = self._per_site.get(site, 0) + 1

    def refusal(self, device_id: str, site: str) -> tuple[str, str] | None:
        """Why a message of ``device_id`` under ``site`` may not add the device (reason,
        detail), or None when the device is known or fits."""
        if device_id in self._index or device_id in self._known:
            return None
        have = self._per_site.get(site)
        if have is None:
            if self._max_sites is not None and len(self._per_site) >= self._max_sites:
                return "too_many_sites", f"{len(self._per_site)} sites known (limit)"
        elif self._max_per_site is not None and have >= self._max_per_site:
            return "too_many_devices", f"site {site!r} has {have} devices (limit)"
        return None

    def get(self, device_id: str, site: str) -> int:
        """The device's index, assigned on first sight (no limit: for devices the
        database knows); the latest site is remembered."""
        idx = self._index.get(device_id)
        if idx is None:
            idx = self._index[device_id] = len(self.ids)
            self.ids.append(device_id)
            self.sites.append(site)
            if device_id not in self._known:  # preloaded devices are counted already
                self._per_site[site] = self._per_site.get(site, 0) + 1
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
        """Parse one topic (raw UTF-8 bytes as received); invalid or refused ones get
        ``device=-1`` and an error reason. Only accepted topics are cached, so junk
        topics cannot fill the cache."""
        info = self._cache.get(topic)
        if info is not None:
            return info
        try:
            info = self._parse(topic.decode("utf-8"))
        except UnicodeDecodeError:
            info = TopicInfo(-1, "unknown", "bad_topic")
        if info.error is None and len(self._cache) < self._max_cached:
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
        if not NAME_RE.fullmatch(site) or not NAME_RE.fullmatch(device_id):
            return TopicInfo(-1, stream, "bad_device_id")
        refused = self._devices.refusal(device_id, site)
        if refused is not None:
            return TopicInfo(-1, stream, *refused)
        return TopicInfo(self._devices.get(device_id, site), stream)
