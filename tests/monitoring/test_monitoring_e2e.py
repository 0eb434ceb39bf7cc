"""Monitoring on the real server: prediction ids, outcomes over HTTP, drift in /metrics, no PHI."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_breast_cancer

from phiserve.audit import read_trail
from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from tests.server import ServerProcess, issue_token

INFER = "/v2/models/breast-cancer/infer"
OUTCOMES = "/v2/models/breast-cancer/versions/1/outcomes"
# Values no real feature takes, and identifiers a careless client might send as an id.
CANARY_VALUES = (987654.3125, 123457.5625)
CANARY_TEXT = "Jane-Doe-MRN-4471-SSN-555-12-3456"


@pytest.fixture(scope="module")
def monitored(
    built_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server with a small drift window, so a few hundred rows fill it."""
    home = tmp_path_factory.mktemp("monitoring-home")
    shutil.copytree(built_home, home, dirs_exist_ok=True)
    env = {"PHISERVE_MONITORING_WINDOW": "200", "PHISERVE_MONITORING_MIN_ROWS": "50"}
    with ServerProcess(home, **env) as proc:
        yield proc


def _rows(n: int, seed: int, scale: float = 1.0) -> np.ndarray:
    x = load_breast_cancer().data.astype(np.float32)
    return x[np.random.default_rng(seed).choice(len(x), n)] * scale


def _infer(server: ServerProcess, rows: np.ndarray) -> dict:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.ravel().tolist()}]}  # fmt: skip
    response = httpx.post(f"{server.url}{INFER}", json=body, headers=server.auth, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _outcome(server: ServerProcess, doc: object, token: str | None = None) -> httpx.Response:
    token = token or issue_token(server.home, scope="outcome:write", subject="lab-feed")
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(f"{server.url}{OUTCOMES}", json=doc, headers=headers, timeout=30)


def _metrics(server: ServerProcess) -> dict[str, dict[tuple, float]]:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _for_model(samples: dict[tuple, float], model: str, label: str = "feature") -> dict:
    return {dict(k).get(label): v for k, v in samples.items() if dict(k)["model"] == model}


def _wait_for_window(server: ServerProcess, rows: int) -> dict[str, dict[tuple, float]]:
    # The worker applies observations just after the responses; an outcome for an unknown id is
    # answered only after everything queued before it, so one 404 is the synchronisation point.
    assert _outcome(server, {"prediction_id": "f" * 24, "label": 1}).status_code == 404
    metrics = _metrics(server)
    assert _for_model(metrics["phiserve_monitoring_window_rows"], "breast-cancer", "model") == {
        "breast-cancer": rows
    }
    return metrics


def test_outcomes_join_predictions_by_id(monitored: ServerProcess) -> None:
    doc = _infer(monitored, _rows(1, seed=1))
    pid = doc["parameters"]["prediction_id"]
    assert len(pid) == 24
    assert _outcome(monitored, {"prediction_id": pid, "label": 1}).status_code == 201
    second = _outcome(monitored, {"prediction_id": pid, "label": 0})
    assert second.status_code == 409 and "already" in second.json()["error"]
    batch = _infer(monitored, _rows(3, seed=2))["parameters"]["prediction_id"]
    assert _outcome(monitored, {"prediction_id": f"{batch}.2", "label": False}).status_code == 201
    assert _outcome(monitored, {"prediction_id": batch, "label": 1}).status_code == 404
    assert _outcome(monitored, {"prediction_id": "0" * 24, "label": 1}).status_code == 404
    metrics = _metrics(monitored)
    assert _for_model(metrics["phiserve_outcomes_total"], "breast-cancer", "model") == {
        "breast-cancer": 2
    }
    assert "breast-cancer" in _for_model(
        metrics["phiserve_outcome_brier_score"], "breast-cancer", "model"
    )


@pytest.mark.parametrize(
    "doc",
    [
        {"prediction_id": "0" * 24},
        {"prediction_id": "0" * 24, "label": 2},
        {"prediction_id": "0" * 24, "label": 0.5},
        {"prediction_id": "0" * 24, "label": "yes"},
        {"prediction_id": 12, "label": 1},
        {"prediction_id": "0" * 24, "label": 1, "patient": "x"},
        [1, 2],
    ],
)
def test_a_malformed_outcome_is_a_400(monitored: ServerProcess, doc: object) -> None:
    assert _outcome(monitored, doc).status_code == 400


def test_outcomes_need_their_own_scope(monitored: ServerProcess) -> None:
    pid = _infer(monitored, _rows(1, seed=3))["parameters"]["prediction_id"]
    doc = {"prediction_id": pid, "label": 1}
    refused = _outcome(monitored, doc, token=monitored.token)  # infer:* metadata:read
    assert refused.status_code == 403 and "outcome:write" in refused.json()["error"]
    anonymous = httpx.post(f"{monitored.url}{OUTCOMES}", json=doc, timeout=30)
    assert anonymous.status_code == 401
    missing = httpx.post(
        f"{monitored.url}/v2/models/breast-cancer/versions/9/outcomes",
        json=doc,
        headers={"Authorization": f"Bearer {issue_token(monitored.home, scope='outcome:write')}"},
        timeout=30,
    )
    assert missing.status_code == 404
    assert _outcome(monitored, doc).status_code == 201  # the refusals recorded nothing


def test_a_shifted_population_crosses_the_drift_threshold(monitored: ServerProcess) -> None:
    for seed in range(10):
        _infer(monitored, _rows(20, seed=100 + seed))
    metrics = _wait_for_window(monitored, 200)
    psi = _for_model(metrics["phiserve_drift_psi"], "breast-cancer")
    assert len(psi) == 31 and "mean radius" in psi and "_score" in psi
    assert max(psi.values()) < 0.25, psi
    assert set(_for_model(metrics["phiserve_drift_alert"], "breast-cancer").values()) == {0}
    for seed in range(10):
        _infer(monitored, _rows(20, seed=200 + seed, scale=1.4))  # larger nuclei everywhere
    metrics = _wait_for_window(monitored, 200)
    alert = _for_model(metrics["phiserve_drift_alert"], "breast-cancer")
    assert alert["mean radius"] == 1 and alert["_score"] == 1
    assert _for_model(metrics["phiserve_drift_psi"], "breast-cancer")["mean radius"] > 0.25
    decisions = _for_model(metrics["phiserve_predictions_total"], "breast-cancer", "decision")
    assert set(decisions) == {"positive", "negative"} and sum(decisions.values()) >= 400


def test_an_imaging_model_is_monitored_by_image_statistics(monitored: ServerProcess) -> None:
    image = np.random.default_rng(4).random((1, 1, 224, 224), dtype=np.float32)
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 224, 224],
                        "data": image.ravel().tolist()}],
            "outputs": [{"name": "logits"}]}  # fmt: skip
    response = httpx.post(
        f"{monitored.url}/v2/models/chest-xray/infer", json=body, headers=monitored.auth, timeout=60
    )
    assert response.status_code == 200
    assert len(response.json()["parameters"]["prediction_id"]) == 24
    assert _outcome(monitored, {"prediction_id": "e" * 24, "label": 1}).status_code == 404
    metrics = _metrics(monitored)
    rows = _for_model(metrics["phiserve_monitoring_window_rows"], "chest-xray", "model")
    assert rows == {"chest-xray": 1}
    missing = _for_model(metrics["phiserve_feature_missing_ratio"], "chest-xray")
    assert set(missing) == {"mean", "std", "p05", "p50", "p95"}


