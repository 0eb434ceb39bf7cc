"""A writer process for the crash tests: appends concurrently and acknowledges on stdout.

Not a test module.
``python -m tests.audit.crash_child AUDIT_DIR KEK_FILE CONCURRENCY PREFIX SEGMENT_BYTES``
prints ``ready`` once started, then ``ack <request_id> <seq>`` for every append that returned (i.e. is
durable), forever, until it is killed. The parent kills it with SIGKILL mid-load.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from phiserve.audit.writer import AuditWriter
from phiserve.crypto.local import LocalKeyProvider
from tests.audit.conftest import make_event


async def _appender(writer: AuditWriter, prefix: str, worker: int) -> None:
    n = 0
    while True:
        n += 1
        record = await writer.append(make_event(request_id=f"{prefix}w{worker}-{n}"))
        # One write per ack: a line is printed only after the record is durable.
        sys.stdout.write(f"ack {record.event.request_id} {record.seq}\n")
        sys.stdout.flush()


async def main(
    audit_dir: Path, kek_file: Path, concurrency: int, prefix: str, segment_bytes: int
) -> None:
    writer = AuditWriter(audit_dir, LocalKeyProvider(kek_file), segment_max_bytes=segment_bytes)
    writer.start()
    print("ready", flush=True)
    await asyncio.gather(*(_appender(writer, prefix, w) for w in range(concurrency)))


if __name__ == "__main__":
    audit_dir, kek_file, concurrency, prefix, segment_bytes = sys.argv[1:6]
    asyncio.run(main(Path(audit_dir), Path(kek_file), int(concurrency), prefix, int(segment_bytes)))
