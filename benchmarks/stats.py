"""Summaries of load-generator samples, medians over repeats, and the printed tables."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np


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
    service_p99_ms: float = float("nan")  # open loop: p99 without queueing before the send

    def to_json(self) -> dict[str, Any]:
        """JSON-safe (NaN becomes None)."""
        return {
            k: (None if isinstance(v, float) and v != v else v) for k, v in asdict(self).items()
        }


def _pct(samples: np.ndarray, q: float) -> float:
    return float(np.percentile(samples, q)) if samples.size else float("nan")


def summarize(raw: dict[str, Any]) -> RunStats:
    """Turn a :class:`benchmarks.loadgen.LoadResult` (as a dict) into table numbers."""
    lat = np.asarray(raw["latency_ms"], dtype=np.float64)
    svc = np.asarray(raw["service_ms"], dtype=np.float64)
    ok, failed, window = raw["ok"], raw["failed"], raw["window_s"] or float("nan")
    return RunStats(
        throughput=ok / window,
        p50_ms=_pct(lat, 50),
        p95_ms=_pct(lat, 95),
        p99_ms=_pct(lat, 99),
        max_ms=float(lat.max()) if lat.size else float("nan"),
        error_rate=failed / (ok + failed) if ok + failed else 0.0,
        requests=ok + failed,
        server_cpu_ms_per_req=1000.0 * raw["server_cpu_s"] / ok if ok else float("nan"),
        loadgen_cpu=raw["loadgen_cpu_s"] / window,
        machine_busy=raw["machine_busy"],
        other_cpu=max(
            0.0,
            raw["machine_busy"] * raw.get("cores", 2)
            - (raw["server_cpu_s"] + raw["loadgen_cpu_s"]) / window,
        ),
        service_p99_ms=_pct(svc, 99),
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


def render_text(headers: list[str], rows: list[list[str]]) -> str:
    """A fixed-width table: first two columns left-aligned, numbers right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        out = []
        for i, (cell, w) in enumerate(zip(cells, widths, strict=True)):
            out.append(cell.ljust(w) if i < 2 else cell.rjust(w))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def render_markdown(headers: list[str], rows: list[list[str]]) -> str:
    """The same table in GitHub markdown."""
    align = ["---", "---"] + ["---:"] * (len(headers) - 2)
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
