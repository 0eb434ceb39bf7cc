"""A real Prometheus (Debian's package, via tools/monitor.sh as `make monitor` runs it) scrapes a
real phiserve under load; every PromQL expression of the shipped dashboard returns series, the
dashboard's variables find values, and the shipped rules load and see the drift."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from tests.helm.chart import REPO_ROOT, missing_tool
from tests.server import ServerProcess, free_port, issue_token

DASHBOARD = REPO_ROOT / "platform/phiserve/telemetry/dashboards/phiserve.json"
# What Grafana substitutes: all jobs, models and versions; a rate window of a few scrapes.
VARIABLES = {"$__rate_interval": "30s", "$job": ".*", "$model": ".*", "$version": ".*"}
DEADLINE_S = 90.0


def _substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    doc = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], _substitute(target["expr"]))
        for panel in doc["panels"]
        for target in panel.get("targets", [])
    ]


def dashboard_variables() -> list[tuple[str, str, str]]:
    """(variable, series selector, label) of every label_values() variable."""
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
            assert m, var["definition"]
            out.append((var["name"], _substitute(m.group(1)), m.group(2)))
    return out


class _Load(threading.Thread):
    """Inference (reference rows, then a shifted population), outcomes and an image, until stopped."""

    def __init__(self, server: ServerProcess, outcome_token: str) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.outcome_token = outcome_token
        self.stop = threading.Event()
        self.shifted = threading.Event()
        self.sent = 0
        self.failures: list[str] = []
        self.x = load_breast_cancer().data.astype(np.float32)

    def run(self) -> None:
        rng = np.random.default_rng(0)
        image = rng.random((1, 1, 224, 224), dtype=np.float32).ravel().tolist()
        with httpx.Client(base_url=self.server.url, headers=self.server.auth, timeout=30) as http:
            while not self.stop.is_set():
                rows = self.x[rng.choice(len(self.x), 10)] * (1.5 if self.shifted.is_set() else 1.0)
                body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [10, 30],
                                    "data": rows.ravel().tolist()}]}  # fmt: skip
                response = http.post("/v2/models/breast-cancer/infer", json=body)
                if response.status_code != 200:
                    self.failures.append(f"infer {response.status_code}")
                    continue
                pid = response.json()["parameters"]["prediction_id"]
                for row in range(0, 10, 3):
                    label = int(rng.random() < 0.4)
                    outcome = http.post(
                        "/v2/models/breast-cancer/versions/1/outcomes",
                        json={"prediction_id": f"{pid}.{row}", "label": label},
                        headers={"Authorization": f"Bearer {self.outcome_token}"},
                    )
                    if outcome.status_code != 201:
                        self.failures.append(f"outcome {outcome.status_code}")
                if self.sent % 20 == 0:
                    xray = {"inputs": [{"name": "image", "datatype": "FP32",
                                        "shape": [1, 1, 224, 224], "data": image}]}  # fmt: skip
                    http.post("/v2/models/chest-xray/infer", json=xray)
                self.sent += 1


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    if path is None or shutil.which("promtool") is None:
        missing_tool("prometheus is missing (Debian package prometheus; make prometheus)")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def stack(
    prometheus_bin: str, built_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, str, _Load]]:
    """phiserve (small drift window) under load, and Prometheus scraping it every second."""
    home = tmp_path_factory.mktemp("prometheus-home")
    shutil.copytree(built_home, home, dirs_exist_ok=True)
    env = {"PHISERVE_MONITORING_WINDOW": "300", "PHISERVE_MONITORING_MIN_ROWS": "50"}
    with ServerProcess(home, **env) as server:
        load = _Load(server, issue_token(home, scope="outcome:write"))
        load.start()
        prom_port = free_port()
        monitor_dir = tmp_path_factory.mktemp("prometheus")
        log = open(monitor_dir / "prometheus.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            ["bash", str(REPO_ROOT / "tools/monitor.sh")],
            env={
                "PATH": f"{Path(prometheus_bin).parent}:/usr/bin:/bin",
                "TARGET": f"127.0.0.1:{server.port}",
                "PROMETHEUS_ADDR": f"127.0.0.1:{prom_port}",
                "SCRAPE_INTERVAL": "1s",
                "MONITOR_DIR": str(monitor_dir),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield server, f"http://127.0.0.1:{prom_port}", load
        finally:
            load.stop.set()
            proc.terminate()
            proc.wait(30)
            log.close()
            load.join(30)


def _until(check: Callable[[], Any], what: str) -> Any:
    """Poll ``check`` until it returns something truthy, within the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.5)
    raise AssertionError(f"within {DEADLINE_S} s: {what}")


def _query(prom: str, expr: str) -> list[dict]:
    try:
        response = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    except httpx.HTTPError:
        return []
    doc = response.json()
    assert doc["status"] == "success", (expr, doc)
    return doc["data"]["result"]


def test_every_dashboard_query_returns_series_under_load(stack) -> None:
    _, prom, load = stack
    _until(lambda: _query(prom, 'up{job="phiserve"} == 1'), "Prometheus scrapes phiserve")
    _until(lambda: load.sent >= 30, "30 requests of reference traffic")
    load.shifted.set()  # the second half of the traffic comes from a shifted population
    queries = dashboard_queries()
    assert len(queries) >= 30
    empty = {f"{title} #{i}": expr for i, (title, expr) in enumerate(queries)}

    def all_answered() -> bool:
        for title, expr in list(empty.items()):
            if _query(prom, expr):
                del empty[title]
        return not empty

    try:
        _until(all_answered, "series for every dashboard query")
    except AssertionError:
        raise AssertionError(f"no series: {json.dumps(empty, indent=1)}") from None
    for name, selector, label in dashboard_variables():
        values = _until(
            lambda s=selector, lab=label: httpx.get(
                f"{prom}/api/v1/label/{lab}/values", params={"match[]": s}, timeout=10
            ).json()["data"],
            f"values of the dashboard variable {name}",
        )
        assert values, name
    assert not load.failures, load.failures[:5]


def test_the_shipped_rules_load_and_see_the_shifted_population(stack) -> None:
    _, prom, load = stack
    load.shifted.set()
    groups = _until(
        lambda: httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"],
        "rule groups loaded",
    )
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {
        "PhiserveModelDrift",
        "PhiserveHighDeferralRate",
        "PhiserveLatencyP99OverSLO",
        "PhiserveAuditUnavailable",
    }

    def drift_pending() -> list[dict]:
        alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [
            a
            for a in alerts
            if a["labels"]["alertname"] == "PhiserveModelDrift"
            and a["labels"]["model"] == "breast-cancer"
        ]

    alerts = _until(drift_pending, "a drift alert pending for the shifted breast-cancer traffic")
    assert {a["state"] for a in alerts} == {"pending"}  # `for: 15m` keeps it pending here
    assert all(float(a["value"]) > 0.25 for a in alerts)
    assert all(r["health"] == "ok" for r in rules.values()), rules
    audit = _query(prom, 'phiserve_dependency_up{dependency="audit trail"}')
    assert [float(s["value"][1]) for s in audit] == [1.0]
