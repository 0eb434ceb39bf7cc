"""Helpers for the Terraform tests: locating tools, copying the tree, reading HCL.

The HCL reader works with python-hcl2 4.x to 8.x: version 8 keeps string quotes and adds
``__is_block__`` / ``__comments__`` keys, older versions do not; both are normalised to plain
Python values where literal strings are unquoted and expressions stay as ``${...}``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TF_ROOT = REPO_ROOT / "terraform"
MODULE_NAMES = ("network", "cluster", "storage", "keys")
EXAMPLE_DIR = TF_ROOT / "environments" / "example"
PLUGIN_DIR = Path(os.environ.get("PHISERVE_TF_PLUGIN_DIR", "/opt/tf-plugins"))

# Contract with the Helm chart (helm/phiserve/values.yaml) and terraform/modules/cluster.
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}
GPU_LABELS = {"phiserve.io/node-pool": "gpu", "nvidia.com/gpu.present": "true"}
SYSTEM_LABELS = {"phiserve.io/node-pool": "system"}


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------


def terraform_or_skip() -> str:
    """Path of the terraform binary, or skip the test saying why."""
    path = shutil.which("terraform")
    if path is None:
        pytest.skip("terraform is not installed (not on PATH): Terraform CLI checks not run")
    return path


def plugin_dir_or_skip() -> Path:
    """The local AWS provider mirror, or skip the test saying why (no downloads here)."""
    # The mirror's layout is <host>/hashicorp/aws/...; any host folder will do.
    if not any(PLUGIN_DIR.glob("*/hashicorp/aws")):
        pytest.skip(
            f"AWS provider mirror missing at {PLUGIN_DIR} (set PHISERVE_TF_PLUGIN_DIR): "
            "terraform init/validate not run"
        )
    return PLUGIN_DIR


def terraform_env(tmp_dir: Path) -> dict[str, str]:
    """Environment for terraform subprocesses: no prompts, no colour, no checkpoint calls.

    A TF_CLI_CONFIG_FILE pointing at a missing file only produces warnings; replace it with an
    empty one in that case and keep a real one untouched.
    """
    env = dict(os.environ)
    env.update({"TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"})
    cli_config = env.get("TF_CLI_CONFIG_FILE")
    if cli_config and not Path(cli_config).is_file():
        empty = tmp_dir / "empty.terraformrc"
        empty.write_text("")
        env["TF_CLI_CONFIG_FILE"] = str(empty)
    return env


def copy_terraform_tree(dest: Path) -> Path:
    """Copy terraform/ without local state, caches or lock files; returns the copy's root."""
    target = dest / "terraform"
    shutil.copytree(
        TF_ROOT,
        target,
        ignore=shutil.ignore_patterns(
            ".terraform", ".terraform.lock.hcl", "*.tfstate", "*.tfstate.*", "*.tfplan"
        ),
    )
    return target


# --------------------------------------------------------------------------------------------
# HCL
# --------------------------------------------------------------------------------------------


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            return text[1:-1]
    return text


