"""Tracing and metrics of the real server: OTLP over the wire, one trace per request, no PHI."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server import ServerProcess, free_port
from tests.telemetry.receivers import OtlpGrpcReceiver, OtlpHttpReceiver

Receiver = OtlpHttpReceiver | OtlpGrpcReceiver

# Canaries shaped like PHI: a name, a birth date, an SSN-like id (no characters URLs escape).
NAME, BIRTH_DATE, SSN = "Zelda-Quackenbush", "1961-07-04", "987-65-4321"
CANARIES = (NAME, BIRTH_DATE, SSN)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TREE = {"authenticate", "decode", "queue_wait", "inference", "encode"}


def _otel_env(endpoint: str, protocol: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "1.0",
        "OTEL_SERVICE_NAME": "phiserve-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


def _home(tmp_path_factory: pytest.TempPathFactory, built_home: Path, name: str) -> Path:
    home = tmp_path_factory.mktemp(name)
    shutil.copytree(built_home, home, dirs_exist_ok=True)
    return home


@pytest.fixture(scope="module", params=["http/protobuf", "grpc"])
def traced(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, built_home: Path
) -> Iterator[tuple[ServerProcess, Receiver]]:
    """A real server exporting over OTLP/HTTP or OTLP/gRPC to a real receiver."""
    receiver: Receiver = (
        OtlpHttpReceiver() if request.param == "http/protobuf" else OtlpGrpcReceiver()
    )
    with receiver:
        home = _home(tmp_path_factory, built_home, "traced-home")
        with ServerProcess(home, **_otel_env(receiver.endpoint, request.param)) as server:
            yield server, receiver


def _row(rows: int, name: str = "input") -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": [rows, 30], "data": [0.1] * (30 * rows)}


def test_one_trace_per_request_with_incoming_parent(
    traced: tuple[ServerProcess, Receiver],
) -> None:
    server, receiver = traced
    body = {"inputs": [_row(2)]}
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
    assert root.span.kind == root.span.SPAN_KIND_SERVER
    assert root.scope == "phiserve"
    assert root.resource["service.name"] == "phiserve-test"
    assert root.attributes["http.route"] == "/v2/models/{model}/infer"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["phiserve.model"] == "breast-cancer"
    children = {s.name: s for s in ours if s.parent_span_id == root.span_id}
    assert set(children) >= TREE, sorted(children)
    assert children["inference"].attributes["phiserve.batch_size"] >= 2
    assert children["inference"].attributes["phiserve.execution_provider"] == "CPUExecutionProvider"
    # Exactly one server span for the request: BentoML's own tracing added nothing.
    assert len([s for s in ours if s.parent_span_id == PARENT]) == 1


def _phi_traffic(server: ServerProcess) -> list[httpx.Response]:
    """Requests with the canaries in paths, query, headers, bodies and failing inputs."""
    headers = {
        **server.auth,
        "x-patient": NAME,
        "user-agent": f"ehr-client ({NAME})",
        "cookie": f"mrn={SSN}",
        "traceparent": f"00-{TRACE_ID}-{PARENT}-01",
        "tracestate": f"ehr={SSN}",
        "baggage": f"patient={NAME},dob={BIRTH_DATE}",
    }
    url = f"{server.url}/v2/models"
    good = {"id": SSN, "inputs": [_row(1)], "parameters": {"note": f"{NAME} {BIRTH_DATE}"}}
    bad_name = {"inputs": [_row(1, name=f"{NAME}-{BIRTH_DATE}")]}
    bad_type = {"inputs": [{**_row(1), "datatype": f"FP{SSN}"}]}
    with httpx.Client(timeout=30) as client:
        return [
            client.post(f"{url}/breast-cancer/infer?mrn={SSN}", json=good, headers=headers),
            client.post(f"{url}/breast-cancer/infer", json=bad_name, headers=headers),
            client.post(f"{url}/breast-cancer/infer", json=bad_type, headers=headers),
            client.post(f"{url}/breast-cancer/infer", content=f'{{"{NAME}": [', headers=headers),
            client.post(f"{url}/{NAME}/versions/{SSN}/infer", json=good, headers=headers),
            client.get(f"{url}/{BIRTH_DATE}", headers=headers),
        ]


def test_no_phi_in_exported_spans_or_logs(traced: tuple[ServerProcess, Receiver]) -> None:
    server, receiver = traced
    receiver.clear()
    statuses = [r.status_code for r in _phi_traffic(server)]
    assert statuses == [200, 400, 400, 400, 404, 404], statuses
    spans = receiver.wait_for_spans(lambda s: len(s) >= 6 + len(TREE), 20)
    assert {s.trace_id for s in spans} == {TRACE_ID}
    assert all(s.span.trace_state == "" for s in spans)
    metrics = httpx.get(f"{server.url}/metrics").text
    for canary in CANARIES:
        assert canary.encode() not in receiver.raw, canary
        assert canary not in metrics, canary
        assert canary not in server.log(), canary


def test_collector_down_neither_fails_nor_leaks(
    tmp_path_factory: pytest.TempPathFactory, built_home: Path
) -> None:
    """Nothing listens at the endpoint: every request is answered as usual, and the export
    errors the SDK logs carry no PHI."""
    home = _home(tmp_path_factory, built_home, "collector-down-home")
    env = _otel_env(f"http://127.0.0.1:{free_port()}", "http/protobuf")
    with ServerProcess(home, OTEL_EXPORTER_OTLP_TIMEOUT="1", **env) as server:
        responses = _phi_traffic(server)
        statuses = [r.status_code for r in responses]
        assert statuses[0] == 200 and all(400 <= s < 500 for s in statuses[1:]), statuses
        # Traced and sampled (flags 01): the spans really went to the dead endpoint.
        assert all(r.headers["traceresponse"].endswith("-01") for r in responses)
        for canary in CANARIES:
            assert canary not in server.log(), canary


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
