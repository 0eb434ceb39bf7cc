"""When an open-loop dispatcher sends: the arrival schedule (no locust, no gevent: testable)."""

from __future__ import annotations

import random
from collections.abc import Iterator

from phiserve_load.options import LoadOptions


def arrival_schedule(opts: LoadOptions, rng: random.Random) -> Iterator[tuple[float, int]]:
    """One dispatcher's arrivals: (seconds after its start, ramp step or -1), in order.

    Each dispatcher sends ``1 / --dispatchers`` of the rate. Constant arrivals are computed as
    ``start + phase + k / rate`` (no accumulated rounding, so a run of T seconds at R req/s
    issues exactly R*T requests); the random phase keeps several dispatchers from firing in
    lockstep. Poisson arrivals draw exponential gaps.
    """
    share = float(opts.dispatchers)
    if opts.load_shape == "ramp":
        step_s = opts.ramp_step_s
        segments = [
            (i * step_s, (i + 1) * step_s, opts.ramp_value(i) / share, i)
            for i in range(opts.ramp_steps)
        ]
    else:
        segments = [(0.0, opts.total_s, opts.rate / share, -1)]
    for start, end, rate, step in segments:
        if rate <= 0:
            continue
        if opts.arrival == "poisson":
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
