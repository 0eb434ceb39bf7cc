"""Audit appends/s with concurrent appenders: group commit vs one fsync per record.

    .venv/bin/python -m benchmarks.audit_group_commit [--dir DIR] [--concurrency 64] [--seconds 3]

``--dir`` should be on the disk the server's audit folder will use: fsync cost is the point.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from phiserve.audit.writer import AuditWriter
from phiserve.crypto.local import LocalKeyProvider
from tests.audit.conftest import make_event


async def _load(writer: AuditWriter, concurrency: int, seconds: float) -> tuple[int, list[float]]:
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []

    async def appender() -> int:
        n = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await writer.append(make_event())
            latencies.append(time.perf_counter() - t0)
            n += 1
        return n

    counts = await asyncio.gather(*(appender() for _ in range(concurrency)))
    return sum(counts), latencies


def run(base: Path, concurrency: int, seconds: float, max_batch: int | None) -> dict[str, float]:
    """Appends/s, p50/p99 append latency (ms) and records per fsync for one mode."""
    work = Path(tempfile.mkdtemp(dir=base))
    try:
        provider = LocalKeyProvider(work / "kek.json", create=True)
        writer = AuditWriter(work / "audit", provider, max_batch=max_batch)
        writer.start()
        t0 = time.perf_counter()
        total, latencies = asyncio.run(_load(writer, concurrency, seconds))
        elapsed = time.perf_counter() - t0
        writer.close()
        latencies.sort()
        return {
            "appends_per_s": total / elapsed,
            "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
            "records_per_fsync": writer.stats.records / max(1, writer.stats.commits),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Print one line per mode and the speed-up of group commit."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    results = {}
    for name, max_batch in (("group commit", None), ("fsync per record", 1)):
        r = results[name] = run(args.dir, args.concurrency, args.seconds, max_batch)
        print(f"{name:17s} {r['appends_per_s']:9.0f} appends/s  p50 {r['p50_ms']:6.2f} ms  "
              f"p99 {r['p99_ms']:6.2f} ms  {r['records_per_fsync']:5.1f} records/fsync")  # fmt: skip
    ratio = results["group commit"]["appends_per_s"] / results["fsync per record"]["appends_per_s"]
    print(f"group commit / fsync per record: {ratio:.1f}x ({args.concurrency} appenders)")


if __name__ == "__main__":
    main()
