"""terraform/scripts/helm-values.sh: Terraform outputs -> Helm values for helm/phiserve."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.terraform.tfhelpers import EXAMPLE_DIR, REPO_ROOT, load_dir, terraform_env

SCRIPT = REPO_ROOT / "terraform" / "scripts" / "helm-values.sh"

OUTPUTS: dict[str, Any] = {
    "region": "eu-west-1",
    "platform_role_arn": "arn:aws:iam::123456789012:role/phiserve-prod-platform",
    "models_kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/1111",
    "audit_kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/2222",
    "model_bucket": "phiserve-prod-123456789012-models",
    "audit_bucket": "phiserve-prod-123456789012-audit",
    "ecr_repository_url": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/phiserve",
    "gpu_node_selector": {"phiserve.io/node-pool": "gpu", "nvidia.com/gpu.present": "true"},
    "model_repository_prefix": "repository/",
    "audit_prefix": "audit/",
    "audit_shipping_enabled": True,
}

# Outputs an environment applied before the platform role was scoped to prefixes had.
LEGACY_KEYS = ("model_repository_prefix", "audit_prefix", "audit_shipping_enabled")


def _outputs_file(tmp_path: Path, outputs: dict[str, Any]) -> Path:
    as_tf = {k: {"sensitive": False, "type": "string", "value": v} for k, v in outputs.items()}
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(as_tf))
    return path


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = terraform_env(tmp_path)
    full.update(env)
    return subprocess.run(
        ["bash", str(SCRIPT)], cwd=REPO_ROOT, env=full, capture_output=True, text=True, timeout=60
    )


def test_writes_the_chart_values_contract(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    out = tmp_path / "values.yaml"
    proc = _run(tmp_path, TF_OUTPUTS_JSON=str(_outputs_file(tmp_path, OUTPUTS)), OUT=str(out))
    assert proc.returncode == 0, proc.stderr
    values = yaml.safe_load(out.read_text())
    assert values == {
        "serviceAccount": {
            "annotations": {"eks.amazonaws.com/role-arn": OUTPUTS["platform_role_arn"]}
        },
        "keyProvider": {
            "type": "aws-kms",
            "awsKms": {
                "keyId": OUTPUTS["models_kms_key_arn"],
                "auditKeyId": OUTPUTS["audit_kms_key_arn"],
                "region": "eu-west-1",
            },
        },
        "modelRepository": {
            "s3": {"bucket": OUTPUTS["model_bucket"], "prefix": OUTPUTS["model_repository_prefix"]}
        },
        "audit": {
            "s3": {
                "bucket": OUTPUTS["audit_bucket"],
                "prefix": OUTPUTS["audit_prefix"],
                # The audit bucket policy admits SSE-KMS uploads naming exactly this ARN.
                "kmsKeyId": OUTPUTS["audit_kms_key_arn"],
            }
        },
        "image": {"repository": OUTPUTS["ecr_repository_url"]},
        "nodeSelector": {"phiserve.io/node-pool": "gpu"},
    }


def test_no_audit_shipping_leaves_audit_s3_unset(tmp_path: Path) -> None:
    """With enable_audit_shipping = false the role may not write the audit bucket: a shipper
    configured anyway would fail on every round, so the values file does not turn it on."""
    yaml = pytest.importorskip("yaml")
    out = tmp_path / "values.yaml"
    outputs = {**OUTPUTS, "audit_shipping_enabled": False}
    proc = _run(tmp_path, TF_OUTPUTS_JSON=str(_outputs_file(tmp_path, outputs)), OUT=str(out))
    assert proc.returncode == 0, proc.stderr
    values = yaml.safe_load(out.read_text())
    assert "audit" not in values
    assert values["modelRepository"]["s3"]["prefix"] == "repository/"


def test_outputs_without_prefixes_still_work(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    out = tmp_path / "values.yaml"
    legacy = {k: v for k, v in OUTPUTS.items() if k not in LEGACY_KEYS}
    proc = _run(tmp_path, TF_OUTPUTS_JSON=str(_outputs_file(tmp_path, legacy)), OUT=str(out))
    assert proc.returncode == 0, proc.stderr
    values = yaml.safe_load(out.read_text())
    assert values["modelRepository"]["s3"] == {"bucket": OUTPUTS["model_bucket"]}
    assert values["audit"]["s3"] == {
        "bucket": OUTPUTS["audit_bucket"],
        "kmsKeyId": OUTPUTS["audit_kms_key_arn"],
    }


def test_rejects_a_malformed_shipping_flag(tmp_path: Path) -> None:
    out = tmp_path / "values.yaml"
    outputs = {**OUTPUTS, "audit_shipping_enabled": "yes"}
    proc = _run(tmp_path, TF_OUTPUTS_JSON=str(_outputs_file(tmp_path, outputs)), OUT=str(out))
    assert proc.returncode != 0
    assert "audit_shipping_enabled" in proc.stderr
    assert not out.exists()


def test_stdout_mode(tmp_path: Path) -> None:
    proc = _run(tmp_path, TF_OUTPUTS_JSON=str(_outputs_file(tmp_path, OUTPUTS)), OUT="-")
    assert proc.returncode == 0, proc.stderr
    assert "keyProvider:" in proc.stdout
    assert '"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/' in proc.stdout


def test_fails_clearly_without_outputs(tmp_path: Path) -> None:
    out = tmp_path / "values.yaml"
    proc = _run(tmp_path, TF_OUTPUTS_JSON=str(_outputs_file(tmp_path, {})), OUT=str(out))
    assert proc.returncode != 0
    assert "no Terraform outputs found" in proc.stderr
    assert "terraform apply" in proc.stderr
    assert not out.exists()


def test_fails_naming_a_missing_output(tmp_path: Path) -> None:
    partial = {k: v for k, v in OUTPUTS.items() if k != "audit_bucket"}
    out = tmp_path / "values.yaml"
    proc = _run(tmp_path, TF_OUTPUTS_JSON=str(_outputs_file(tmp_path, partial)), OUT=str(out))
    assert proc.returncode != 0
    assert "audit_bucket" in proc.stderr
    assert not out.exists()


def test_fails_on_an_unapplied_terraform_dir(tmp_path: Path) -> None:
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not installed: the real `terraform output` path is not run")
    tf_dir = tmp_path / "env"
    tf_dir.mkdir()
    (tf_dir / "main.tf").write_text('output "region" {\n  value = "us-east-1"\n}\n')
    out = tmp_path / "values.yaml"
    proc = _run(tmp_path, TF_DIR=str(tf_dir), OUT=str(out))
    assert proc.returncode != 0
    assert "no Terraform outputs found" in proc.stderr, proc.stderr
    assert not out.exists()


def test_example_declares_every_output_the_script_reads() -> None:
    declared = set(load_dir(EXAMPLE_DIR).outputs)
    script = SCRIPT.read_text(encoding="utf-8")
    required_block = script[
        script.index("REQUIRED = [") : script.index("]", script.index("REQUIRED = ["))
    ]
    required = {
        line.strip().strip('",') for line in required_block.splitlines()[1:] if line.strip()
    }
    assert required, "could not read REQUIRED from the script"
    assert required | {"gpu_node_selector", *LEGACY_KEYS} <= declared, required - declared
