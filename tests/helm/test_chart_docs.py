"""values.yaml, values.schema.json and README.md stay in step; the dashboard copy equals its
source; the chart's own scripts are sound."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.helm.chart import CHART, REPO_ROOT

SCRIPT = REPO_ROOT / "helm" / "scripts" / "chart_docs.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_docs", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


docs_tool = _load()
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
PARAMS = docs_tool.params()


def test_there_are_params() -> None:
    assert len(PARAMS) > 100
    assert len({p.path for p in PARAMS}) == len(PARAMS), "a @param is documented twice"


@pytest.mark.parametrize("param", PARAMS, ids=lambda p: p.path)
def test_param_exists_in_values_schema_and_readme(param) -> None:
    assert docs_tool.exists(VALUES, param.path), f"@param {param.path} is not in values.yaml"
    assert docs_tool.schema_node(SCHEMA, param.path) is not None, (
        f"@param {param.path} is not in values.schema.json"
    )
    assert f"| `{param.path}` |" in (CHART / "README.md").read_text()


def test_every_value_is_documented() -> None:
    documented = {p.path for p in PARAMS}
    undocumented = [
        leaf
        for leaf in docs_tool.leaf_paths(VALUES)
        if not any(leaf == d or leaf.startswith(d + ".") for d in documented)
    ]
    assert not undocumented, f"values without a ## @param: {undocumented}"


def test_schema_forbids_unknown_keys_everywhere() -> None:
    """Every object with fixed properties in the schema sets additionalProperties: false."""
    loose: list[str] = []

    def walk(node: dict, path: str) -> None:
        if "properties" in node:
            if node.get("additionalProperties") is not False:
                loose.append(path or "<root>")
            for key, child in node["properties"].items():
                walk(child, f"{path}.{key}" if path else key)
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + "[]")

    walk(SCHEMA, "")
    assert not loose, loose


def test_defaults_satisfy_the_schema() -> None:
    import jsonschema

    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)


def test_readme_table_is_generated_from_values() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_readme_table_check_detects_drift(tmp_path: Path) -> None:
    table = docs_tool.render_table()
    assert "`keyProvider.type`" in table and '`"local"`' in table
    changed = docs_tool.render_table(plist=PARAMS[:-1])
    assert changed != table


def test_dashboard_copy_equals_source() -> None:
    source = REPO_ROOT / "platform" / "phiserve" / "telemetry" / "dashboards" / "phiserve.json"
    copy = CHART / "dashboards" / "phiserve.json"
    if not source.is_file():
        pytest.skip(f"{source.relative_to(REPO_ROOT)} does not exist yet")
    assert copy.read_bytes() == source.read_bytes(), (
        "helm/phiserve/dashboards/phiserve.json differs from its source: "
        "run .venv/bin/python helm/scripts/chart_docs.py"
    )
    json.loads(copy.read_text())


def test_helm_test_script_is_stdlib_only() -> None:
    """It runs in the image (any profile) with no test dependencies."""
    tree = ast.parse((CHART / "files" / "helm-test.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
        if alias.name
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_audit_shipper_script_is_valid_bash() -> None:
    script = CHART / "files" / "audit-shipper.sh"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert "trap stop TERM" in text and "aws s3 sync" in text
