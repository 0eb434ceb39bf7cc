"""When an open-loop dispatcher sends: the arrival schedule (no locust, no gevent: testable)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from phiserve_load.options import LoadOptions


class Segment(NamedTuple):
    """A stretch of the schedule at one rate: [start, end) seconds, a ramp step or -1."""

    start: float
    end: float
    rate: float
    step: int = -1


def arrivals(
    segments: Iterable[Segment], arrival: str, rng: random.Random
) -> Iterator[tuple[float, int]]:
    """Arrival times (seconds after the dispatcher's start) and their step, in order.

    ``arrival`` is ``constant`` or ``poisson``. Constant arrivals are computed as
    ``start + phase + k / rate`` (no accumulated rounding, so a segment of T seconds at R req/s
    issues exactly R*T requests); the random phase keeps several dispatchers from firing in
    lockstep. Poisson arrivals draw exponential gaps. A segment may be endless
    (``end = math.inf``): the caller stops drawing.
    """
    for start, end, rate, step in segments:
        if rate <= 0:
            continue
        if arrival == "poisson":
            t = start + rng.expovariate(rate)
            while t < end:
                yield t, step
                t += rng.expovariate(rate)
        else:
            phase = rng.random() / rate
            k = 0
            while (t := start + phase + k / rate) < end:
                yield t, step
                k += 1


def arrival_schedule(opts: LoadOptions, rng: random.Random) -> Iterator[tuple[float, int]]:
    """One dispatcher's arrivals for the run's shape; it sends ``1 / --dispatchers`` of the rate."""
    share = float(opts.dispatchers)
    if opts.load_shape == "ramp":
        step_s = opts.ramp_step_s
        segments = [
            Segment(i * step_s, (i + 1) * step_s, opts.ramp_value(i) / share, i)
            for i in range(opts.ramp_steps)
        ]
    else:
        segments = [Segment(0.0, opts.total_s, opts.rate / share)]
    return arrivals(segments, opts.arrival, rng)
