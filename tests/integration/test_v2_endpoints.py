"""The Open Inference Protocol surface of a real server, with httpx and tritonclient.http."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.server import ServerProcess

MODEL = "breast-cancer"
ROW = [0.5] * 30


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> httpx.Client:
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def tclient(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


def _infer_body(rows: int = 1, **extra: object) -> dict:
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 30], "data": ROW * rows}],
        **extra,
    }


def test_health_routes_are_open(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    ready = httpx.get(f"{server.url}/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True}


def test_server_metadata(client: httpx.Client) -> None:
    doc = client.get("/v2").json()
    assert doc["name"] == "phiserve"
    assert "binary_tensor_data" in doc["extensions"]


@pytest.mark.parametrize(
    "path", ["/v2/models/breast-cancer", "/v2/models/breast-cancer/versions/1"]
)
def test_model_metadata(client: httpx.Client, path: str) -> None:
    doc = client.get(path).json()
    assert doc["name"] == MODEL
    assert doc["versions"] == ["1"]
    assert doc["platform"] == "onnxruntime_onnx"
    assert doc["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert {o["name"] for o in doc["outputs"]} == {"label", "probabilities"}


@pytest.mark.parametrize(
    "path", ["/v2/models/chest-xray/ready", "/v2/models/chest-xray/versions/1/ready"]
)
def test_model_ready(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.json()["ready"] is True


@pytest.mark.parametrize(
    "path", ["/v2/models/breast-cancer/infer", "/v2/models/breast-cancer/versions/1/infer"]
)
def test_json_infer_echoes_request_id(client: httpx.Client, path: str) -> None:
    response = client.post(path, json=_infer_body(3, id="abc-123"))
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["id"] == "abc-123"
    assert doc["model_name"] == MODEL
    assert doc["model_version"] == "1"
    probs = next(o for o in doc["outputs"] if o["name"] == "probabilities")
    assert probs["shape"] == [3, 2]
    assert np.allclose(np.array(probs["data"]).reshape(3, 2).sum(axis=1), 1.0, atol=1e-5)


def test_nested_json_and_requested_outputs(client: httpx.Client) -> None:
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 30], "data": [ROW, ROW]}],
        "outputs": [{"name": "label"}],
    }
    doc = client.post("/v2/models/breast-cancer/infer", json=body).json()
    assert [o["name"] for o in doc["outputs"]] == ["label"]
    assert doc["outputs"][0]["datatype"] == "INT64"


def test_x_request_id_header_is_echoed(client: httpx.Client) -> None:
    response = client.post(
        "/v2/models/breast-cancer/infer", json=_infer_body(), headers={"x-request-id": "trace-me-1"}
    )
    assert response.headers["x-request-id"] == "trace-me-1"


def test_tritonclient_binary_and_json_agree(
    tclient: triton.InferenceServerClient, server: ServerProcess
) -> None:
    assert tclient.is_server_live(headers=server.auth)
    assert tclient.is_server_ready(headers=server.auth)
    assert tclient.is_model_ready(MODEL, headers=server.auth)
    x = np.random.default_rng(0).random((5, 30), dtype=np.float32)
    results = []
    for binary in (True, False):
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
        # A fresh dict each call: tritonclient writes Inference-Header-Content-Length into it.
        result = tclient.infer(MODEL, [inp], outputs=outputs, headers=server.auth, request_id="r1")
        assert result.get_response()["id"] == "r1"
        results.append(result.as_numpy("probabilities"))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)
    assert results[0].shape == (5, 2)


def test_tritonclient_defaults_with_large_binary_payload(
    tclient: triton.InferenceServerClient, server: ServerProcess
) -> None:
    image = np.random.default_rng(1).random((4, 1, 224, 224), dtype=np.float32)
    inp = triton.InferInput("image", list(image.shape), "FP32")
    inp.set_data_from_numpy(image)
    meta = tclient.get_model_metadata("chest-xray", headers=server.auth)
    result = tclient.infer("chest-xray", [inp], headers=server.auth, model_version="1")
    out = result.as_numpy(meta["outputs"][0]["name"])
    assert out.shape[0] == 4


def test_tritonclient_unknown_model_is_404(
    tclient: triton.InferenceServerClient, server: ServerProcess
) -> None:
    inp = triton.InferInput("input", [1, 30], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 30), np.float32))
    with pytest.raises(InferenceServerException, match="unknown model") as info:
        tclient.infer("no-such-model", [inp], headers=server.auth)
    assert info.value.status() == "404"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/v2/models/no-such-model", None, 404, "unknown model"),
        ("GET", "/v2/models/breast-cancer/versions/7", None, 404, "has no version 7"),
        ("GET", "/v2/models/breast-cancer/versions/abc", None, 404, "positive integers"),
        ("POST", "/v2/models/no-such-model/infer", _infer_body(), 404, "unknown model"),
        (
            "POST",
            "/v2/models/breast-cancer/versions/9/infer",
            _infer_body(),
            404,
            "has no version 9",
        ),
        ("GET", "/v2/models/breast-cancer/infer", None, 405, "accepts POST only"),
        ("GET", "/v2/nothing/here", None, 404, "no such route"),
        (
            "POST",
            "/v2/models/breast-cancer/infer",
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 29], "data": ROW[:29]}]},
            400,
            "shape [1, 29] does not match",
        ),
        (
            "POST",
            "/v2/models/breast-cancer/infer",
            {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 30], "data": ROW}]},
            400,
            "datatype FP64 does not match",
        ),
        (
            "POST",
            "/v2/models/breast-cancer/infer",
            {"inputs": [{"name": "other", "datatype": "FP32", "shape": [1, 30], "data": ROW}]},
            400,
            "missing inputs",
        ),
        (
            "POST",
            "/v2/models/breast-cancer/infer",
            _infer_body(outputs=[{"name": "nope"}]),
            400,
            "has no output",
        ),
    ],
)
def test_error_paths(
    client: httpx.Client, method: str, path: str, body: dict | None, status: int, message: str
) -> None:
    response = client.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert set(response.json()) == {"error"}


def test_malformed_json_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/v2/models/breast-cancer/infer",
        content=b'{"inputs": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json() == {"error": "request body is not valid JSON"}


def test_truncated_binary_body_is_400(client: httpx.Client) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 30],
                    "parameters": {"binary_data_size": 120},
                }
            ]
        }
    ).encode()
    response = client.post(
        "/v2/models/breast-cancer/infer",
        content=header + b"\0" * 60,
        headers={"inference-header-content-length": str(len(header))},
    )
    assert response.status_code == 400
    assert "truncated" in response.json()["error"]


def test_oversized_body_is_413(client: httpx.Client) -> None:
    big = b" " * (65 * 1024 * 1024)
    response = client.post("/v2/models/chest-xray/infer", content=big)
    assert response.status_code == 413
    assert "exceeds" in response.json()["error"]


def test_openapi_description_is_served_open(server: ServerProcess) -> None:
    doc = httpx.get(f"{server.url}/v2/openapi.json").json()
    assert doc["openapi"].startswith("3.0")
    assert "/v2/models/{model}/versions/{version}/infer" in doc["paths"]
