"""checkov on the chart (helm framework, offline) for each profile: it scanned something, zero
failed checks, and every skip is an annotation in the chart with a written reason."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.helm.chart import CHART, PROFILES, TOOLS_BIN, run, tool

pytestmark = pytest.mark.slow

MIN_REASON_CHARS = 40


def _checkov(profile: str) -> dict[str, Any]:
    checkov = tool("checkov")
    tool("helm3")  # without helm on PATH checkov's helm framework scans nothing and exits 0
    assert (TOOLS_BIN / "helm").exists(), ".tools/bin/helm (helm 3) is what checkov runs"
    cmd = [checkov, "-d", str(CHART), "--framework", "helm", "--skip-download", "-o", "json"]
    for f in PROFILES[profile]:
        cmd += ["--var-file", str(CHART / f)]
    proc = run(cmd, timeout=300)
    # checkov exits 1 when a check fails; anything else is a crash.
    assert proc.returncode in (0, 1), f"checkov crashed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    start = proc.stdout.find("{")
    assert start >= 0, f"checkov printed no JSON:\n{proc.stdout[:2000]}\n{proc.stderr[-2000:]}"
    data = json.loads(proc.stdout[start:])
    reports = data if isinstance(data, list) else [data]
    helm = [r for r in reports if r.get("check_type") == "helm"]
    assert helm, f"no helm report: checkov scanned nothing ({proc.stdout[:500]})"
    return helm[0]


@pytest.fixture(scope="module")
def reports() -> dict[str, dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(PROFILES, pool.map(_checkov, PROFILES), strict=True))
    return results


@pytest.mark.parametrize("profile", list(PROFILES))
def test_checkov_scanned_the_workload(reports: dict[str, dict[str, Any]], profile: str) -> None:
    report = reports[profile]
    summary = report["summary"]
    assert summary["passed"] > 100, summary
    assert summary["resource_count"] > 5, summary
    assert summary["parsing_errors"] == 0, summary
    resources = {c["resource"].split(".")[0] for c in report["results"]["passed_checks"]}
    assert {"Deployment", "Pod", "ServiceAccount"} <= resources, resources


@pytest.mark.parametrize("profile", list(PROFILES))
def test_checkov_zero_failed(reports: dict[str, dict[str, Any]], profile: str) -> None:
    failed = reports[profile]["results"].get("failed_checks", [])
    lines = [f"{c['check_id']} {c['check_name']}: {c['resource']}" for c in failed]
    assert reports[profile]["summary"]["failed"] == 0, "\n".join(lines)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_checkov_skips_have_reasons(reports: dict[str, dict[str, Any]], profile: str) -> None:
    skipped = reports[profile]["results"].get("skipped_checks", [])
    assert len(skipped) == reports[profile]["summary"]["skipped"]
    for c in skipped:
        reason = (c.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason) >= MIN_REASON_CHARS, f"{c['check_id']} on {c['resource']}: {reason!r}"


def test_checkov_skips_are_only_the_documented_ones(reports: dict[str, dict[str, Any]]) -> None:
    """Skips are annotations in the chart; each skipped check id is explained in the README."""
    readme = (CHART / "README.md").read_text()
    ids = {c["check_id"] for r in reports.values() for c in r["results"]["skipped_checks"]}
    assert ids <= {"CKV_K8S_21", "CKV_K8S_43", "CKV_K8S_8", "CKV_K8S_9"}, ids
    for check_id in ids:
        assert check_id in readme, f"{check_id} skipped but not explained in the chart README"
    templates = "\n".join(p.read_text() for p in (CHART / "templates").rglob("*.*"))
    for check_id in ids:
        assert re.search(rf"checkov\.io/skip\d+: {check_id}=", templates), check_id


def test_production_pins_every_image(reports: dict[str, dict[str, Any]]) -> None:
    """With digests set, CKV_K8S_43 is checked for real, not skipped."""
    prod = reports["production"]["results"]
    deployment_skips = [
        c for c in prod["skipped_checks"] if c["resource"].startswith("Deployment.")
    ]
    assert all(c["check_id"] != "CKV_K8S_43" for c in deployment_skips)
    assert any(
        c["check_id"] == "CKV_K8S_43" and c["resource"].startswith("Deployment.")
        for c in prod["passed_checks"]
    )