def test_no_value_or_identifier_reaches_metrics_logs_or_audit(monitored: ServerProcess) -> None:
    rows = _rows(2, seed=5)
    rows[0, :2] = CANARY_VALUES
    pid = _infer(monitored, rows)["parameters"]["prediction_id"]
    bad = _outcome(monitored, {"prediction_id": CANARY_TEXT, "label": 1})
    assert bad.status_code == 400 and CANARY_TEXT not in bad.text
    assert _outcome(monitored, {"prediction_id": f"{pid}.0", "label": 1}).status_code == 201
    text = httpx.get(f"{monitored.url}/metrics", timeout=30).text
    settings = Settings(home=monitored.home)
    report, records = read_trail(
        settings.audit_path, key_provider_from_settings(settings, purpose="audit")
    )
    assert report.ok, report.problem
    trail = repr(records)
    for haystack in (text, monitored.log(), trail):
        assert CANARY_TEXT not in haystack
        for value in CANARY_VALUES:
            assert str(value) not in haystack and f"{value:g}" not in haystack
    assert pid not in trail  # ids appear only as keyed pseudonyms
    outcome_records = [r for r in records if r["route"].endswith("/outcomes")]
    recorded = [r["details"] for r in outcome_records if r["status"] == 201]
    assert recorded and all(set(d) == {"prediction", "outcome"} for d in recorded)
    assert all(d["prediction"].startswith("prediction:") for d in recorded)
    assert {r["subject"] for r in outcome_records} >= {"lab-feed"}
