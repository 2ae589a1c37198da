"""Beidou/GNSS terminals driving loops around Yantai port, publishing NMEA over MQTT.

Each terminal is its own MQTT client (client id = device id) with a retained
``online`` status and an ``offline`` last will, and publishes one message per epoch
holding RMC, GGA, GSA and GSV sentences, as vehicle terminals do.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiomqtt

from beiflow.devices.simulators.nmea_encode import Satellite, gga, gsa, gsv, rmc

EARTH_RADIUS_M = 6_371_008.8

#: A loop through Yantai port: main gate, container yard, berths, quay road (lat, lon).
YANTAI_LOOP: tuple[tuple[float, float], ...] = (
    (37.54705, 121.38420),
    (37.55080, 121.38900),
    (37.55410, 121.39520),
    (37.55930, 121.40180),
    (37.56350, 121.39810),
    (37.56120, 121.39070),
    (37.55640, 121.38560),
    (37.55020, 121.38130),
)

#: Talker of each terminal model: older BDS-only units (BD), NMEA 4.11 (GB), multi-GNSS (GN).
TALKERS: tuple[str, ...] = ("GN", "BD", "GB", "GN", "GP")


@dataclass(slots=True)
class Route:
    """A closed polyline walked at a given speed."""

    points: Sequence[tuple[float, float]]
    _legs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        pts = list(self.points)
        self._legs = [_distance_m(a, b) for a, b in zip(pts, pts[1:] + pts[:1], strict=True)]

    @property
    def length_m(self) -> float:
        """Total loop length."""
        return sum(self._legs)

    def at(self, s_m: float) -> tuple[float, float, float]:
        """Position (lat, lon) and course in degrees at arc length ``s_m`` along the loop."""
        s = s_m % self.length_m
        pts = list(self.points)
        for i, leg in enumerate(self._legs):
            if s <= leg:
                a, b = pts[i], pts[(i + 1) % len(pts)]
                f = s / leg if leg else 0.0
                lat = a[0] + (b[0] - a[0]) * f
                lon = a[1] + (b[1] - a[1]) * f
                return lat, lon, _bearing_deg(a, b)
            s -= leg
        a, b = pts[-1], pts[0]
        return b[0], b[1], _bearing_deg(a, b)


def _distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    la1, lo1, la2, lo2 = map(math.radians, (*a, *b))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin(
        (lo2 - lo1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def _bearing_deg(a: tuple[float, float], b: tuple[float, float]) -> float:
    la1, lo1, la2, lo2 = map(math.radians, (*a, *b))
    y = math.sin(lo2 - lo1) * math.cos(la2)
    x = math.cos(la1) * math.sin(la2) - math.sin(la1) * math.cos(la2) * math.cos(lo2 - lo1)
    return math.degrees(math.atan2(y, x)) % 360


@dataclass(slots=True)
class Terminal:
    """One simulated Beidou vehicle terminal."""

    device_id: str
    talker: str
    route: Route
    s_m: float
    speed_mps: float
    rng: random.Random

    def epoch(self, t: datetime, dt_s: float) -> bytes:
        """Advance by ``dt_s`` and return this epoch's sentences, CRLF-separated."""
        # port traffic: mostly under the 30 km/h port limit, now and then over a yard's 20
        self.speed_mps = min(7.5, max(1.0, self.speed_mps + self.rng.gauss(0, 0.2)))
        self.s_m += self.speed_mps * dt_s
        lat, lon, course = self.route.at(self.s_m)
        hdop = round(self.rng.uniform(0.6, 1.4), 2)
        sigma_m = 1.5 * hdop  # position noise grows with HDOP
        lat += self.rng.gauss(0, sigma_m) / 111_320
        lon += self.rng.gauss(0, sigma_m) / (111_320 * math.cos(math.radians(lat)))
        sats = self._sky()
        used = [s.prn for s in sats if s.cn0_dbhz is not None and s.cn0_dbhz >= 30]
        talker = self.talker
        lines = [
            rmc(talker, t, lat, lon, self.speed_mps, course),
            gga(talker, t, lat, lon, 1, len(used), hdop, 8.0 + self.rng.gauss(0, 0.5)),
            gsa(talker, used, round(hdop * 1.6, 2), hdop, round(hdop * 1.3, 2),
                4 if talker in ("BD", "GB") else None),
            *gsv("GB" if talker == "GN" else talker, sats, "1" if talker != "BD" else None),
        ]
        return ("\r\n".join(lines) + "\r\n").encode("ascii")

    def _sky(self) -> list[Satellite]:
        return [
            Satellite(prn, self.rng.randint(10, 85), self.rng.randint(0, 359),
                      self.rng.randint(28, 46) if self.rng.random() > 0.05 else None)
            for prn in range(1, self.rng.randint(8, 14))
        ]


def make_terminals(n: int, *, seed: int, prefix: str = "bds") -> list[Terminal]:
    """``n`` terminals spread along the Yantai loop, deterministic for a seed."""
    rng = random.Random(seed)
    route = Route(YANTAI_LOOP)
    return [
        Terminal(
            device_id=f"{prefix}-{i:04d}",
            talker=TALKERS[i % len(TALKERS)],
            route=route,
            s_m=rng.uniform(0, route.length_m),
            speed_mps=rng.uniform(3, 6),
            rng=random.Random(rng.getrandbits(64)),
        )
        for i in range(n)
    ]


@dataclass(slots=True)
class SimStats:
    """What the simulator published."""

    messages: int = 0
    errors: int = 0


async def _drive(term: Terminal, *, host: str, port: int, topic: str, status: str,
                 rate_hz: float, until: float, qos: int, stats: SimStats,
                 username: str | None, password: str | None) -> None:
    will = aiomqtt.Will(status, b"offline", qos=1, retain=True)
    loop = asyncio.get_running_loop()
    async with aiomqtt.Client(host, port, identifier=term.device_id, will=will,
                              username=username, password=password) as client:
        await client.publish(status, b"online", qos=1, retain=True)
        period = 1.0 / rate_hz
        next_at = loop.time()
        while next_at < until:
            await client.publish(topic, term.epoch(datetime.now(UTC), period), qos=qos)
            stats.messages += 1
            next_at += period
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        await client.publish(status, b"offline", qos=1, retain=True)


async def run_terminals(terminals: Sequence[Terminal], *, host: str, port: int, root: str,
                        site: str, rate_hz: float, duration_s: float, qos: int = 1,
                        username: str | None = None, password: str | None = None) -> SimStats:
    """Drive every terminal concurrently for ``duration_s`` seconds."""
    stats = SimStats()
    until = asyncio.get_running_loop().time() + duration_s

    async def one(term: Terminal) -> None:
        base = f"{root}/{site}/{term.device_id}"
        try:
            await _drive(term, host=host, port=port, topic=f"{base}/nmea",
                         status=f"{base}/status", rate_hz=rate_hz, until=until, qos=qos,
                         stats=stats, username=username, password=password)
        except aiomqtt.MqttError:
            stats.errors += 1
            raise

    await asyncio.gather(*(one(t) for t in terminals))
    return stats
