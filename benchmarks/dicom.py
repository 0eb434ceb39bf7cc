"""``make bench`` (DICOM): per-image decode and preprocessing next to inference.

Real radiographs (pydicom-data's RG3, 1760 x 1760, and RG1, 1955 x 1841, 10-bit CRs, each
uncompressed, JPEG 2000 lossless and JPEG 2000 lossy) are timed two ways:

in process, alternating per file
    *prepare*: what a DICOM decode worker does (``phiserve.dicom.worker.prepare``: read, check,
    decode, preprocess to the chest-xray input, image statistics), and *infer*: the chest-xray
    ONNX session (decrypted from the repository as the server loads it) on that
    [1, 1, 224, 224] tensor, batch 1;
the event loop while one instance is prepared
    the longest the loop went without running (a 1 ms ticker) with the preparation on a worker
    thread and in a worker process (what the server does): the JPEG 2000 decoders hold the GIL;
through a running phiserve (auth and audit on, as shipped), one request at a time
    ``POST /v2/models/chest-xray/dicom`` with the file, and ``POST .../infer`` with the already
    preprocessed tensor (binary tensor extension, as tritonclient sends it): the difference is
    what sending DICOM instead of a tensor costs a client end to end.

Medians of BENCH_DICOM_RUNS (15) runs per file are printed side by side with their ratios and
written to BENCH_OUT (reports/bench)/dicom-*.json. BENCH_HOME reuses a prepared phiserve home.
The machine may be shared: each group of runs waits up to BENCH_QUIET_WAIT (2) s for a quiet
moment, and the two timings of a row alternate run by run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from pydicom.data import get_testdata_file

from benchmarks.machine import wait_for_quiet
from benchmarks.payloads import chest_xray_binary
from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from phiserve.dicom import dicom_hook, read_instance
from phiserve.dicom.worker import DecodePool, prepare
from phiserve.repository.store import ModelRepository
from phiserve.runtime.onnx import OnnxSession
from tests.server import ServerProcess, prepare_home

MODEL = "chest-xray"
FILES = (
    "RG3_UNCR.dcm",
    "RG3_J2KR.dcm",
    "RG3_J2KI.dcm",
    "RG1_UNCR.dcm",
    "RG1_J2KR.dcm",
    "RG1_J2KI.dcm",
)
REPO = Path(__file__).resolve().parent.parent
QUIET_WAIT = float(os.environ.get("BENCH_QUIET_WAIT", "2"))


def _medians(runs: int, **timed: Callable[[], Any]) -> dict[str, float]:
    """Median milliseconds of each callable, interleaved run by run so drift hits all alike."""
    wait_for_quiet(QUIET_WAIT, 0.3)  # shared machine: start each group in a quiet moment
    samples: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(runs):
        for name, fn in timed.items():
            started = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


async def _loop_gap_ms(work: Callable[[], Awaitable[Any]]) -> float:
    """The longest the event loop went without running while ``work`` was awaited."""
    done = asyncio.Event()
    worst = 0.0

    async def tick() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            worst, last = max(worst, now - last), now

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0.05)
    await work()
    done.set()
    await ticker
    return worst * 1000


async def _loop_gaps(files: dict[str, bytes], spec: Any, max_pixels: int, runs: int) -> dict:
    """Median worst loop gap per file: preparing on a worker thread vs in a worker process."""
    loop = asyncio.get_running_loop()
    thread = ThreadPoolExecutor(1)
    pool = DecodePool(1)
    await asyncio.wrap_future(pool.start()[0])
    gaps: dict[str, dict[str, float]] = {}
    for name, raw in files.items():
        samples: dict[str, list[float]] = {"thread": [], "process": []}
        wait_for_quiet(QUIET_WAIT, 0.3)
        for _ in range(runs):
            samples["thread"].append(
                await _loop_gap_ms(
                    lambda raw=raw: loop.run_in_executor(thread, prepare, raw, spec, max_pixels)
                )
            )
            samples["process"].append(
                await _loop_gap_ms(lambda raw=raw: pool.call(prepare, raw, spec, max_pixels))
            )
        gaps[name] = {k: statistics.median(v) for k, v in samples.items()}
    pool.close()
    thread.shutdown()
    return gaps


def main() -> int:
    """Prepare a home, time both ways, print the table and write the JSON report."""
    runs = max(3, int(os.environ.get("BENCH_DICOM_RUNS", "15")))
    out_dir = Path(os.environ.get("BENCH_OUT", REPO / "reports" / "bench"))
    with tempfile.TemporaryDirectory(prefix="phiserve-bench-dicom-") as tmp:
        home = Path(tmp) / "home"
        if os.environ.get("BENCH_HOME"):
            shutil.copytree(os.environ["BENCH_HOME"], home)
        else:
            print("preparing a phiserve home (dev keys, example models) ...", flush=True)
            prepare_home(home, REPO / "models")
        settings = Settings(home=home, execution_provider="cpu")
        artifact = ModelRepository(settings.repository_dir).load(
            MODEL, 1, key_provider_from_settings(settings)
        )
        hook = dicom_hook(artifact.manifest)
        assert hook is not None, "chest-xray declares no DICOM preprocessing"
        session = OnnxSession(artifact.manifest, artifact.onnx_bytes, execution_provider="cpu")
        session.warm_up()
        files = {name: Path(get_testdata_file(name, download=False)).read_bytes() for name in FILES}

        spec, max_pixels = hook.spec, settings.dicom_max_pixels
        rows: list[dict[str, Any]] = []
        print(f"in process: {runs} runs per file", flush=True)
        # Also the warm-up: imports, caches.
        tensors = {name: prepare(raw, spec, max_pixels).tensor for name, raw in files.items()}
        for name, raw in files.items():
            feeds = {"image": tensors[name]}
            medians = _medians(
                runs,
                prepare=lambda raw=raw: prepare(raw, spec, max_pixels),
                infer=lambda feeds=feeds: session.run(feeds),
            )
            ds = read_instance(raw)
            rows.append(
                {
                    "file": name,
                    "bytes": len(raw),
                    "syntax": ds.file_meta.TransferSyntaxUID.name,
                    "pixels": f"{ds.Rows}x{ds.Columns}",
                    "prepare_ms": medians["prepare"],
                    "infer_ms": medians["infer"],
                }
            )

        print("the event loop while instances are prepared", flush=True)
        gaps = asyncio.run(_loop_gaps(files, spec, max_pixels, max(3, runs // 3)))
        for row in rows:
            row["loop_gap_thread_ms"] = gaps[row["file"]]["thread"]
            row["loop_gap_process_ms"] = gaps[row["file"]]["process"]

        print("through the server: one request at a time", flush=True)
        with ServerProcess(home, timeout=180) as server, httpx.Client(timeout=120) as client:
            base = f"{server.url}/v2/models/{MODEL}"
            auth = server.auth
            for row in rows:
                raw = files[row["file"]]
                tensor_request = chest_xray_binary(image=tensors[row["file"]])
                body = tensor_request.body
                dicom_headers = {**auth, "content-type": "application/dicom"}
                infer_headers = {**auth, **tensor_request.headers}
                for _ in range(2):  # warm-up
                    client.post(f"{base}/dicom", content=raw, headers=dicom_headers)
                    client.post(f"{base}/infer", content=body, headers=infer_headers)
                medians = _medians(
                    runs,
                    dicom=lambda raw=raw, h=dicom_headers: client.post(
                        f"{base}/dicom", content=raw, headers=h
                    ).raise_for_status(),
                    infer=lambda body=body, h=infer_headers: client.post(
                        f"{base}/infer", content=body, headers=h
                    ).raise_for_status(),
                )
                row["server_dicom_ms"] = medians["dicom"]
                row["server_infer_ms"] = medians["infer"]

    _print(rows, runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    report = out_dir / f"dicom-{stamp}.json"
    report.write_text(json.dumps({"runs": runs, "rows": rows}, indent=2) + "\n")
    print(f"report: {report}")
    return 0


def _print(rows: list[dict[str, Any]], runs: int) -> None:
    head = (
        f"{'file':<14}{'MB':>5}  {'transfer syntax':<30}{'prepare':>8}{'infer':>7}{'ratio':>7}"
        f"{'/dicom':>8}{'/infer':>7}{'ratio':>7}{'gap thr':>9}{'gap proc':>9}"
    )
    print(f"\nmedians of {runs} runs, milliseconds (machine shared: compare ratios)\n{head}")
    for r in rows:
        print(
            f"{r['file']:<14}{r['bytes'] / 1e6:>5.1f}  {_short(r['syntax']):<30}"
            f"{r['prepare_ms']:>8.1f}{r['infer_ms']:>7.1f}{r['prepare_ms'] / r['infer_ms']:>6.0f}x"
            f"{r['server_dicom_ms']:>8.1f}{r['server_infer_ms']:>7.1f}"
            f"{r['server_dicom_ms'] / r['server_infer_ms']:>6.0f}x"
            f"{r['loop_gap_thread_ms']:>9.1f}{r['loop_gap_process_ms']:>9.1f}"
        )
    print(
        "prepare: read, check, decode, preprocess, stats; infer: onnxruntime, batch 1; "
        "/dicom, /infer: one request at a time through phiserve;\ngap thr / gap proc: the event "
        "loop's longest stall while one instance is prepared on a thread / in a worker process."
    )


def _short(syntax: str) -> str:
    return syntax.replace("Image Compression", "").replace("Little Endian", "LE").strip()


if __name__ == "__main__":
    sys.exit(main())
