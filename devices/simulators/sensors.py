"""Grid and cold-chain sensor nodes publishing ``schemas/sensor.json`` payloads, with
labelled fault injection.

Sampling: node ``i`` samples every ``period_s`` (default 10 s) at its own phase, sample
``k`` at ``start + phase_i + k * period_s`` (whole milliseconds), and publishes
``per_message`` samples per message (1: the single-sample form, more: the batch form).
Sample ``k`` of node ``i`` is a pure function of the seed, ``i``, ``k`` and the scheduled
injections: the measurement noise comes from a counter-based hash (splitmix64) of
(seed, node, sample, metric), bounded at 3 standard deviations (sum of three uniforms).
So the bytes do not depend on how often, or for which subsets, :meth:`sample` is called,
and an injection can compute exactly when its effect crosses a detector's rule.

* :class:`GridNodes`: substation transformers and line nodes (a device id containing
  ``line`` is a line node). ``current_a`` follows a daily load profile in Asia/Shanghai
  local time (UTC+8 all year): night low near 04:00, a morning peak near 10:00 and an
  evening peak near 19:30, as a truncated Fourier series, scaled per node (rated 150 to
  600 A) and shifted up to 30 min. ``voltage_v`` is a ~230 V phase voltage sagging by
  ~6 V at full load. ``transformer_temp_c`` (top oil: ambient plus a rise following the
  load through a 2.5 h thermal lag) or ``line_temp_c`` (conductor: 20 min lag). Grid
  temperatures end in ``_temp_c`` but are not ``temp_c``: the default ``temp_c`` rule is
  the 2..8 degC cold-chain band.
* :class:`Reefers`: refrigerated containers. ``temp_c`` (cargo probe) cycles
  +-0.25 degC around a set point of 3.5..6 degC (compressor on: cooling 0.75 degC/h,
  off: warming 0.5 degC/h), ``humidity_pct`` 85..92 % drops while the compressor runs,
  ``door_open`` 0/1 with short normal openings (30..240 s, a quarter of the hours) that
  warm the cargo by 1 degC/h while open.

Limits: no weather, no switching events, no phase imbalance; the reefer temperature is
the slow cargo probe, not the fast supply-air sensor. Normal signals are designed to
raise nothing under the pipeline's default rules (``processing.config``): the statistical
detector learns per sample (EWMA weight 0.05), so every slope stays below 0.05 noise
standard deviations per sample at 10 s sampling; sampling much slower than that scales
the slopes per sample up and can make ordinary load changes ``statistical`` anomalies.
No ``compressor_on`` metric: the default rules would score a 0/1 state statistically.

Injections return the labels the pipeline should produce with its default rules, at the
time its detector stamps (see each method): grid ``spike`` -> ``statistical`` at the spike,
``drift`` -> ``statistical`` ~7 samples in (+-4), ``stuck`` (temperatures, for good) ->
``stuck`` after the rule's 3600 s / 60 samples; reefer ``excursion`` ->
``cold_chain_excursion`` after 1800 s outside 2..8 degC, ``door_open`` -> ``door_open``
after 300 s open. Injections on one node must not overlap,
including the time the detectors need to settle afterwards (``ValueError`` otherwise),
and must start after the statistical warm-up (40 samples).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np

from beiflow.devices.simulators.labels import Label
from beiflow.processing.config import SensorConfig, SensorRule

#: Asia/Shanghai: UTC+8, no daylight saving since 1991.
SHANGHAI = timezone(timedelta(hours=8))
_HOUR_MS = 3_600_000
#: Samples a node must have sent before an injection (statistical warm-up is 30).
WARMUP_SAMPLES = 40
_DEFAULT_RULES = SensorConfig()


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(seed: int, dev: np.ndarray, k: np.ndarray, channel: int) -> np.ndarray:
    """Uniform [0, 1) draws, a pure function of (seed, dev, k, channel)."""
    x = _mix(np.full(dev.shape, seed & (2**64 - 1), dtype=np.uint64) + dev.astype(np.uint64))
    x = _mix(x + k.astype(np.uint64))
    x = _mix(x + np.uint64(channel))
    return (x >> np.uint64(11)).astype(np.float64) / 2.0**53


def _noise(seed: int, dev: np.ndarray, k: np.ndarray, channel: int) -> np.ndarray:
    """Unit-variance noise bounded at +-sqrt(6): the sum of two uniforms (triangular)."""
    a = np.sqrt(1.5)
    return a * (2.0 * _uniform(seed, dev, k, 2 * channel) - 1.0) + a * (
        2.0 * _uniform(seed, dev, k, 2 * channel + 1) - 1.0)


def _profile_series(harmonics: int = 8) -> np.ndarray:
    """Complex Fourier coefficients (per day) of the daily load, fraction of rated."""
    h = np.arange(1440) / 60.0

    def bump(centre: float, width: float) -> np.ndarray:
        d = (h - centre + 12.0) % 24.0 - 12.0
        return np.exp(-0.5 * (d / width) ** 2)

    load = 0.40 + 0.35 * bump(10.0, 2.2) + 0.50 * bump(19.5, 2.0)
    c = np.fft.rfft(load)[: harmonics + 1] / load.size
    c[1:] *= 2.0
    return c


_LOAD = _profile_series()


def daily_load(hour: np.ndarray, lag_h: float = 0.0) -> np.ndarray:
    """Load as a fraction of rated at local ``hour`` (0..24, any real), optionally passed
    through a first-order lag with time constant ``lag_h`` hours (exact per harmonic)."""
    n = np.arange(_LOAD.size)
    c = _LOAD / (1.0 + 1j * 2.0 * np.pi * n * lag_h / 24.0)
    return np.real(np.exp(2j * np.pi * np.outer(hour, n) / 24.0) @ c)


@dataclass(frozen=True, slots=True)
class _Injection:
    """A scheduled fault on one node's metric ``slot``, samples ``k0 <= k < k1``."""

    kind: str  # spike | drift | stuck | warm (temperature bump) | door
    device: int
    slot: int
    k0: int
    k1: int
    value: float  # spike size, drift per sample, frozen value, warming degC per hour


