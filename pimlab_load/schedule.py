"""The arrival schedule: one rate function r(t) and the arrival times it implies.

Arrival i (0-based) is due at the time t_i where the cumulative rate Λ(t) = ∫₀ᵗ r reaches i,
so a constant rate gives t_i = i / rate and every pattern is the same inversion. Λ is computed
on cells of `STEP` seconds with the rate at each cell's midpoint (exact for linear pieces, a
step edge is smeared over at most one cell). The schedule is a pure function of the profile:
every engine pod computes the same sequence and keeps the arrivals with i ≡ index (mod N), so
N pods together send exactly the one schedule, without gaps or overlaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

#: Cell width of the numerical inversion, seconds.
STEP = 0.001
#: The spike pattern's surge: `peakRate` during this share of the duration, centred.
SPIKE_START, SPIKE_END = 0.45, 0.55


@dataclass(frozen=True)
class Profile:
    """The rate shape, in seconds and arrivals per second (see LoadProfile in the CRD)."""

    pattern: str = "constant"  # constant | ramp | spike | diurnal
    rate: float = 1.0
    peak_rate: float | None = None
    duration: float = 60.0
    ramp_up: float = 0.0
    burst_every: float | None = None
    burst_factor: float = 1.0
    burst_length: float = 0.0

    @property
    def total(self) -> float:
        """The run's length: warm-up plus the pattern."""
        return self.ramp_up + self.duration

    def rate_at(self, t: float) -> float:
        """Arrivals per second at `t` seconds after the start (0 outside the run)."""
        if t < 0 or t >= self.total:
            return 0.0
        if t < self.ramp_up:
            return self.rate * t / self.ramp_up
        u = t - self.ramp_up
        peak = self.peak_rate if self.peak_rate is not None else self.rate
        if self.pattern == "ramp":
            r = self.rate + (peak - self.rate) * u / self.duration
        elif self.pattern == "spike":
            r = peak if SPIKE_START * self.duration <= u < SPIKE_END * self.duration else self.rate
        elif self.pattern == "diurnal":
            # A day compressed into the duration: quiet at both ends, the peak in the middle.
            r = self.rate + (peak - self.rate) * (1 - math.cos(2 * math.pi * u / self.duration)) / 2
        else:
            r = self.rate
        if self.burst_every and u >= self.burst_every and (u % self.burst_every) < self.burst_length:
            r *= self.burst_factor
        return r

    def expected_arrivals(self, until: float | None = None) -> float:
        """Λ(until): how many arrivals the schedule holds up to `until` (default: the end)."""
        end = self.total if until is None else min(until, self.total)
        total, t = 0.0, 0.0
        cells = int(math.ceil(end / STEP - 1e-9))
        for cell in range(cells):
            t0, t1 = cell * STEP, min((cell + 1) * STEP, end)
            total += self.rate_at((t0 + t1) / 2) * (t1 - t0)
        return total


def arrivals(profile: Profile, limit: int | None = None) -> Iterator[tuple[int, float]]:
    """Every arrival of the schedule as (index, seconds after the start), in order."""
    end = profile.total
    cells = int(math.ceil(end / STEP - 1e-9))
    cumulative, i = 0.0, 0
    for cell in range(cells):
        t0 = cell * STEP
        t1 = min(t0 + STEP, end)
        r = profile.rate_at((t0 + t1) / 2)
        after = cumulative + r * (t1 - t0)
        while i <= after - 1e-12 and (limit is None or i < limit):
            # i lies in (cumulative, after]: invert the linear piece (r > 0 here).
            yield i, t0 + (i - cumulative) / r if r > 0 else t0
            i += 1
        if limit is not None and i >= limit:
            return
        cumulative = after


def share(profile: Profile, index: int, of: int, limit: int | None = None) -> Iterator[tuple[int, float]]:
    """Pod `index` of `of`: the arrivals i with i % of == index, from the one schedule."""
    if not 0 <= index < of:
        raise ValueError(f"pod index {index} outside 0..{of - 1}")
    for i, t in arrivals(profile, limit):
        if i % of == index:
            yield i, t
