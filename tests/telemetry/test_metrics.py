"""/metrics scraped and parsed with prometheus_client's parser: counts match what was sent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from typing import Any

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from phiserve import telemetry
from phiserve.telemetry.metrics import LATENCY_BUCKETS, Metrics

from .conftest import Harness, samples

INFER = "POST"
TEMPLATE = "/v2/models/{model}/infer"
VTEMPLATE = "/v2/models/{model}/versions/{version}/infer"


def value(family: Any, suffix: str = "", **labels: str) -> float:
    (sample,) = samples(family, suffix, **labels)
    return sample.value


def check_histogram(family: Any, count: int, **labels: str) -> None:
    """_count, _sum and cumulative buckets of one series agree with ``count`` observations."""
    assert value(family, "_count", **labels) == count
    buckets = samples(family, "_bucket", **labels)
    counts = [b.value for b in buckets]
    assert counts == sorted(counts), "buckets must be cumulative"
    assert buckets[-1].labels["le"] == "+Inf" and counts[-1] == count
    assert value(family, "_sum", **labels) >= 0


def test_requests_and_latency_match_what_was_sent(harness: Harness) -> None:
    async def traffic(client: Any) -> None:
        for _ in range(7):
            assert (await client.post("/v2/models/sepsis/infer", content=b"{}")).status_code == 200
        for _ in range(3):
            r = await client.post("/v2/models/sepsis/versions/1/infer", content=b"fail-400")
            assert r.status_code == 400
        for _ in range(2):
            assert (
                await client.post("/v2/models/sepsis/infer", content=b"crash")
            ).status_code == 500
        for _ in range(4):
            assert (await client.get("/v2/health/live")).status_code == 200

    harness.run(traffic)
    families = harness.scrape()
    total = families["phiserve_requests"]
    assert value(total, "_total", model="sepsis", version="2", route=TEMPLATE, code="200") == 7
    assert (
        value(total, "_total", model="sepsis", version="2", route=TEMPLATE, status_class="2xx") == 7
    )
    assert value(total, "_total", model="sepsis", version="1", route=VTEMPLATE, code="400") == 3
    assert (
        value(total, "_total", model="sepsis", version="2", route=TEMPLATE, status_class="5xx") == 2
    )
    assert value(total, "_total", model="", version="", route="/v2/health/live", code="200") == 4

    latency = families["phiserve_request_duration_seconds"]
    check_histogram(latency, 7, model="sepsis", version="2", route=TEMPLATE, status_class="2xx")
    check_histogram(latency, 3, model="sepsis", version="1", route=VTEMPLATE, status_class="4xx")
    check_histogram(latency, 2, model="sepsis", version="2", route=TEMPLATE, status_class="5xx")
    check_histogram(latency, 4, route="/v2/health/live", status_class="2xx")
    # Each successful infer slept ~5 ms: none fell in the sub-millisecond buckets.
    les = {
        b.labels["le"]: b.value
        for b in samples(latency, "_bucket", model="sepsis", version="2", status_class="2xx")
    }
    assert les["0.001"] == 0 and les["+Inf"] == 7
    # Buckets fine enough for p99 between 1 and 100 ms.
    assert sum(0.001 <= b <= 0.1 for b in LATENCY_BUCKETS) >= 15
    assert {"0.0005", "0.001", "0.005", "0.01", "0.05", "0.1", "+Inf"} <= set(les)


def test_unknown_models_and_versions_are_bounded(harness: Harness) -> None:
    for name in ("patient-jane-doe", "mrn-0012345", "x" * 200):
        assert harness.request("POST", f"/v2/models/{name}/infer", content=b"{}").status_code == 404
    harness.request("POST", "/v2/models/sepsis/versions/987654/infer", content=b"{}")
    harness.request("GET", "/no/such/path/mrn-0012345")
    families = harness.scrape()
    total = families["phiserve_requests"]
    assert value(total, "_total", model="_unknown", version="_unknown", code="404") == 3
    assert value(total, "_total", model="sepsis", version="_unknown", route=VTEMPLATE) == 1
    assert value(total, "_total", model="", route="unmatched", code="404") == 1
    text = harness.request("GET", "/metrics").text
    for raw in ("jane", "mrn-0012345", "987654", "x" * 50, "/no/such"):
        assert raw not in text


def test_in_flight_gauge(harness: Harness) -> None:
    async def scenario(client: Any) -> tuple[float, float]:
        harness.tiny.hold = asyncio.Event()
        pending = asyncio.gather(*(client.get("/v2/models/sepsis") for _ in range(3)))
        for _ in range(100):
            await asyncio.sleep(0.001)
            if len(harness.tiny.contexts) == 3:
                break
        during = telemetry.METRICS.in_flight
        harness.tiny.hold.set()
        await pending
        harness.tiny.hold = None
        families = {
            f.name: f for f in text_string_to_metric_families((await client.get("/metrics")).text)
        }
        return during, value(families["phiserve_requests_in_flight"])

    during, after = harness.run(scenario)
    assert during == 3
    assert after == 1  # the scrape itself is in flight while it renders


def test_batch_queue_and_inference_histograms(harness: Harness) -> None:
    for _ in range(5):
        harness.request("POST", "/v2/models/sepsis/versions/1/infer", content=b"{}")
    families = harness.scrape()
    labels = {"model": "sepsis", "version": "1"}
    check_histogram(families["phiserve_queue_wait_seconds"], 5, **labels)
    check_histogram(families["phiserve_inference_duration_seconds"], 5, **labels)
    check_histogram(families["phiserve_batch_size"], 5, **labels)
    assert value(families["phiserve_batch_size"], "_sum", **labels) == 20
    queue_sum = value(families["phiserve_queue_wait_seconds"], "_sum", **labels)
    infer_sum = value(families["phiserve_inference_duration_seconds"], "_sum", **labels)
    assert 5 * 0.0015 < queue_sum < 5 * 0.5
    assert 5 * 0.0025 < infer_sum < 5 * 0.5
    le = {b.labels["le"]: b.value for b in samples(families["phiserve_batch_size"], "_bucket")}
    assert le["3.0"] == 0 and le["4.0"] == 5


def test_model_ready_and_load_time(harness: Harness) -> None:
    telemetry.model_loaded("triage", 3, 1.25)
    telemetry.set_model_ready("triage", 4, False)  # a failed load
    telemetry.model_loaded("sepsis", 2)
    telemetry.model_unloaded("sepsis", 2)
    families = harness.scrape()
    ready = families["phiserve_model_ready"]
    assert value(ready, model="triage", version="3") == 1
    assert value(ready, model="triage", version="4") == 0
    assert value(ready, model="sepsis", version="2") == 0
    load = families["phiserve_model_load_duration_seconds"]
    assert value(load, model="triage", version="3") == 1.25
    # A loaded model becomes a known label value at once.
    harness.request("GET", "/v2/models/triage/versions/3")
    total = harness.scrape()["phiserve_requests"]
    assert value(total, "_total", model="triage", version="3") == 1


def test_dedicated_registry_excludes_global_metrics(harness: Harness) -> None:
    counter = prometheus_client.Counter("bentoml_like_requests", "lives in the global registry")
    counter.inc()
    try:
        text = harness.request("GET", "/metrics").text
        assert "bentoml_like_requests" not in text
        assert "phiserve_requests_in_flight" in text
        assert "process_resident_memory_bytes" in text
    finally:
        prometheus_client.REGISTRY.unregister(counter)


def test_metrics_app_methods(harness: Harness) -> None:
    head = harness.request("HEAD", "/metrics")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("text/plain; version=0.0.4")
    post = harness.request("POST", "/metrics")
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


def test_metrics_ignore_prometheus_multiproc_dir(tmp_path) -> None:
    """BentoML workers run with PROMETHEUS_MULTIPROC_DIR set: our series must not change."""
    code = textwrap.dedent(
        """
        from phiserve.telemetry.metrics import Metrics
        m = Metrics()
        m.set_known_models({"sepsis": [1]})
        m.observe_request("sepsis", "1", "/v2/models/{model}/infer", 200, 0.004)
        m.observe_batch("sepsis", 1, 8, 0.002)
        print(m.render().decode())
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    families = {f.name: f for f in text_string_to_metric_families(out)}
    assert value(families["phiserve_requests"], "_total", model="sepsis") == 1
    assert value(families["phiserve_batch_size"], "_sum", model="sepsis") == 8
    assert list(tmp_path.iterdir()) == []  # no mmap files written


def test_labels_mapping() -> None:
    m = Metrics(process_metrics=False)
    m.set_known_models({"a": [1, 2]})
    assert m.labels(None, None) == ("", "")
    assert m.labels("a", None) == ("a", "")
    assert m.labels("a", 2) == ("a", "2")
    assert m.labels("a", 3) == ("a", "_unknown")
    assert m.labels("b", 1) == ("_unknown", "_unknown")
    m.add_known_model("b", 1)
    assert m.labels("b", 1) == ("b", "1")


def test_histogram_bucket_edges_are_inclusive() -> None:
    m = Metrics(process_metrics=False)
    m.observe_request("", "", "/v2", 200, 0.001)  # exactly on a bound: counts in le="0.001"
    m.observe_request("", "", "/v2", 200, 0.0010001)
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    le = {
        b.labels["le"]: b.value
        for b in samples(families["phiserve_request_duration_seconds"], "_bucket")
    }
    assert le["0.0005"] == 0 and le["0.001"] == 1 and le["0.002"] == 2
