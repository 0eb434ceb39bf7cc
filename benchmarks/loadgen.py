"""The load generator: locust as a library, one process, exact per-request samples.

Run by :mod:`benchmarks.serving` as ``python -m benchmarks.loadgen CONFIG.json RESULT.json`` so
that gevent's monkey-patching stays out of the orchestrating process. Two modes:

closed
    ``users`` FastHttpUsers, each sending its next request as soon as the previous one answered
    (wait_time 0). Throughput is what the server sustains; latency is per request.
open
    a fixed arrival rate, sent by the load-test library's open loop
    (:func:`phiserve_load.openloop.dispatch`, as ``make loadtest --load-shape open`` does):
    request *i* starts at its scheduled time whatever happened to earlier ones, and latency is
    measured from that *intended* start. A slow server therefore shows up as queueing delay
    instead of silently lowering the offered load (coordinated omission). Arrivals that would
    exceed ``max_outstanding`` in flight are not sent and count as errors ("dropped").

Each request becomes one :class:`phiserve_load.samples.Sample` (float milliseconds from locust's
``request`` event, not locust's rounded percentile buckets), which :mod:`benchmarks.stats`
summarises with the library's exact percentiles. Only requests that *complete* inside the
measurement window, after the warm-up, are kept.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402 - after monkey-patching, as gevent requires
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import psutil  # noqa: E402
from locust import FastHttpUser, constant, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from benchmarks.machine import cpu_seconds, process_tree  # noqa: E402
from benchmarks.payloads import Payload  # noqa: E402
from phiserve_load import openloop  # noqa: E402
from phiserve_load.arrivals import Segment, arrivals  # noqa: E402
from phiserve_load.cds import Signer  # noqa: E402
from phiserve_load.samples import Sample  # noqa: E402

DROPPED = "dropped: too many in flight (open loop)"


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
    # CDS Hooks: {"jwk": private JWK, "iss": issuer}; each call gets its own client JWT.
    cds: dict[str, Any] | None = None


@dataclass
class LoadResult:
    """Raw outcome of one run; :mod:`benchmarks.stats` turns it into table rows."""

    mode: str
    users: int
    rate: float
    window_s: float
    ok: int = 0
    failed: int = 0  # dropped ones included
    dropped: int = 0
    # Every request of the window, as :meth:`phiserve_load.samples.Sample.to_wire` rows. Open
    # loop: ``latency_ms`` runs from the intended start (coordinated-omission free) and
    # ``service_ms`` is the plain send-to-answer time.
    samples: list[list[Any]] = field(default_factory=list)
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
    # The binary tensor extension announces its JSON header's length; plain JSON does not.
    encoding = "binary" if "Inference-Header-Content-Length" in headers else "json"
    result = LoadResult(config.mode, config.users, config.rate, config.seconds)
    auth = _client_jwts(config, payload) if config.cds else None
    samples: list[Sample] = []
    window = {"start": float("inf"), "end": float("inf")}

    def record(
        t_start: float, latency: float, service: float, lag: float, status: int, error: str
    ) -> None:
        # batch 0: the payload is opaque bytes here, its rows are not counted.
        samples.append(
            Sample(t_start, time.time(), "infer", payload.model, "", encoding, 0, latency,
                   service, lag, not error, status, error, -1)
        )  # fmt: skip

    def on_request(
        response_time: float,
        response: Any,
        context: dict[str, Any],
        exception: BaseException | None,
        start_time: float,
        **_: Any,
    ) -> None:
        # Keep only requests that completed inside the window (after warm-up, before the stop).
        if not window["start"] <= time.time() <= window["end"]:
            return
        status = getattr(response, "status_code", 0) or 0
        error = "" if exception is None else str(exception)[:120]
        intended = context.get("intended")
        if intended is None:
            record(start_time, response_time, response_time, 0.0, status, error)
            return
        now = time.perf_counter()
        record(
            time.time() - (now - intended),
            (now - intended) * 1000.0,
            response_time,
            (context["sent"] - intended) * 1000.0,
            status,
            error,
        )

    def call_headers() -> dict[str, str]:
        # A CDS client signs every call (a fresh jti); a bearer token is the same each time.
        return headers if auth is None else {**headers, "Authorization": auth()}

    def drop(intended: float, _step: int) -> None:
        if window["start"] <= time.time() <= window["end"]:
            record(time.time() - (time.perf_counter() - intended), 0.0, 0.0, 0.0, 0, DROPPED)

    class ClosedUser(FastHttpUser):
        host = config.host
        wait_time = constant(0)
        # One keep-alive connection per user, as a client library would hold.
        concurrency = 1

        @task
        def infer(self) -> None:
            self.client.post(payload.path, data=payload.body, headers=call_headers(), name="infer")

    class OpenUser(FastHttpUser):
        host = config.host
        wait_time = constant(0)
        concurrency = config.max_outstanding

        @task
        def schedule(self) -> None:
            # Endless: the runner's quit ends it. The generator only draws the schedule's phase.
            rng = random.Random(0)  # noqa: S311 - not a secret
            endless = arrivals([Segment(0.0, math.inf, config.rate)], "constant", rng)
            openloop.dispatch(endless, self._send, drop, max_outstanding=config.max_outstanding)

        def _send(self, intended: float, _step: int) -> None:
            self.client.post(
                payload.path,
                data=payload.body,
                headers=call_headers(),
                name="infer",
                context={"intended": intended, "sent": time.perf_counter()},
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
    result.samples = [s.to_wire() for s in samples]
    result.ok = sum(s.ok for s in samples)
    result.failed = len(samples) - result.ok
    result.errors = dict(Counter(s.error for s in samples if not s.ok))
    result.dropped = result.errors.get(DROPPED, 0)
    return result


def _client_jwts(config: LoadConfig, payload: Payload) -> Any:
    """``Bearer <JWT>`` per call: a pool signed before the run (ES384 costs ~0.7 ms here, which
    would otherwise come out of the server's two shared cores), then signed on demand."""
    assert config.cds is not None
    # Valid for the whole run: the server accepts lifetimes up to 300 s.
    signer = Signer(config.cds["jwk"], config.cds["iss"], lifetime_s=290)
    aud = config.host.rstrip("/") + payload.path
    pool = [signer.token(aud) for _ in range(int((config.warmup_s + config.seconds) * 300))]

    def next_header() -> str:
        return f"Bearer {pool.pop() if pool else signer.token(aud)}"

    return next_header


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
