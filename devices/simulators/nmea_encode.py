"""NMEA 0183 sentence encoding, as Beidou/GNSS terminals emit it (4.10/4.11 field layout)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import reduce

KNOTS_PER_MPS = 3600 / 1852


def checksum(body: str) -> str:
    """XOR of the bytes between ``$`` and ``*``, two upper-case hex digits."""
    return f"{reduce(lambda a, b: a ^ b, body.encode('ascii'), 0):02X}"


def sentence(body: str) -> str:
    """``$body*CS``."""
    return f"${body}*{checksum(body)}"


_MINUTE_UNITS = 10**7  # seven decimals of a minute: about 0.2 mm


def _ddmm(value: float, deg_width: int) -> str:
    total = round(abs(value) * 60 * _MINUTE_UNITS)  # integer arithmetic: no "60.0000000"
    deg, rest = divmod(total, 60 * _MINUTE_UNITS)
    minutes, frac = divmod(rest, _MINUTE_UNITS)
    return f"{deg:0{deg_width}d}{minutes:02d}.{frac:07d}"


def _lat(lat: float) -> tuple[str, str]:
    return _ddmm(lat, 2), "N" if lat >= 0 else "S"


def _lon(lon: float) -> tuple[str, str]:
    return _ddmm(lon, 3), "E" if lon >= 0 else "W"


def _hms(t: datetime) -> str:
    return f"{t:%H%M%S}.{t.microsecond // 10_000:02d}"


@dataclass(frozen=True, slots=True)
class Satellite:
    """One tracked satellite as GSV reports it."""

    prn: int
    elevation_deg: int
    azimuth_deg: int
    cn0_dbhz: int | None


def gga(talker: str, t: datetime, lat: float | None, lon: float | None, quality: int,
        sats: int, hdop: float, alt_m: float, geoid_sep_m: float = 9.5) -> str:
    """Fix data; empty position fields when there is no fix."""
    if lat is None or lon is None or quality == 0:
        return sentence(f"{talker}GGA,{_hms(t)},,,,,0,{sats:02d},99.99,,,,,,")
    la, ns = _lat(lat)
    lo, ew = _lon(lon)
    return sentence(f"{talker}GGA,{_hms(t)},{la},{ns},{lo},{ew},{quality},{sats:02d},"
                    f"{hdop:.2f},{alt_m:.1f},M,{geoid_sep_m:.1f},M,,")


def rmc(talker: str, t: datetime, lat: float | None, lon: float | None, speed_mps: float,
        course_deg: float) -> str:
    """Recommended minimum data, NMEA 4.10 (mode indicator and navigational status)."""
    if lat is None or lon is None:
        return sentence(f"{talker}RMC,{_hms(t)},V,,,,,,,{t:%d%m%y},,,N,V")
    la, ns = _lat(lat)
    lo, ew = _lon(lon)
    return sentence(f"{talker}RMC,{_hms(t)},A,{la},{ns},{lo},{ew},"
                    f"{speed_mps * KNOTS_PER_MPS:.3f},{course_deg:.2f},{t:%d%m%y},,,A,V")


def gsa(talker: str, prns: list[int], pdop: float, hdop: float, vdop: float,
        system_id: int | None = None) -> str:
    """DOP and active satellites (12 slots); NMEA 4.11 appends the GNSS system id."""
    slots = [f"{p:02d}" for p in prns[:12]] + [""] * (12 - min(len(prns), 12))
    tail = f",{system_id}" if system_id is not None else ""
    return sentence(f"{talker}GSA,A,3,{','.join(slots)},{pdop:.2f},{hdop:.2f},{vdop:.2f}{tail}")


def gsv(talker: str, sats: list[Satellite], signal_id: str | None = None) -> list[str]:
    """Satellites in view, four per sentence; NMEA 4.10 appends the signal id."""
    groups = [sats[i:i + 4] for i in range(0, len(sats), 4)] or [[]]
    out = []
    for n, group in enumerate(groups, 1):
        fields = "".join(
            f",{s.prn:02d},{s.elevation_deg:02d},{s.azimuth_deg:03d},"
            + ("" if s.cn0_dbhz is None else f"{s.cn0_dbhz:02d}")
            for s in group
        )
        tail = f",{signal_id}" if signal_id is not None else ""
        out.append(sentence(f"{talker}GSV,{len(groups)},{n},{len(sats):02d}{fields}{tail}"))
    return out


def zda(talker: str, t: datetime) -> str:
    """UTC date and time."""
    return sentence(f"{talker}ZDA,{_hms(t)},{t:%d},{t:%m},{t:%Y},00,00")
