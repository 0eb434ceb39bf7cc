"""Summaries of load-generator samples, medians over repeats, and the printed tables.

The figures of one run come from the load-test library (:func:`phiserve_load.samples.summarize`:
exact percentiles over every request, the same as ``make loadtest`` reports) and its table
renderer; what is the benchmark's own is here: CPU accounting, medians over repeats, the columns.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

from phiserve_load import report, samples


@dataclass
class RunStats:
    """One measured run (or the median of several), in the table's units."""

    throughput: float  # successful requests per second
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    error_rate: float  # failed / (ok + failed)
    requests: int
    server_cpu_ms_per_req: float  # CPU of the server's whole process tree per answered request
    loadgen_cpu: float  # cores' worth of CPU the load generator used
    machine_busy: float  # fraction of both cores busy
    # Cores' worth of CPU used by anything but the server and the load generator (other people's
    # test runs on a shared machine, idle servers): a run with much of it is not to be trusted.
    other_cpu: float
    service_p99_ms: float = float("nan")  # send-to-answer p99 (open loop: without queueing)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe (NaN becomes None)."""
        return {
            k: (None if isinstance(v, float) and v != v else v) for k, v in asdict(self).items()
        }


def summarize(raw: dict[str, Any]) -> RunStats:
    """Turn a :class:`benchmarks.loadgen.LoadResult` (as a dict) into table numbers."""
    window = raw["window_s"] or float("nan")
    run = samples.summarize([samples.Sample.from_wire(r) for r in raw["samples"]], window)
    return RunStats(
        throughput=run.throughput,
        p50_ms=run.p50_ms,
        p95_ms=run.p95_ms,
        p99_ms=run.p99_ms,
        max_ms=run.max_ms,
        error_rate=run.error_rate,
        requests=run.requests,
        server_cpu_ms_per_req=1000.0 * raw["server_cpu_s"] / run.ok if run.ok else float("nan"),
        loadgen_cpu=raw["loadgen_cpu_s"] / window,
        machine_busy=raw["machine_busy"],
        other_cpu=max(
            0.0,
            raw["machine_busy"] * raw.get("cores", 2)
            - (raw["server_cpu_s"] + raw["loadgen_cpu_s"]) / window,
        ),
        service_p99_ms=run.service_p99_ms,
    )


def median_of(runs: list[RunStats]) -> RunStats:
    """Field-wise median over repeats (this machine is noisy; one run proves little)."""
    values: dict[str, float] = {}
    for f in fields(RunStats):
        xs = [getattr(r, f.name) for r in runs]
        xs = [x for x in xs if x == x]  # drop NaN
        values[f.name] = float(statistics.median(xs)) if xs else float("nan")
    values["requests"] = int(values["requests"])
    return RunStats(**values)  # type: ignore[arg-type]


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if x != x else f"{x:,.{digits}f}"


HEADERS = [
    "server",
    "mode",
    "req/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "errors",
    "srv CPU ms/req",
    "locust CPU",
    "other CPU",
]


def table_rows(results: list[tuple[str, str, RunStats]]) -> list[list[str]]:
    """Rows of the main table, formatted."""
    rows = []
    for server, mode, s in results:
        rows.append(
            [
                server,
                mode,
                _fmt(s.throughput, 0),
                _fmt(s.p50_ms, 2),
                _fmt(s.p95_ms, 2),
                _fmt(s.p99_ms, 2),
                f"{100 * s.error_rate:.2f}%",
                _fmt(s.server_cpu_ms_per_req, 3),
                _fmt(s.loadgen_cpu, 2),
                _fmt(s.other_cpu, 2),
            ]
        )
    return rows


# Server and mode are the label columns of every benchmark table.
render_text = partial(report.render_text, labels=2)
render_markdown = partial(report.render_markdown, labels=2)