def normalise(value: Any) -> Any:
    """Strip python-hcl2 8.x markers and string quotes, recursively."""
    if isinstance(value, dict):
        return {_unquote(k): normalise(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, str):
        return _unquote(value)
    return value


@dataclass
class TfConfig:
    """The blocks of one Terraform directory (all of its *.tf files)."""

    path: Path
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    data: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    terraform: list[dict[str, Any]] = field(default_factory=list)

    def resource(self, rtype: str, name: str) -> dict[str, Any]:
        assert rtype in self.resources and name in self.resources[rtype], (
            f"{self.path.name}: resource {rtype}.{name} is missing"
        )
        return self.resources[rtype][name]

    def data_source(self, dtype: str, name: str) -> dict[str, Any]:
        assert dtype in self.data and name in self.data[dtype], (
            f"{self.path.name}: data source {dtype}.{name} is missing"
        )
        return self.data[dtype][name]

    def resolve(self, value: Any) -> Any:
        """Replace a bare ``${var.x}`` / ``${local.x}`` by its default / definition."""
        for _ in range(10):
            if not isinstance(value, str):
                return value
            m = re.fullmatch(r"\$\{var\.([A-Za-z0-9_]+)\}", value)
            if m:
                var = self.variables.get(m.group(1))
                assert var is not None, f"{self.path.name}: variable {m.group(1)} not declared"
                assert "default" in var, f"{self.path.name}: variable {m.group(1)} has no default"
                value = var["default"]
                continue
            m = re.fullmatch(r"\$\{local\.([A-Za-z0-9_]+)\}", value)
            if m:
                assert m.group(1) in self.locals, f"{self.path.name}: local {m.group(1)} missing"
                value = self.locals[m.group(1)]
                continue
            return value
        return value


def load_dir(path: Path) -> TfConfig:
    """Parse every *.tf file of a directory into one TfConfig."""
    import hcl2  # imported here so a missing python-hcl2 fails the HCL tests, not collection

    cfg = TfConfig(path=path)
    files = sorted(path.glob("*.tf"))
    assert files, f"no .tf files in {path}"
    for tf in files:
        with tf.open(encoding="utf-8") as fh:
            raw = normalise(hcl2.load(fh))
        for block in raw.get("resource", []):
            for rtype, named in block.items():
                cfg.resources.setdefault(rtype, {}).update(named)
        for block in raw.get("data", []):
            for dtype, named in block.items():
                cfg.data.setdefault(dtype, {}).update(named)
        for block in raw.get("variable", []):
            cfg.variables.update(block)
        for block in raw.get("output", []):
            cfg.outputs.update(block)
        for block in raw.get("locals", []):
            cfg.locals.update(block)
        for block in raw.get("module", []):
            cfg.modules.update(block)
        cfg.terraform.extend(raw.get("terraform", []))
    return cfg


def module(name: str) -> TfConfig:
    return load_dir(TF_ROOT / "modules" / name)


def example() -> TfConfig:
    return load_dir(EXAMPLE_DIR)


def one(blocks: Any, what: str) -> dict[str, Any]:
    """The single block of a block list (``taint { ... }`` parses as a list of one dict)."""
    assert isinstance(blocks, list), f"{what}: expected a block, got {blocks!r}"
    assert len(blocks) == 1, f"{what}: expected exactly one block, got {len(blocks)}"
    return blocks[0]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def policy_statements(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Statements of an aws_iam_policy_document, static and ``dynamic "statement"`` contents."""
    statements = list(doc.get("statement", []))
    for dyn in doc.get("dynamic", []):
        for label, body in dyn.items():
            if label == "statement":
                statements.extend(body.get("content", []))
    return statements


_SOURCE_DOC = re.compile(
    r'\$\{data\.aws_iam_policy_document\.([A-Za-z0-9_]+)(?:\["([A-Za-z0-9_-]+)"\])?\.json\}'
)
_EACH_VALUE = re.compile(r"\$\{each\.value\.([A-Za-z0-9_]+)\}")
_EACH_FLAG = re.compile(r"\$\{each\.value\.([A-Za-z0-9_]+) \? \[1\] : \[\]\}")


def _substitute_each(value: Any, each: dict[str, Any]) -> Any:
    """Replace ``${each.value.<attr>}`` by the instance's value (itself a ``${...}`` reference
    or a literal), recursively; other text is kept as it is."""
    if isinstance(value, list):
        return [_substitute_each(v, each) for v in value]
    if isinstance(value, dict):
        return {k: _substitute_each(v, each) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    whole = _EACH_VALUE.fullmatch(value)
    if whole:
        return each[whole.group(1)]
    return _EACH_VALUE.sub(lambda m: str(each[m.group(1)]), value)


def policy_reference(value: str) -> tuple[str, str | None]:
    """``(document, instance key)`` of a ``${data.aws_iam_policy_document.<doc>[key].json}``
    reference to a document in the same directory (key ``None`` without ``[...]``)."""
    m = _SOURCE_DOC.fullmatch(value)
    assert m, f"{value!r} is not a reference to a local policy document"
    return m.group(1), m.group(2)


def _source_statements(cfg: TfConfig, doc: dict[str, Any], key: str | None) -> list[dict[str, Any]]:
    """Statements of the documents ``doc``'s ``source_policy_documents`` name, in order
    (``[each.key]`` standing for instance ``key`` of a for_each document)."""
    found: list[dict[str, Any]] = []
    for ref in as_list(doc.get("source_policy_documents", [])):
        if key is not None:
            ref = ref.replace("[each.key]", f'["{key}"]')
        found.extend(document_statements(cfg, *policy_reference(ref)))
    assert not doc.get("override_policy_documents"), "overrides are not modelled"
    return found


def document_statements(cfg: TfConfig, name: str, key: str | None = None) -> list[dict[str, Any]]:
    """Statements a rendered ``data.aws_iam_policy_document.<name>`` (instance ``[key]`` of a
    for_each document) holds: those of the documents its ``source_policy_documents`` name
    (same directory) first, then its own. For an instance, ``each.value`` is substituted and
    ``each.value.<flag> ? [1] : []`` dynamic statements are kept only where the flag is true;
    otherwise dynamic statements count as present, as in :func:`policy_statements`."""
    doc = cfg.data_source("aws_iam_policy_document", name)
    if key is None:
        assert "for_each" not in doc, f"{name}: a for_each document is referenced without a key"
        return _source_statements(cfg, doc, None) + policy_statements(doc)
    instances = cfg.resolve(doc["for_each"])
    assert isinstance(instances, dict) and key in instances, f"{name}: no instance {key!r}"
    each = instances[key]
    found = _source_statements(cfg, doc, key)
    found.extend(_substitute_each(s, each) for s in doc.get("statement", []))
    for dyn in doc.get("dynamic", []):
        for label, body in dyn.items():
            if label != "statement":
                continue
            flag = _EACH_FLAG.fullmatch(body["for_each"])
            assert flag, f"{name}: dynamic statement for_each {body['for_each']!r} not modelled"
            if each[flag.group(1)]:
                found.extend(_substitute_each(c, each) for c in body.get("content", []))
    return found


def bucket_policy_statements(cfg: TfConfig, bucket: str) -> list[dict[str, Any]]:
    """Statements of the policy document ``aws_s3_bucket_policy.<bucket>`` attaches: its own
    document, or its own instance (``[bucket]``) of a document shared by several buckets."""
    name, key = policy_reference(cfg.resource("aws_s3_bucket_policy", bucket)["policy"])
    assert name == bucket if key is None else key == bucket, (
        f"bucket {bucket}: its policy is another bucket's document ({name}[{key}])"
    )
    return document_statements(cfg, name, key)


def statement_principals(stmt: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for p in stmt.get("principals", []):
        found.extend(as_list(p.get("identifiers", [])))
    return found


def statement_actions(stmt: dict[str, Any], cfg: TfConfig) -> list[str]:
    actions = cfg.resolve(stmt.get("actions", []))
    return as_list(actions)


def strip_interp(value: str) -> str:
    """``${aws_s3_bucket.audit.id}`` -> ``aws_s3_bucket.audit.id``."""
    m = re.fullmatch(r"\$\{(.*)\}", value)
    return m.group(1) if m else value
