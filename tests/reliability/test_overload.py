"""Overload: past the queue bound the server answers 503 + Retry-After at once, then recovers."""

from __future__ import annotations

import concurrent.futures
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as triton

from tests.server import ServerProcess

SMALL = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": [0.3] * 30}]}


def _image_request(url: str, headers: dict[str, str]) -> tuple[int, str | None, float]:
    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
    image = np.zeros((8, 1, 224, 224), np.float32)
    inp = triton.InferInput("image", list(image.shape), "FP32")
    inp.set_data_from_numpy(image)
    started = time.perf_counter()
    try:
        client.infer("chest-xray", [inp], headers=dict(headers))
        return 200, None, time.perf_counter() - started
    except triton.InferenceServerException as exc:
        return int(exc.status()), exc.message(), time.perf_counter() - started
    finally:
        client.close()


def _small_latency(server: ServerProcess, n: int = 20) -> float:
    with httpx.Client(headers=server.auth) as client:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            assert (
                client.post(f"{server.url}/v2/models/breast-cancer/infer", json=SMALL).status_code
                == 200
            )
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def test_burst_past_capacity_is_shed_then_the_server_recovers(home: Path) -> None:
    env = {"PHISERVE_MODEL_BATCHING": '{"chest-xray": {"max_batch_size": 8, "max_queue_size": 4}}'}
    with ServerProcess(home, **env) as server:
        before = _small_latency(server)
        with concurrent.futures.ThreadPoolExecutor(48) as pool:
            results = list(pool.map(lambda _: _image_request(server.url, server.auth), range(48)))
        statuses = [status for status, _, _ in results]
        shed = [r for r in results if r[0] == 503]
        assert set(statuses) <= {200, 503}, statuses
        assert shed, "a 4-deep queue took 48 concurrent batches without shedding"
        assert statuses.count(200) >= 4
        for _, message, seconds in shed:
            assert "queue is full" in message
            assert seconds < 5, "a shed request must be answered at once, not after waiting"
        # The other model never queued behind the burst, and afterwards everything is normal.
        after = _small_latency(server)
        assert after < max(before * 5, 0.05), (before, after)
        status, _, _ = _image_request(server.url, server.auth)
        assert status == 200
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "phiserve_requests_in_flight 1.0" in metrics  # only the scrape itself


def test_per_request_deadline_answers_504(home: Path) -> None:
    with ServerProcess(home, PHISERVE_REQUEST_TIMEOUT_S="0.001") as server:
        status, message, seconds = _image_request(server.url, server.auth)
        assert status == 504
        assert "no result within" in message
        assert seconds < 5
        assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
