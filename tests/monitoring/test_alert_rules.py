"""The shipped alert rules: promtool checks and unit tests, metrics that exist, the chart's copy."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from phiserve.telemetry.metrics import Metrics
from tests.helm.chart import CHART, REPO_ROOT, missing_tool, tool, tool_env
from tests.monitoring.conftest import monitoring_sample_names

RULES = REPO_ROOT / "platform/phiserve/monitoring/alerts/phiserve.rules.yml"
RULE_TESTS = Path(__file__).parent / "alerts_test.yml"


def promtool() -> str:
    """promtool from Debian's prometheus package (make test installs it), or skip/fail."""
    path = shutil.which("promtool")
    if path is None:
        missing_tool("promtool is missing (Debian package prometheus)")
    assert path is not None
    return path


def _run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_the_rules_pass_promtool_check() -> None:
    out = _run(promtool(), "check", "rules", str(RULES))
    assert "SUCCESS: 4 rules found" in out


def test_the_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in _run(promtool(), "test", "rules", str(RULE_TESTS))


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert alerts == {
        "PhiserveModelDrift",
        "PhiserveHighDeferralRate",
        "PhiserveLatencyP99OverSLO",
        "PhiserveAuditUnavailable",
    }
    fired = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == alerts


def test_every_metric_the_rules_use_is_exposed() -> None:
    m = Metrics(process_metrics=False)
    m.set_known_models({"m": [1]})
    m.observe_request("m", "1", "/v2/models/{model}/infer", 200, 0.01)
    text = m.render().decode()
    exposed = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    exposed |= monitoring_sample_names()
    used = set(re.findall(r"\bphiserve_[a-z_]+\b", RULES.read_text()))
    assert used and used <= exposed, used - exposed


def test_the_chart_ships_the_same_rules_as_a_prometheus_rule() -> None:
    assert (CHART / "rules/phiserve.rules.yml").read_bytes() == RULES.read_bytes()
    helm = tool("helm")
    rendered = _run(
        helm, "template", "phiserve", str(CHART), "--set", "prometheusRule.enabled=true",
        "--show-only", "templates/prometheusrule.yaml",
    )  # fmt: skip
    doc = yaml.safe_load(rendered)
    assert doc["kind"] == "PrometheusRule"
    assert doc["spec"] == {"groups": yaml.safe_load(RULES.read_text())["groups"]}
    off = subprocess.run(
        [helm, "template", "phiserve", str(CHART)], capture_output=True, text=True, env=tool_env()
    )
    assert off.returncode == 0 and "PrometheusRule" not in off.stdout
