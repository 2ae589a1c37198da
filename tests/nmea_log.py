"""A deterministic multi-constellation NMEA log for end-to-end tests, and its oracle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pynmea2

from beiflow.devices.simulators.gnss import ReceiverBank, ReceiverSpec

#: Where the logged terminal drives: north along the Yantai port road at 4 m/s.
_LAT0, _LON0, _SPEED = 37.5450, 121.3850, 4.0


def terminal_epochs(epochs: int, *, start: datetime, seed: int = 3,
                    device: int = 0) -> list[bytes]:
    """One message per epoch (RMC, GGA, GSA, GSV; a fix from the first) of a simulated GN
    receiver, one second apart from ``start``; ``device`` picks another receiver."""
    bank = ReceiverBank([f"log-{device}"], [ReceiverSpec("GN", frozenset({"GSA", "GSV"}))],
                        seed=seed * 7919 + device, cold_start_s=0.0, multipath_per_hour=0.0)
    one = np.zeros(1, dtype=np.int64)
    out = []
    for i in range(epochs):
        t = (start + timedelta(seconds=i)).timestamp()
        lat = np.array([_LAT0 + i * _SPEED / 111_195.0])
        payloads, _ = bank.epoch(t, one, lat, np.array([_LON0]), np.array([8.0]),
                                 np.array([_SPEED]), np.array([0.0]))
        out.append(payloads[0])
    return out


def make_log(epochs: int, *, start: datetime, seed: int = 3, device: int = 0) -> bytes:
    """``epochs`` one-second epochs of one simulated terminal, 250 ms past ``start``."""
    return b"".join(terminal_epochs(epochs, start=start + timedelta(milliseconds=250),
                                    seed=seed, device=device))


def expected_fixes(log: bytes) -> list[tuple[datetime, float, float, float]]:
    """(time, lat, lon, speed m/s) per RMC, computed by pynmea2, independent of beiflow."""
    out = []
    for line in log.decode().splitlines():
        msg = pynmea2.parse(line, check=True)
        if msg.sentence_type == "RMC":
            t = datetime.combine(msg.datestamp, msg.timestamp).replace(tzinfo=UTC)
            out.append((t, msg.latitude, msg.longitude, float(msg.spd_over_grnd) * 1852 / 3600))
    return out
