"""Tracing and metrics of the real server: OTLP over the wire, one trace per request, no PHI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server import ServerProcess
from tests.telemetry.receivers import OtlpHttpReceiver

CANARY = "CANARY-PHI-987-65-4321"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, built_home: Path
) -> Iterator[tuple[ServerProcess, OtlpHttpReceiver]]:
    import shutil

    home = tmp_path_factory.mktemp("traced-home")
    shutil.copytree(built_home, home, dirs_exist_ok=True)
    with OtlpHttpReceiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "1.0",
            "OTEL_SERVICE_NAME": "phiserve-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        with ServerProcess(home, **env) as server:
            yield server, receiver


def test_one_trace_per_request_with_incoming_parent(
    traced: tuple[ServerProcess, OtlpHttpReceiver],
) -> None:
    server, receiver = traced
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 30], "data": [0.1] * 60}]}
    headers = {**server.auth, "traceparent": f"00-{TRACE_ID}-{PARENT}-01"}
    response = httpx.post(f"{server.url}/v2/models/breast-cancer/infer", json=body, headers=headers)
    assert response.status_code == 200
    assert response.headers["x-trace-id"] == TRACE_ID
    spans = receiver.wait_for_spans(
        lambda s: any(x.trace_id == TRACE_ID and x.parent_span_id == PARENT for x in s), 20
    )
    ours = [s for s in spans if s.trace_id == TRACE_ID]
    (root,) = [s for s in ours if s.parent_span_id == PARENT]
    assert root.name == "POST /v2/models/{model}/infer"
    assert root.attributes["http.route"] == "/v2/models/{model}/infer"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["phiserve.model"] == "breast-cancer"
    children = {s.name: s for s in ours if s.parent_span_id == root.span_id}
    assert {"authenticate", "decode", "queue_wait", "inference", "encode"} <= set(children), sorted(
        children
    )
    assert children["inference"].attributes["phiserve.batch_size"] >= 2
    assert children["inference"].attributes["phiserve.execution_provider"] == "CPUExecutionProvider"
    # Exactly one server span for the request: BentoML's own tracing added nothing.
    assert len([s for s in ours if s.parent_span_id == PARENT]) == 1


def test_no_phi_in_exported_spans(traced: tuple[ServerProcess, OtlpHttpReceiver]) -> None:
    server, receiver = traced
    body = {
        "id": "r-1",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": [0.1] * 30}],
        "parameters": {"note": CANARY},
    }
    headers = {**server.auth, "x-patient": CANARY, "user-agent": CANARY}
    httpx.post(
        f"{server.url}/v2/models/breast-cancer/infer?mrn={CANARY}", json=body, headers=headers
    )
    httpx.post(f"{server.url}/v2/models/{CANARY}/infer", json=body, headers=headers)
    receiver.wait_for_spans(lambda s: len(s) >= 2, 20)
    assert CANARY.encode() not in receiver.raw
    metrics = httpx.get(f"{server.url}/metrics").text
    assert CANARY not in metrics
    assert CANARY not in server.log()


def test_metrics_count_requests_and_batches(server: ServerProcess) -> None:
    def scrape() -> dict[str, float]:
        text = httpx.get(f"{server.url}/metrics").text
        values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("model") == "chest-xray":
                    key = (
                        sample.name
                        + "|"
                        + ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    )
                    values[key] = sample.value
        return values

    before = scrape()
    body = {
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": [1, 1, 224, 224], "data": [0.0] * 50176}
        ]
    }
    for _ in range(3):
        assert (
            httpx.post(
                f"{server.url}/v2/models/chest-xray/infer", json=body, headers=server.auth
            ).status_code
            == 200
        )
    bad = {
        "inputs": [
            {"name": "image", "datatype": "FP64", "shape": [1, 1, 224, 224], "data": [0.0] * 50176}
        ]
    }
    assert (
        httpx.post(
            f"{server.url}/v2/models/chest-xray/infer", json=bad, headers=server.auth
        ).status_code
        == 400
    )
    after = scrape()

    def delta(prefix: str) -> float:
        return sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix))

    assert (
        delta("phiserve_requests_total|code=200,model=chest-xray,route=/v2/models/{model}/infer")
        == 3
    )
    assert (
        delta("phiserve_requests_total|code=400,model=chest-xray,route=/v2/models/{model}/infer")
        == 1
    )
    assert (
        delta(
            "phiserve_request_duration_seconds_count|model=chest-xray,route=/v2/models/{model}/infer,status_class=2xx"
        )
        == 3
    )
    assert delta("phiserve_batch_size_count|model=chest-xray") == 3
    assert delta("phiserve_queue_wait_seconds_count|model=chest-xray") == 3
    assert after["phiserve_model_ready|model=chest-xray,version=1"] == 1
