"""`make soak`: a bounded soak of the real server that fails on memory or descriptor growth.

It serves a mixed load (valid JSON and binary inferences, refused tokens, bad shapes, unknown
models) for ``SOAK_SECONDS`` (default 600), samples the server tree's RSS and open file
descriptors every ``SOAK_SAMPLE_S`` seconds, and compares the end with the state after a warm-up
(the first ``SOAK_WARMUP_S`` seconds: caches, pools and arenas settle there). It exits 1 when
RSS grew by more than ``SOAK_MAX_RSS_GROWTH_MIB`` (default 48 MiB) or descriptors by more than
``SOAK_MAX_FD_GROWTH`` (default 16). Traffic goes to 127.0.0.1 only, and stops by itself.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

from benchmarks.machine import process_tree
from benchmarks.payloads import chest_xray_binary
from tests.server import ServerProcess, prepare_home

REPO = Path(__file__).resolve().parent.parent
ROW = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [4, 30], "data": [0.3] * 120}]}


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _load(
    server: ServerProcess, stop: threading.Event, counts: Counter, lock: threading.Lock
) -> None:
    """One closed-loop client cycling through valid and invalid requests."""
    image = chest_xray_binary()
    auth = server.auth
    calls = [
        ("POST", "/v2/models/breast-cancer/infer", {"json": ROW}, auth),
        ("POST", image.path, {"content": image.body}, {**auth, **image.headers}),
        (
            "POST",
            "/v2/models/breast-cancer/infer",
            {"json": ROW},
            {"Authorization": "Bearer x.y.z"},
        ),
        ("POST", "/v2/models/breast-cancer/infer", {"json": {"inputs": [{"name": "input"}]}}, auth),
        ("GET", "/v2/models/not-a-model", {}, auth),
        ("GET", "/v2/health/ready", {}, {}),
    ]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        i = 0
        while not stop.is_set() and i < 5_000_000:
            method, path, kwargs, headers = calls[i % len(calls)]
            i += 1
            try:
                status = client.request(method, path, headers=headers, **kwargs).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            with lock:
                counts[status] += 1


def _sample(server: ServerProcess) -> tuple[float, int]:
    """RSS (MiB) and open descriptors summed over the server's process tree."""
    rss, fds = 0, 0
    for proc in process_tree([server.proc.pid]):
        try:
            rss += proc.memory_info().rss
            fds += proc.num_fds()
        except psutil.NoSuchProcess:
            continue
    return rss / 2**20, fds


def main() -> int:
    """Run the soak and print the samples, the growth and the verdict."""
    seconds = _env_float("SOAK_SECONDS", 600)
    every = _env_float("SOAK_SAMPLE_S", 10)
    warmup = _env_float("SOAK_WARMUP_S", min(60.0, seconds / 5))
    max_rss = _env_float("SOAK_MAX_RSS_GROWTH_MIB", 48)
    max_fds = int(_env_float("SOAK_MAX_FD_GROWTH", 16))
    clients = int(_env_float("SOAK_CLIENTS", 8))
    with tempfile.TemporaryDirectory(prefix="phiserve-soak-") as tmp:
        home = prepare_home(Path(tmp) / "home", REPO / "models")
        with ServerProcess(home) as server:
            stop, lock, counts = threading.Event(), threading.Lock(), Counter()
            threads = [
                threading.Thread(target=_load, args=(server, stop, counts, lock), daemon=True)
                for _ in range(clients)
            ]
            for t in threads:
                t.start()
            samples: list[tuple[float, float, int]] = []
            started = time.monotonic()
            print(f"soak: {seconds:.0f} s, {clients} clients, sample every {every:.0f} s")
            print(f"{'t (s)':>7} {'RSS MiB':>9} {'fds':>5} {'requests':>9}")
            while (elapsed := time.monotonic() - started) < seconds:
                rss, fds = _sample(server)
                samples.append((elapsed, rss, fds))
                with lock:
                    total = sum(counts.values())
                print(f"{elapsed:7.0f} {rss:9.1f} {fds:5d} {total:9d}", flush=True)
                time.sleep(every)
            stop.set()
            for t in threads:
                t.join(60)
            alive = server.proc.poll() is None
    settled = [s for s in samples if s[0] >= warmup] or samples
    base_rss = statistics.median(s[1] for s in settled[:3])
    end_rss = statistics.median(s[1] for s in settled[-3:])
    base_fds, end_fds = settled[0][2], max(s[2] for s in settled[-3:])
    rss_growth, fd_growth = end_rss - base_rss, end_fds - base_fds
    print(f"statuses: {dict(sorted(counts.items(), key=str))}")
    print(f"RSS after warm-up {base_rss:.1f} MiB, at the end {end_rss:.1f} MiB: "
          f"growth {rss_growth:+.1f} MiB (bound {max_rss:.0f})")  # fmt: skip
    print(f"descriptors after warm-up {base_fds}, at the end {end_fds}: "
          f"growth {fd_growth:+d} (bound {max_fds})")  # fmt: skip
    errors = [k for k in counts if isinstance(k, str) or k >= 500]
    problems = []
    if rss_growth > max_rss:
        problems.append("RSS grew beyond the bound")
    if fd_growth > max_fds:
        problems.append("open descriptors grew beyond the bound")
    if errors:
        problems.append(f"transport errors or 5xx: {errors}")
    if not alive:
        problems.append("the server died")
    print("soak: " + ("FAILED: " + "; ".join(problems) if problems else "passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
