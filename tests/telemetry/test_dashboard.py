"""The Grafana dashboard parses, and every metric it queries is one phiserve exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from phiserve.telemetry.metrics import Metrics
from tests.monitoring.conftest import monitoring_sample_names

DASHBOARD = Path(__file__).parents[2] / "platform/phiserve/telemetry/dashboards/phiserve.json"


def exposed_sample_names() -> set[str]:
    m = Metrics()
    m.set_known_models({"m": [1]})
    m.observe_request("m", "1", "/v2/models/{model}/infer", 200, 0.01)
    m.observe_queue_wait("m", 1, 0.001)
    m.observe_batch("m", 1, 4, 0.002)
    m.model_loaded("m", 1, 2.0)
    text = m.render().decode()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    return names | monitoring_sample_names()


def panels() -> list[dict]:
    doc = json.loads(DASHBOARD.read_text())
    return [p for p in doc["panels"] if p["type"] != "row"]


def test_dashboard_is_well_formed() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "phiserve-overview"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    names = {v["name"] for v in doc["templating"]["list"]}
    assert names == {"datasource", "job", "model", "version"}
    titles = " ".join(p["title"] for p in panels()).lower()
    for needed in ("request rate", "error rate", "p50", "p95", "p99", "queue wait", "batch size",
                   "in flight", "model ready", "drift", "missing", "deferral",
                   "outcomes", "calibration"):  # fmt: skip
        assert needed in titles, needed


def test_every_queried_metric_is_exposed() -> None:
    exposed = exposed_sample_names()
    queried = set()
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            queried |= set(re.findall(r"\b((?:phiserve|process)_[a-z_]+)\b", expr))
    assert queried
    assert queried <= exposed, queried - exposed


def test_latency_quantiles_use_buckets_by_model_and_version() -> None:
    exprs = [t["expr"] for p in panels() for t in p["targets"]]
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(
            e.startswith(f"histogram_quantile({quantile}, sum by (le, model, version)")
            and "phiserve_request_duration_seconds_bucket" in e
            for e in exprs
        ), quantile
