"""The load generator: locust as a library, one process, exact per-request samples.

Run by :mod:`benchmarks.serving` as ``python -m benchmarks.loadgen CONFIG.json RESULT.json`` so
that gevent's monkey-patching stays out of the orchestrating process. Two modes:

closed
    ``users`` FastHttpUsers, each sending its next request as soon as the previous one answered
    (wait_time 0). Throughput is what the server sustains; latency is per request.
open
    a fixed arrival rate: a scheduler greenlet starts request *i* at ``t0 + i / rate`` whatever
    happened to earlier ones, and latency is measured from that *intended* start. A slow server
    therefore shows up as queueing delay instead of silently lowering the offered load
    (coordinated omission). Requests that would exceed ``max_outstanding`` in flight are not sent
    and count as errors ("dropped").

Samples come from locust's ``request`` event hook (float milliseconds, not locust's rounded
percentile buckets). Only requests that *complete* inside the measurement window, after the
warm-up, are kept.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402 - after monkey-patching, as gevent requires
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
import psutil  # noqa: E402
from locust import FastHttpUser, constant, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from benchmarks.machine import cpu_seconds, process_tree  # noqa: E402
from benchmarks.payloads import Payload  # noqa: E402


@dataclass
class LoadConfig:
    """What to send, how, and for how long."""

    host: str
    payload: dict[str, Any]
    mode: str = "closed"  # "closed" or "open"
    users: int = 32
    rate: float = 800.0  # open loop: requests per second
    max_outstanding: int = 256  # open loop: in-flight cap before requests are dropped
    warmup_s: float = 3.0
    seconds: float = 15.0
    token: str | None = None
    server_pids: list[int] = field(default_factory=list)


@dataclass
class LoadResult:
    """Raw outcome of one run; :mod:`benchmarks.stats` turns it into table rows."""

    mode: str
    users: int
    rate: float
    window_s: float
    ok: int = 0
    failed: int = 0
    dropped: int = 0
    # Successful requests only, in ms. Open loop: from the intended start (coordinated-omission
    # free); ``service_ms`` holds the plain send-to-answer time for comparison.
    latency_ms: list[float] = field(default_factory=list)
    service_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    server_cpu_s: float = 0.0
    loadgen_cpu_s: float = 0.0
    machine_busy: float = 0.0  # fraction of all cores busy during the window
    cores: int = field(default_factory=lambda: psutil.cpu_count() or 1)


def run(config: LoadConfig) -> LoadResult:
    """Drive the server as configured; returns the samples of the measurement window."""
    payload = Payload.from_json(config.payload)
    headers = dict(payload.headers)
    if config.token:
        headers["Authorization"] = f"Bearer {config.token}"
    result = LoadResult(config.mode, config.users, config.rate, config.seconds)
    window = {"start": float("inf"), "end": float("inf")}

    def on_request(
        response_time: float,
        context: dict[str, Any],
        exception: BaseException | None,
        start_time: float,
        **_: Any,
    ) -> None:
        now = time.time()
        # Keep only requests that completed inside the window (after warm-up, before the stop).
        if not window["start"] <= now <= window["end"]:
            return
        if exception is not None:
            result.failed += 1
            key = str(exception)[:120]
            result.errors[key] = result.errors.get(key, 0) + 1
            return
        result.ok += 1
        intended = context.get("intended")
        if intended is not None:
            result.latency_ms.append((time.perf_counter() - intended) * 1000.0)
            result.service_ms.append(response_time)
        else:
            result.latency_ms.append(response_time)

    class ClosedUser(FastHttpUser):
        host = config.host
        wait_time = constant(0)
        # One keep-alive connection per user, as a client library would hold.
        concurrency = 1

        @task
        def infer(self) -> None:
            self.client.post(payload.path, data=payload.body, headers=headers, name="infer")

    class OpenUser(FastHttpUser):
        host = config.host
        wait_time = constant(0)
        concurrency = config.max_outstanding

        @task
        def schedule(self) -> None:
            pool = gevent.pool.Pool(config.max_outstanding)
            interval = 1.0 / config.rate
            t0 = time.perf_counter()
            i = 0
            while True:
                intended = t0 + i * interval
                delay = intended - time.perf_counter()
                if delay > 0:
                    gevent.sleep(delay)
                i += 1
                if pool.full():
                    if window["start"] <= time.time() <= window["end"]:
                        result.dropped += 1
                    continue
                pool.spawn(self._send, intended)

        def _send(self, intended: float) -> None:
            self.client.post(
                payload.path,
                data=payload.body,
                headers=headers,
                name="infer",
                context={"intended": intended},
            )

    user = ClosedUser if config.mode == "closed" else OpenUser
    env = Environment(user_classes=[user], host=config.host)
    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    count = config.users if config.mode == "closed" else 1
    runner.start(count, spawn_rate=max(count, 1) * 10)

    gevent.sleep(config.warmup_s)
    procs = process_tree(config.server_pids)
    me = psutil.Process()
    cpu0, mine0, sys0 = cpu_seconds(procs), cpu_seconds([me]), psutil.cpu_times()
    window["start"] = time.time()
    window["end"] = window["start"] + config.seconds
    gevent.sleep(config.seconds)
    cpu1, mine1, sys1 = cpu_seconds(procs), cpu_seconds([me]), psutil.cpu_times()
    window["end"] = min(window["end"], time.time())
    runner.quit()

    result.window_s = window["end"] - window["start"]
    result.server_cpu_s = cpu1 - cpu0
    result.loadgen_cpu_s = mine1 - mine0
    busy = (sum(sys1) - sys1.idle - sys1.iowait) - (sum(sys0) - sys0.idle - sys0.iowait)
    total = sum(sys1) - sum(sys0)
    result.machine_busy = busy / total if total > 0 else 0.0
    result.failed += result.dropped
    if result.dropped:
        result.errors["dropped: too many in flight (open loop)"] = result.dropped
    return result


def main(argv: list[str]) -> int:
    """``python -m benchmarks.loadgen CONFIG.json RESULT.json``."""
    config = LoadConfig(**json.loads(Path(argv[0]).read_text()))
    result = run(config)
    Path(argv[1]).write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    # Leave at once: locust's greenlets need no orderly teardown once the result is written.
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)
