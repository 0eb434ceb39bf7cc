"""Exact per-request samples, their CSV file, percentiles and summaries.

Locust keeps response times in rounded buckets (whole ms below 100 ms, 10 ms below 1 s, 100 ms
below 10 s), so its p99 of a 123.4 ms request reads 120 ms. The SLO gate and the report instead use every
request's own latency, captured from locust's ``request`` event as a float, written to
``samples.csv`` as the run goes (so memory stays flat on long runs), and read back once at the
end. Percentiles use linear interpolation between closest ranks, numpy's default ("linear",
Hyndman & Fan type 7), so ``numpy.percentile`` over the CSV gives the same numbers.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)


class Sample(NamedTuple):
    """One finished (or dropped) request.

    ``latency_ms`` is what is gated: send-to-answer in a closed loop, and from the *scheduled*
    send time in an open loop (so queueing inside the load generator is not hidden).
    ``service_ms`` is always send-to-answer; ``lag_ms`` is how late the open-loop dispatcher
    actually sent the request (large values mean the load generator, not the server, lagged).
    """

    t_start: float  # epoch seconds: scheduled (open loop) or actual (closed loop) send time
    t_end: float  # epoch seconds: answer received
    name: str
    model: str
    version: str  # "" for the unversioned route
    encoding: str
    batch: int
    latency_ms: float
    service_ms: float
    lag_ms: float
    ok: bool
    status: int  # HTTP status; 0 when no answer (connection error, dropped, unfinished)
    error: str
    step: int  # ramp step, -1 outside a ramp

    @property
    def label(self) -> str:
        """``model@version`` (``default`` for the unversioned route)."""
        return f"{self.model}@{self.version or 'default'}"

    def to_wire(self) -> list[Any]:
        """A msgpack-friendly list (worker -> master)."""
        return list(self)

    @staticmethod
    def from_wire(row: list[Any]) -> Sample:
        """Inverse of :meth:`to_wire`."""
        return Sample(*row)


FIELDS: tuple[str, ...] = Sample._fields


def _fmt_row(s: Sample) -> list[str]:
    return [
        f"{s.t_start:.6f}",
        f"{s.t_end:.6f}",
        s.name,
        s.model,
        s.version,
        s.encoding,
        str(s.batch),
        f"{s.latency_ms:.4f}",
        f"{s.service_ms:.4f}",
        f"{s.lag_ms:.4f}",
        "1" if s.ok else "0",
        str(s.status),
        s.error,
        str(s.step),
    ]


class SampleWriter:
    """Appends samples to ``samples.csv`` as they arrive (master or local runner)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow(FIELDS)
        self.count = 0
        self.ok = 0

    def write(self, samples: Iterable[Sample]) -> None:
        """Append samples (no-op once closed: late worker reports after the end are ignored)."""
        if self._file is None:
            return
        for s in samples:
            self._csv.writerow(_fmt_row(s))
            self.count += 1
            self.ok += s.ok

    def close(self) -> None:
        """Flush and close (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def read_samples(path: Path) -> list[Sample]:
    """Read ``samples.csv`` back (as written, with the same rounding)."""
    out: list[Sample] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return out
        if tuple(header) != FIELDS:
            raise ValueError(f"{path}: unexpected columns {header}")
        for r in reader:
            out.append(
                Sample(
                    float(r[0]),
                    float(r[1]),
                    r[2],
                    r[3],
                    r[4],
                    r[5],
                    int(r[6]),
                    float(r[7]),
                    float(r[8]),
                    float(r[9]),
                    r[10] == "1",
                    int(r[11]),
                    r[12],
                    int(r[13]),
                )
            )
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values; NaN when empty.

    Linear interpolation between closest ranks: numpy's default method.
    """
    n = len(sorted_values)
    if n == 0:
        return math.nan
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class Stats:
    """Exact figures for one group of samples."""

    requests: int
    ok: int
    failures: int
    error_rate: float  # failures / requests
    throughput: float  # successful requests per second over the window
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    service_p99_ms: float  # send-to-answer p99 (differs from p99_ms in an open loop)
    lag_p99_ms: float  # open loop: dispatcher lateness p99

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict (NaN -> None)."""
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def summarize(samples: list[Sample], window_s: float) -> Stats:
    """Percentiles over *successful* requests; error rate over all of them."""
    ok = [s for s in samples if s.ok]
    lat = sorted(s.latency_ms for s in ok)
    svc = sorted(s.service_ms for s in ok)
    lag = sorted(s.lag_ms for s in ok)
    n = len(samples)
    return Stats(
        requests=n,
        ok=len(ok),
        failures=n - len(ok),
        error_rate=(n - len(ok)) / n if n else 0.0,
        throughput=len(ok) / window_s if window_s > 0 else math.nan,
        mean_ms=sum(lat) / len(lat) if lat else math.nan,
        p50_ms=percentile(lat, 50),
        p90_ms=percentile(lat, 90),
        p95_ms=percentile(lat, 95),
        p99_ms=percentile(lat, 99),
        p999_ms=percentile(lat, 99.9),
        max_ms=lat[-1] if lat else math.nan,
        service_p99_ms=percentile(svc, 99),
        lag_p99_ms=percentile(lag, 99),
    )


def group_by(samples: Iterable[Sample], key: Callable[[Sample], str]) -> dict[str, list[Sample]]:
    """Samples per key, keys in first-seen order."""
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(key(s), []).append(s)
    return out