class _Fleet:
    """Shared sampling, batching, payload and injection machinery of a node fleet."""

    #: Decimals of each metric slot (names per node: :meth:`metric_names`).
    decimals: tuple[int, ...] = ()
    #: Noise standard deviation per node and metric slot.
    sigma: np.ndarray

    def __init__(self, device_ids: list[str], *, seed: int, start: float,
                 period_s: float = 10.0, per_message: int = 1) -> None:
        if per_message < 1 or per_message > 1000:
            raise ValueError("per_message must be 1..1000")
        if period_s <= 0:
            raise ValueError("period_s must be > 0")
        self.device_ids = list(device_ids)
        self.seed = seed
        self.per_message = per_message
        self._rng = np.random.default_rng(seed)
        self._start_ms = round(start * 1000)
        self._period_ms = round(period_s * 1000)
        n = len(self.device_ids)
        self._phase_ms = self._rng.integers(0, self._period_ms, n)
        self._next = np.zeros(n, dtype=np.int64)
        self._injections: list[_Injection] = []
        self._busy: dict[int, list[tuple[int, int]]] = {}

    # -- subclasses -------------------------------------------------------------------

    def metric_names(self, i: int) -> tuple[str, ...]:
        """Metric name of each slot of node ``i``."""
        raise NotImplementedError

    def _clean(self, dev: np.ndarray, k: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
        """Normal values (with noise, unrounded): one row per sample, one column per slot."""
        raise NotImplementedError

    def _time_json(self, t_ms: int) -> str | int:
        raise NotImplementedError

    def _warm(self, temp: np.ndarray, dev: np.ndarray, t_ms: np.ndarray,
              inj: _Injection) -> None:
        """Apply a temperature bump (only fleets with ``warm`` injections)."""
        raise NotImplementedError

    # -- sampling ---------------------------------------------------------------------

    def index(self, device: str) -> int:
        """Dense index of ``device``."""
        return self.device_ids.index(device)

    def time_ms(self, dev: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Time (Unix ms) of sample ``k`` of node ``dev``."""
        return self._start_ms + self._phase_ms[dev] + k * self._period_ms

    def first_sample(self, i: int, t: float) -> int:
        """Index of node ``i``'s first sample at or after ``t``."""
        off = round(t * 1000) - self._start_ms - int(self._phase_ms[i])
        return max(0, -(-off // self._period_ms))

    def series(self, dev: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Reported values (rounded, injections applied) of samples ``(dev, k)``."""
        t_ms = self.time_ms(dev, k)
        x = self._clean(dev, k, t_ms)
        for inj in self._injections:
            m = dev == inj.device
            if not m.any():
                continue
            if inj.kind == "spike":
                x[m & (k == inj.k0), inj.slot] += inj.value
            elif inj.kind == "drift":
                on = m & (k >= inj.k0) & (k < inj.k1)
                x[on, inj.slot] += inj.value * (k[on] - inj.k0 + 1)
            elif inj.kind == "door":
                x[m & (k >= inj.k0) & (k < inj.k1), inj.slot] = 1.0
            elif inj.kind == "warm":
                self._warm(x[:, inj.slot], np.flatnonzero(m), t_ms, inj)
        for j, d in enumerate(self.decimals):
            x[:, j] = np.round(x[:, j], d)
        for inj in self._injections:
            if inj.kind == "stuck":
                x[(dev == inj.device) & (k >= inj.k0) & (k < inj.k1), inj.slot] = inj.value
        return x

    def sample(self, t: float, idx: np.ndarray | None = None) -> list[tuple[str, bytes]]:
        """Messages ``(device_id, payload)`` of the nodes (all, or those in ``idx``) with
        ``per_message`` samples due at wall time ``t``; samples stay pending until then."""
        dev = np.arange(len(self.device_ids)) if idx is None else np.asarray(idx, np.int64)
        last = (round(t * 1000) - self._start_ms - self._phase_ms[dev]) // self._period_ms
        msgs = np.maximum(last + 1 - self._next[dev], 0) // self.per_message
        dev, count = dev[msgs > 0], msgs[msgs > 0] * self.per_message
        if not dev.size:
            return []
        first = self._next[dev].copy()
        self._next[dev] += count
        d = np.repeat(dev, count)
        k = np.repeat(first, count) + np.arange(d.size) - np.repeat(np.cumsum(count) - count,
                                                                    count)
        x = self.series(d, k).tolist()
        t_ms = self.time_ms(d, k).tolist()
        out = []
        for s in range(0, d.size, self.per_message):
            i = int(d[s])
            names = self.metric_names(i)
            samples = [{"time": self._time_json(t_ms[r]),
                        "values": {n: (int(v) if n.endswith(("_open", "_on")) else v)
                                   for n, v in zip(names, x[r], strict=True)}}
                       for r in range(s, s + self.per_message)]
            doc: dict[str, Any] = samples[0] if self.per_message == 1 else {"samples": samples}
            out.append((self.device_ids[i], json.dumps(doc, separators=(",", ":")).encode()))
        return out

    # -- injections -------------------------------------------------------------------

    def _value(self, i: int, k: int, slot: int) -> float:
        return float(self.series(np.array([i]), np.array([k]))[0, slot])

    def _rule(self, name: str) -> SensorRule:
        rules = _DEFAULT_RULES.all_rules()
        return rules[_DEFAULT_RULES.rule_index(name)]

    def _schedule(self, inj: _Injection, quiet_until_ms: int) -> None:
        """Add ``inj`` unless it overlaps another injection's time on the same node."""
        if inj.k0 < WARMUP_SAMPLES:
            raise ValueError(f"{self.device_ids[inj.device]}: injection before sample "
                             f"{WARMUP_SAMPLES} (statistical warm-up)")
        begin = int(self.time_ms(np.array([inj.device]), np.array([inj.k0]))[0])
        busy = self._busy.setdefault(inj.device, [])
        if any(begin < end and b < quiet_until_ms for b, end in busy):
            raise ValueError(f"{self.device_ids[inj.device]}: overlaps an earlier injection")
        busy.append((begin, quiet_until_ms))
        self._injections.append(inj)

    def _t(self, i: int, k: int) -> int:
        return int(self.time_ms(np.array([i]), np.array([k]))[0])

    def _label(self, i: int, k: int, kind: str, **details: Any) -> Label:
        return Label(self._t(i, k) / 1000.0, self.device_ids[i], kind, details)

    def _held(self, i: int, slot: int, k0: int, k1: int, rule: SensorRule) -> int | None:
        """First sample in ``[k0, k1)`` at which node ``i``'s ``slot`` has been outside
        the rule's hold band for ``hold_s`` (the hold detector's firing sample)."""
        ks = np.arange(max(0, k0 - 100), k1)
        x = self.series(np.full(ks.size, i), ks)[:, slot]
        t = self.time_ms(np.full(ks.size, i), ks)
        out = (x < rule.hold_low) | (x > rule.hold_high)
        begin = out & ~np.concatenate([[False], out[:-1]])
        since = t[np.maximum.accumulate(np.where(begin, np.arange(ks.size), 0))]
        hit = np.flatnonzero(out & (t - since >= rule.hold_s * 1000) & (ks >= k0))
        return int(ks[hit[0]]) if hit.size else None


class GridNodes(_Fleet):
    """Substation and line nodes: ``voltage_v``, ``current_a`` and a temperature."""

    decimals = (2, 2, 2)

    def __init__(self, device_ids: list[str], *, seed: int, start: float,
                 period_s: float = 10.0, per_message: int = 1) -> None:
        super().__init__(device_ids, seed=seed, start=start, period_s=period_s,
                         per_message=per_message)
        n, rng = len(self.device_ids), self._rng
        self.is_line = np.array(["line" in d for d in self.device_ids], dtype=bool)
        self.rated_a = np.round(rng.uniform(150.0, 600.0, n), -1)
        self.nominal_v = rng.uniform(229.0, 233.0, n)
        self.shift_h = rng.uniform(-0.5, 0.5, n)
        self.rise_k = np.where(self.is_line, rng.uniform(8.0, 12.0, n), rng.uniform(15.0, 20.0, n))
        self.ambient_c = rng.uniform(10.0, 16.0, n)
        self.sigma = np.column_stack([np.full(n, 0.3), 0.015 * self.rated_a,
                                      np.where(self.is_line, 0.25, 0.2)])

    def metric_names(self, i: int) -> tuple[str, ...]:
        """``voltage_v``, ``current_a`` and ``line_temp_c`` or ``transformer_temp_c``."""
        temp = "line_temp_c" if self.is_line[i] else "transformer_temp_c"
        return ("voltage_v", "current_a", temp)

    def _clean(self, dev: np.ndarray, k: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
        hour = ((t_ms / _HOUR_MS + 8.0) % 24.0) + self.shift_h[dev]
        load = daily_load(hour)
        lagged = np.where(self.is_line[dev], daily_load(hour, 1 / 3), daily_load(hour, 2.5))
        ambient = self.ambient_c[dev] + 4.0 * np.sin(2 * np.pi * (hour - 9.0) / 24.0)
        rise = self.rise_k[dev] * np.where(self.is_line[dev], lagged**2, lagged**1.6)
        x = np.column_stack([self.nominal_v[dev] + 2.0 - 7.0 * load,
                             self.rated_a[dev] * load, ambient + rise])
        for j in range(3):
            x[:, j] += self.sigma[dev, j] * _noise(self.seed, dev, k, j)
        return x

    def _time_json(self, t_ms: int) -> str:
        """RFC 3339 in local time (+08:00), milliseconds."""
        t = datetime.fromtimestamp(t_ms / 1000, UTC).astimezone(SHANGHAI)
        return t.isoformat(timespec="milliseconds")

    def _slot(self, i: int, metric: str) -> int:
        names = self.metric_names(i)
        if metric not in names:
            raise ValueError(f"{self.device_ids[i]} has no metric {metric!r} ({names})")
        return names.index(metric)

    def spike(self, t: float, device: str, metric: str = "current_a") -> list[Label]:
        """One sample (the first at or after ``t``) reads 30 noise std too high: a
        ``statistical`` anomaly at that sample."""
        i = self.index(device)
        j, k = self._slot(i, metric), self.first_sample(i, t)
        size = round(30.0 * float(self.sigma[i, j]), 2)
        self._schedule(_Injection("spike", i, j, k, k + 1, size), self._t(i, k) + 600_000)
        return [self._label(i, k, "statistical", injected="spike", metric=metric, size=size)]

    def drift(self, t: float, device: str, metric: str = "voltage_v",
              duration_s: float = 300.0) -> list[Label]:
        """From ``t`` the reading drifts away by one noise std per sample for
        ``duration_s`` (60..600 s), then the node resets the sensor and reads true again.
        The statistical detector fires once its mean lags 6 std behind, about 7 samples
        in (+-4 depending on noise); the label is at the 7th drifting sample. The reset
        ends the episode: the detector's mean has hardly followed the drift."""
        if not 60.0 <= duration_s <= 600.0:
            raise ValueError("duration_s must be 60..600")
        i = self.index(device)
        j, k = self._slot(i, metric), self.first_sample(i, t)
        n = round(duration_s * 1000 / self._period_ms)
        step = float(self.sigma[i, j])
        # the reset inflates the detector's noise estimate for ~100 samples
        self._schedule(_Injection("drift", i, j, k, k + n, step), self._t(i, k + n) + 1_800_000)
        return [self._label(i, k + 6, "statistical", injected="drift", metric=metric,
                            per_s=step * 1000 / self._period_ms, since=self._t(i, k) / 1000)]

    def stuck(self, t: float, device: str) -> list[Label]:
        """The temperature (only temperatures have a default stuck rule) freezes for
        good at its reading of the first sample at or after ``t``. Label: ``stuck`` when
        the flat run has lasted the rule's ``stuck_s`` and ``stuck_samples``. No recovery:
        it would be a level shift after the noise estimate collapsed, which the
        statistical detector relearns for an hour or more, re-firing unpredictably."""
        i = self.index(device)
        j = 2
        metric = self.metric_names(i)[j]
        rule = self._rule(metric)
        k0 = self.first_sample(i, t)
        frozen = self._value(i, k0, j)
        run = k0  # the flat run starts earlier if the readings before were equal
        while run > 0 and self._value(i, run - 1, j) == frozen:
            run -= 1
        need = max(rule.stuck_samples - 1, -(-round(rule.stuck_s * 1000) // self._period_ms))
        self._schedule(_Injection("stuck", i, j, k0, 2**62, frozen), 2**62)
        return [self._label(i, run + need, "stuck", injected="stuck", metric=metric,
                            value=frozen)]


class Reefers(_Fleet):
    """Refrigerated containers: ``temp_c``, ``humidity_pct``, ``door_open``."""

    decimals = (2, 1, 0)
    #: Cargo warming while the door is open and pull-down after it, degC per hour.
    DOOR_WARM_C_PER_H = 1.0
    PULL_DOWN_C_PER_H = 1.5
    #: Normal door openings: chance per hour and duration range (s).
    DOOR_CHANCE = 0.25
    DOOR_S = (30.0, 240.0)

    def __init__(self, device_ids: list[str], *, seed: int, start: float,
                 period_s: float = 10.0, per_message: int = 1) -> None:
        super().__init__(device_ids, seed=seed, start=start, period_s=period_s,
                         per_message=per_message)
        n, rng = len(self.device_ids), self._rng
        self.setpoint_c = np.round(rng.uniform(3.5, 6.0, n), 1)
        self.humidity_pct = rng.uniform(86.5, 90.5, n)
        self._amp, self._cool, self._warm_rate = 0.25, 0.75, 0.5  # degC, degC/h
        cycle_h = 2 * self._amp / self._cool + 2 * self._amp / self._warm_rate
        self._cycle_ms = round(cycle_h * _HOUR_MS)
        self._cycle_phase = rng.integers(0, self._cycle_ms, n)
        self.sigma = np.column_stack([np.full(n, 0.1), np.full(n, 0.3), np.zeros(n)])

    def metric_names(self, i: int) -> tuple[str, ...]:
        """``temp_c``, ``humidity_pct``, ``door_open``."""
        return ("temp_c", "humidity_pct", "door_open")

    def _time_json(self, t_ms: int) -> int:
        """Epoch milliseconds."""
        return t_ms

    def _bump(self, tau_ms: np.ndarray, dur_ms: np.ndarray, rate: float) -> np.ndarray:
        """Warming at ``rate`` degC/h for ``dur_ms``, then pull-down to 0."""
        up = rate * np.minimum(np.maximum(tau_ms, 0), dur_ms) / _HOUR_MS
        down = self.PULL_DOWN_C_PER_H * np.maximum(tau_ms - dur_ms, 0) / _HOUR_MS
        return np.where(tau_ms >= 0, np.maximum(up - down, 0.0), 0.0)

    def door_openings(self, dev: np.ndarray, hour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Start (Unix ms) and duration (ms, 0 if none) of node ``dev``'s normal door
        opening in the hour ``hour`` after ``start``."""
        opens = _uniform(self.seed, dev, hour, 100) < self.DOOR_CHANCE
        lo, hi = self.DOOR_S
        dur = np.round((lo + (hi - lo) * _uniform(self.seed, dev, hour, 101)) * 1000)
        at = self._start_ms + hour * _HOUR_MS + np.round(
            _uniform(self.seed, dev, hour, 102) * (_HOUR_MS - hi * 1000))
        return at.astype(np.int64), np.where(opens, dur, 0).astype(np.int64)

    def _clean(self, dev: np.ndarray, k: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
        pos = (t_ms + self._cycle_phase[dev]) % self._cycle_ms / _HOUR_MS
        t_cool = 2 * self._amp / self._cool
        cycle = np.where(pos < t_cool, self._amp - self._cool * pos,
                         -self._amp + self._warm_rate * (pos - t_cool))
        temp = self.setpoint_c[dev] + cycle
        door = np.zeros(dev.size)
        hour = (t_ms - self._start_ms) // _HOUR_MS
        for back in (0, 1):
            at, dur = self.door_openings(dev, np.maximum(hour - back, 0))
            dur = np.where(hour - back >= 0, dur, 0)
            temp += self._bump(t_ms - at, dur, self.DOOR_WARM_C_PER_H)
            door = np.maximum(door, (t_ms >= at) & (t_ms < at + dur))
        x = np.column_stack([temp, self.humidity_pct[dev] + 4.0 * cycle, door])
        for j in range(2):
            x[:, j] += self.sigma[dev, j] * _noise(self.seed, dev, k, j)
        return x

    def _warm(self, temp: np.ndarray, rows: np.ndarray, t_ms: np.ndarray,
              inj: _Injection) -> None:
        t0 = self._t(inj.device, inj.k0)
        dur = (inj.k1 - inj.k0) * self._period_ms
        temp[rows] += self._bump(t_ms[rows] - t0, np.full(rows.size, dur), inj.value)

    def _settled_ms(self, i: int, k0: int, k1: int, rate: float) -> int:
        """When a warming from sample k0 to k1 at ``rate`` has been pulled down, plus
        10 min for the detectors."""
        dur_h = (k1 - k0) * self._period_ms / _HOUR_MS
        back_h = rate * dur_h / self.PULL_DOWN_C_PER_H
        return self._t(i, k1) + round(back_h * _HOUR_MS) + 600_000

    def excursion(self, t: float, device: str, duration_s: float = 4 * 3600.0,
                  rate_c_per_h: float = 1.5) -> list[Label]:
        """Cooling fails at ``t``: the cargo warms at ``rate_c_per_h`` for ``duration_s``,
        then is pulled down again. Label: ``cold_chain_excursion`` at the sample where
        ``temp_c`` has been outside the rule's band (2..8 degC) for its ``hold_s``
        (1800 s). Warming faster than ~2 degC/h would also be ``statistical``."""
        i = self.index(device)
        rule = self._rule("temp_c")
        k0 = self.first_sample(i, t)
        k1 = k0 + round(duration_s * 1000 / self._period_ms)
        inj = _Injection("warm", i, 0, k0, k1, rate_c_per_h)
        self._schedule(inj, self._settled_ms(i, k0, k1, rate_c_per_h))
        k = self._held(i, 0, k0, k1 + 1, rule)
        if k is None:
            self._injections.pop()
            self._busy[i].pop()
            raise ValueError(f"{device}: the warming does not leave the band for "
                             f"{rule.hold_s:.0f} s; raise duration_s or rate_c_per_h")
        return [self._label(i, k, "cold_chain_excursion", injected="excursion",
                            since=self._t(i, k0) / 1000)]

    def door_open(self, t: float, device: str, duration_s: float = 900.0) -> list[Label]:
        """The door is left open from ``t`` for ``duration_s`` (the cargo warms at 1 degC/h
        meanwhile). Label: ``door_open`` at the sample where ``door_open`` has been 1 for
        the rule's ``hold_s`` (300 s)."""
        i = self.index(device)
        rule = self._rule("door_open")
        if duration_s < rule.hold_s + self._period_ms / 1000:
            raise ValueError(f"duration_s must be at least {rule.hold_s:.0f} s + one period")
        k0 = self.first_sample(i, t)
        k1 = k0 + round(duration_s * 1000 / self._period_ms)
        door = _Injection("door", i, 2, k0, k1, 1.0)
        self._schedule(door, self._settled_ms(i, k0, k1, self.DOOR_WARM_C_PER_H))
        self._injections.append(_Injection("warm", i, 0, k0, k1, self.DOOR_WARM_C_PER_H))
        k = self._held(i, 2, k0, k1, rule)
        assert k is not None  # door_open is 1 for longer than hold_s
        return [self._label(i, k, "door_open", injected="door_open",
                            since=self._t(i, k0) / 1000, duration_s=duration_s)]
