"""A deterministic multi-constellation NMEA log for end-to-end tests, and its oracle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pynmea2

from beiflow.devices.simulators.beidou import make_terminals


def make_log(epochs: int, *, start: datetime, seed: int = 3, device: int = 0) -> bytes:
    """``epochs`` one-second epochs (RMC, GGA, GSA, GSV) of one simulated terminal."""
    term = make_terminals(device + 1, seed=seed)[device]
    return b"".join(term.epoch(start + timedelta(seconds=i, milliseconds=250), 1.0)
                    for i in range(epochs))


def expected_fixes(log: bytes) -> list[tuple[datetime, float, float, float]]:
    """(time, lat, lon, speed m/s) per RMC, computed by pynmea2, independent of beiflow."""
    out = []
    for line in log.decode().splitlines():
        msg = pynmea2.parse(line, check=True)
        if msg.sentence_type == "RMC":
            t = datetime.combine(msg.datestamp, msg.timestamp).replace(tzinfo=UTC)
            out.append((t, msg.latitude, msg.longitude, float(msg.spd_over_grnd) * 1852 / 3600))
    return out
