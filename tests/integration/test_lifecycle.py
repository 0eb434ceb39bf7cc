"""Graceful lifecycle: SIGTERM drains in-flight requests and readiness drops; load failures."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tests.server import ServerProcess

IMAGE = np.zeros((8, 1, 224, 224), np.float32)


def _infer_image(url: str, headers: dict[str, str]) -> int:
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": list(IMAGE.shape),
                "data": IMAGE.ravel().tolist(),
            }
        ]
    }
    try:
        return httpx.post(
            f"{url}/v2/models/chest-xray/infer", json=body, headers=headers, timeout=60
        ).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def _wait_for_inference_in_flight(server: ServerProcess, timeout: float = 60.0) -> None:
    """Poll the server's in-flight gauge until an inference is being served.

    The scrape itself is in flight while it is answered, so "an inference too" reads as >= 2.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(f"{server.url}/metrics", timeout=5).text
        (gauge,) = (f for f in text_string_to_metric_families(text)
                    if f.name == "phiserve_requests_in_flight")  # fmt: skip
        if gauge.samples[0].value >= 2:
            return
        time.sleep(0.02)  # poll interval
    raise AssertionError(f"no request was ever in flight:\n{server.log()[-4000:]}")


def test_sigterm_finishes_in_flight_requests_then_exits(home: Path) -> None:
    server = ServerProcess(home).start()
    try:
        headers = server.auth
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(_infer_image, server.url, headers) for _ in range(16)]
            _wait_for_inference_in_flight(server)
            server.terminate()
            statuses = [f.result() for f in futures]
        assert statuses == [200] * 16, str(statuses)
        assert server.proc.wait(60) == 0
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_readiness_drops_when_sigterm_arrives(home: Path) -> None:
    server = ServerProcess(home, PHISERVE_DRAIN_DELAY_S="5").start()
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            busy = [pool.submit(_infer_image, server.url, server.auth) for _ in range(4)]
            _wait_for_inference_in_flight(server)
            server.terminate()
            # Lame duck: still answering for drain_delay_s, but no longer ready.
            ready = server.wait_for_readiness(lambda r: r.status_code != 200, timeout=4)
            assert ready.status_code == 503
            assert ready.json() == {"ready": False, "reason": "draining"}
            live = httpx.get(f"{server.url}/v2/health/live", timeout=5)
            assert live.status_code == 200
            assert [f.result() for f in busy] == [200] * 4
    finally:
        server.stop()


def test_corrupt_version_is_refused_while_others_serve(home: Path) -> None:
    artifact = home / "models" / "chest-xray" / "1" / "model.onnx.enc"
    data = bytearray(artifact.read_bytes())
    data[100] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with ServerProcess(home, wait_ready=False) as server:
        ready = server.wait_for_readiness(lambda r: "failures" in r.json())
        assert ready.status_code == 503
        (failure,) = ready.json()["failures"]
        assert failure["model"] == "chest-xray"
        assert failure["version"] == 1
        assert "ciphertext failed authentication" in failure["cause"]
        broken = httpx.get(f"{server.url}/v2/models/chest-xray/ready", headers=server.auth)
        assert broken.status_code == 503
        assert "chest-xray" in broken.json()["error"]
        body = {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": [0.1] * 30}]
        }
        ok = httpx.post(
            f"{server.url}/v2/models/breast-cancer/infer", json=body, headers=server.auth
        )
        assert ok.status_code == 200
        assert "model 'chest-xray' version 1 refused" in server.log()
