"""Properties of the Terraform code that a scanner does not check, read from the HCL itself.

Each test names the safeguard it protects; a regression in terraform/ makes it fail.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.terraform.tfhelpers import (
    GPU_LABELS,
    GPU_TAINT,
    MODULE_NAMES,
    REPO_ROOT,
    SYSTEM_LABELS,
    TF_ROOT,
    TfConfig,
    as_list,
    bucket_policy_statements,
    document_statements,
    example,
    load_dir,
    module,
    one,
    statement_actions,
    statement_principals,
    strip_interp,
)

pytest.importorskip("hcl2", reason="python-hcl2 is not installed in this environment")


@pytest.fixture(scope="module")
def keys() -> TfConfig:
    return module("keys")


@pytest.fixture(scope="module")
def storage() -> TfConfig:
    return module("storage")


@pytest.fixture(scope="module")
def cluster() -> TfConfig:
    return module("cluster")


@pytest.fixture(scope="module")
def network() -> TfConfig:
    return module("network")


@pytest.fixture(scope="module")
def root() -> TfConfig:
    return example()


def _min_from_validation(var: dict[str, Any], name: str) -> int:
    """The lower bound ``var.<name> >= N`` that a variable's validation enforces."""
    bounds = []
    for v in var.get("validation", []):
        bounds += [int(n) for n in re.findall(rf"var\.{name}\s*>=\s*(\d+)", v["condition"])]
    assert bounds, f"variable {name} has no `>= N` validation"
    return max(bounds)


# --------------------------------------------------------------------------------------------
# Audit bucket: Object Lock COMPLIANCE, six years (45 CFR 164.316(b)(2)), set at creation
# --------------------------------------------------------------------------------------------


def test_audit_bucket_has_object_lock_enabled_at_creation(storage: TfConfig) -> None:
    bucket = storage.resource("aws_s3_bucket", "audit")
    assert bucket.get("object_lock_enabled") is True
    assert bucket.get("force_destroy") is False


def test_audit_object_lock_is_compliance_mode_for_six_years(storage: TfConfig) -> None:
    lock = storage.resource("aws_s3_bucket_object_lock_configuration", "audit")
    assert strip_interp(lock["bucket"]) == "aws_s3_bucket.audit.id"
    retention = one(one(lock["rule"], "object lock rule")["default_retention"], "retention")
    assert retention["mode"] == "COMPLIANCE"
    if "years" in retention:
        years = storage.resolve(retention["years"])
        assert isinstance(years, int) and years >= 6, years
        if retention["years"] != years:  # a variable: its floor must hold too
            name = strip_interp(retention["years"]).removeprefix("var.")
            assert _min_from_validation(storage.variables[name], name) >= 6
    else:
        days = storage.resolve(retention["days"])
        assert isinstance(days, int) and days >= 2190, days


def test_example_does_not_shorten_audit_retention(root: TfConfig) -> None:
    passed = root.modules["storage"].get("audit_retention_years")
    if passed is not None:
        assert root.resolve(passed) >= 6


def test_audit_bucket_and_key_are_protected_from_destroy(storage: TfConfig, keys: TfConfig) -> None:
    for cfg, rtype, name in (
        (storage, "aws_s3_bucket", "audit"),
        (storage, "aws_s3_bucket_object_lock_configuration", "audit"),
        (keys, "aws_kms_key", "audit"),
    ):
        lifecycle = one(cfg.resource(rtype, name).get("lifecycle", []), f"{rtype}.{name} lifecycle")
        assert lifecycle.get("prevent_destroy") is True, f"{rtype}.{name}"


def test_audit_versioning_precedes_object_lock(storage: TfConfig) -> None:
    versioning = storage.resource("aws_s3_bucket_versioning", "audit")
    assert one(versioning["versioning_configuration"], "versioning")["status"] == "Enabled"
    lock = storage.resource("aws_s3_bucket_object_lock_configuration", "audit")
    assert "${aws_s3_bucket_versioning.audit}" in as_list(lock.get("depends_on", []))


# --------------------------------------------------------------------------------------------
# GPU node group: the taint and labels the Helm chart tolerates and selects
# --------------------------------------------------------------------------------------------


def test_gpu_node_group_taint(cluster: TfConfig) -> None:
    group = cluster.resource("aws_eks_node_group", "gpu")
    taint = one(group.get("taint", []), "GPU node group taint")
    assert {k: taint[k] for k in ("key", "value", "effect")} == GPU_TAINT


def test_gpu_node_group_labels(cluster: TfConfig) -> None:
    group = cluster.resource("aws_eks_node_group", "gpu")
    # User labels first, the contract labels last so they always win.
    assert re.fullmatch(
        r"\$\{merge\(var\.gpu_node_group\.labels,\s*local\.gpu_labels\)\}", group["labels"]
    )
    assert cluster.locals["gpu_labels"] == GPU_LABELS


def test_system_node_group_labels_and_no_taint(cluster: TfConfig) -> None:
    group = cluster.resource("aws_eks_node_group", "system")
    assert re.fullmatch(
        r"\$\{merge\(var\.system_node_group\.labels,\s*local\.system_labels\)\}", group["labels"]
    )
    assert cluster.locals["system_labels"] == SYSTEM_LABELS
    assert not group.get("taint")


def test_gpu_node_group_uses_a_gpu_ami_and_gpu_instances(cluster: TfConfig) -> None:
    spec = cluster.variables["gpu_node_group"]["type"]
    assert re.search(r'ami_type\s*=\s*optional\(string,\s*"AL2023_x86_64_NVIDIA"\)', spec), spec
    assert re.search(r'instance_types\s*=\s*optional\(list\(string\),\s*\["g[56]', spec), spec
    conditions = " ".join(v["condition"] for v in cluster.variables["gpu_node_group"]["validation"])
    assert "NVIDIA" in conditions and "g5" in conditions


def _load_chart_values() -> dict[str, Any] | None:
    values_file = REPO_ROOT / "helm" / "phiserve" / "values.yaml"
    if not values_file.is_file():
        return None
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(values_file.read_text(encoding="utf-8")) or {}


def selector_problems(values: dict[str, Any], gpu_labels: dict[str, str]) -> list[str]:
    """Why the chart's top-level nodeSelector would not land on the GPU node group."""
    selector = values.get("nodeSelector") or {}
    if not selector:
        return ["nodeSelector is empty: it must select the GPU node group"]
    problems = []
    if selector.get("phiserve.io/node-pool") != "gpu":
        problems.append(f"nodeSelector lacks phiserve.io/node-pool: gpu ({selector})")
    for key, value in selector.items():
        if gpu_labels.get(key) != str(value):
            problems.append(f"nodeSelector {key}={value}: no GPU node carries this label")
    return problems


def tolerates_gpu_taint(values: dict[str, Any]) -> bool:
    """Whether one of the chart's top-level tolerations matches the GPU node taint."""
    effect = {"NO_SCHEDULE": "NoSchedule"}[GPU_TAINT["effect"]]
    for t in values.get("tolerations") or []:
        if t.get("key") != GPU_TAINT["key"] or t.get("effect") not in (effect, None, ""):
            continue
        operator = t.get("operator", "Equal")
        if operator == "Exists" or (operator == "Equal" and t.get("value") == GPU_TAINT["value"]):
            return True
    return False


def test_chart_node_selector_matches_gpu_labels(cluster: TfConfig) -> None:
    values = _load_chart_values()
    if values is None:
        pytest.skip("helm/phiserve/values.yaml does not exist yet: only the Terraform side checked")
    assert selector_problems(values, cluster.locals["gpu_labels"]) == []


def test_chart_tolerates_gpu_taint() -> None:
    values = _load_chart_values()
    if values is None:
        pytest.skip("helm/phiserve/values.yaml does not exist yet: only the Terraform side checked")
    assert tolerates_gpu_taint(values), (
        f"no toleration in the chart matches the GPU taint {GPU_TAINT}: {values.get('tolerations')}"
    )


def test_chart_cross_check_logic() -> None:
    """The cross-check itself, on synthetic chart values, so it is known to work before the
    chart exists."""
    good = {
        "nodeSelector": {"phiserve.io/node-pool": "gpu"},
        "tolerations": [
            {
                "key": "nvidia.com/gpu",
                "operator": "Equal",
                "value": "present",
                "effect": "NoSchedule",
            }
        ],
    }
    assert selector_problems(good, GPU_LABELS) == []
    assert tolerates_gpu_taint(good)
    assert tolerates_gpu_taint({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]})
    assert selector_problems({"nodeSelector": {}}, GPU_LABELS)
    assert selector_problems({"nodeSelector": {"phiserve.io/node-pool": "system"}}, GPU_LABELS)
    assert selector_problems(
        {"nodeSelector": {"phiserve.io/node-pool": "gpu", "gpu": "a100"}}, GPU_LABELS
    )
    assert not tolerates_gpu_taint({"tolerations": []})
    assert not tolerates_gpu_taint(
        {"tolerations": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]}
    )
    assert not tolerates_gpu_taint(
        {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}]}
    )


# --------------------------------------------------------------------------------------------
# KMS key policies: least privilege for the platform role
# --------------------------------------------------------------------------------------------

PLATFORM = "${var.platform_role_arn}"


def _platform_actions(keys: TfConfig, doc: str) -> set[str]:
    statements = document_statements(keys, doc)
    actions: set[str] = set()
    for s in statements:
        if PLATFORM in statement_principals(s):
            assert s.get("effect", "Allow") == "Allow"
            assert not s.get("condition"), "unexpected condition narrowing/widening the grant"
            actions |= set(statement_actions(s, keys))
    return actions


def test_models_key_platform_may_only_decrypt(keys: TfConfig) -> None:
    assert _platform_actions(keys, "models") == {"kms:Decrypt", "kms:DescribeKey"}


def test_audit_key_platform_may_encrypt_and_read_back(keys: TfConfig) -> None:
    assert _platform_actions(keys, "audit") == {
        "kms:Encrypt",
        "kms:GenerateDataKey",
        "kms:Decrypt",
        "kms:DescribeKey",
    }


@pytest.mark.parametrize("doc", ["cluster", "logs"])
def test_platform_gets_nothing_on_cluster_and_logs_keys(keys: TfConfig, doc: str) -> None:
    assert _platform_actions(keys, doc) == set()


@pytest.mark.parametrize("doc", ["models", "audit", "cluster", "logs"])
def test_only_account_root_gets_kms_star(keys: TfConfig, doc: str) -> None:
    root_arn = keys.locals["account_root_arn"]
    assert root_arn == "arn:${local.partition}:iam::${local.account_id}:root"
    assert keys.locals["account_id"] == "${data.aws_caller_identity.current.account_id}"
    root_statements = 0
    for s in document_statements(keys, doc):
        actions = set(statement_actions(s, keys))
        principals = statement_principals(s)
        assert "*" not in principals, f"{doc}: wildcard principal in {s.get('sid')}"
        if actions & {"kms:*", "*"}:
            assert principals == ["${local.account_root_arn}"], f"{doc}: kms:* to {principals}"
            assert one(s["principals"], "principals")["type"] == "AWS"
            root_statements += 1
        else:
            assert all(a.startswith("kms:") and "*" not in a for a in actions), (doc, actions)
    assert root_statements == 1, f"{doc}: expected one account-root statement"


def test_key_administrators_cannot_use_the_keys(keys: TfConfig) -> None:
    admin_actions = set(keys.locals["key_admin_actions"])
    usage = {
        "kms:Decrypt",
        "kms:Encrypt",
        "kms:GenerateDataKey",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
        "kms:CreateGrant",
        "kms:*",
    }
    assert not admin_actions & usage, admin_actions & usage


def test_logs_key_is_scoped_to_this_accounts_log_groups(keys: TfConfig) -> None:
    statements = document_statements(keys, "logs")
    service = [s for s in statements if one(s["principals"], "p")["type"] == "Service"]
    assert len(service) == 1
    stmt = service[0]
    assert statement_principals(stmt) == ["logs.${local.region}.amazonaws.com"]
    cond = one(stmt["condition"], "logs key condition")
    assert cond["variable"] == "kms:EncryptionContext:aws:logs:arn"
    assert cond["values"] == [
        "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"
    ]


@pytest.mark.parametrize("name", ["models", "audit", "cluster", "logs"])
def test_keys_rotate_and_use_their_own_policy(keys: TfConfig, name: str) -> None:
    key = keys.resource("aws_kms_key", name)
    assert key["enable_key_rotation"] is True
    assert key["policy"] == f"${{data.aws_iam_policy_document.{name}.json}}"
    assert keys.resolve(key["deletion_window_in_days"]) == 30


def test_example_wires_platform_role_into_key_policies(root: TfConfig) -> None:
    assert root.modules["keys"]["platform_role_arn"] == "${module.cluster.platform_role_arn}"


# --------------------------------------------------------------------------------------------
# Nodes: IMDSv2 and encrypted volumes
# --------------------------------------------------------------------------------------------


def test_every_node_group_has_a_launch_template(cluster: TfConfig) -> None:
    lt = cluster.resource("aws_launch_template", "node")
    assert lt["for_each"] == "${local.launch_templates}"
    assert set(cluster.resolve(lt["for_each"])) == {"gpu", "system"}


def test_launch_templates_require_imdsv2_and_encrypt_volumes(cluster: TfConfig) -> None:
    lt = cluster.resource("aws_launch_template", "node")
    meta = one(lt["metadata_options"], "metadata_options")
    assert meta["http_tokens"] == "required"
    assert meta["http_endpoint"] == "enabled"
    assert meta["http_put_response_hop_limit"] == 1
    for mapping in lt["block_device_mappings"]:
        assert one(mapping["ebs"], "ebs")["encrypted"] is True


def test_every_launch_template_requires_imdsv2() -> None:
    for name in MODULE_NAMES:
        cfg = module(name)
        for lt_name, lt in cfg.resources.get("aws_launch_template", {}).items():
            meta = one(lt["metadata_options"], f"{name}.{lt_name} metadata_options")
            assert meta["http_tokens"] == "required", f"{name}.{lt_name}"


@pytest.mark.parametrize("name", ["gpu", "system"])
def test_node_groups_use_their_launch_template(cluster: TfConfig, name: str) -> None:
    group = cluster.resource("aws_eks_node_group", name)
    lt = one(group["launch_template"], "launch_template")
    assert lt["id"] == f'${{aws_launch_template.node["{name}"].id}}'
    assert group["subnet_ids"] == "${var.subnet_ids}"
    assert "remote_access" not in group


# --------------------------------------------------------------------------------------------
# EKS control plane
# --------------------------------------------------------------------------------------------


def test_eks_secrets_encryption_with_customer_key(cluster: TfConfig) -> None:
    eks = cluster.resource("aws_eks_cluster", "this")
    enc = one(eks["encryption_config"], "encryption_config")
    assert enc["resources"] == ["secrets"]
    assert one(enc["provider"], "provider")["key_arn"] == "${var.cluster_kms_key_arn}"


def test_eks_all_control_plane_log_types(cluster: TfConfig) -> None:
    eks = cluster.resource("aws_eks_cluster", "this")
    types = cluster.resolve(eks["enabled_cluster_log_types"])
    assert set(types) == {"api", "audit", "authenticator", "controllerManager", "scheduler"}
    group = cluster.resource("aws_cloudwatch_log_group", "cluster")
    assert group["name"] == "/aws/eks/${var.name}/cluster"
    assert "${aws_cloudwatch_log_group.cluster}" in eks["depends_on"]


def test_eks_endpoint_private_by_default(cluster: TfConfig, root: TfConfig) -> None:
    vpc = one(cluster.resource("aws_eks_cluster", "this")["vpc_config"], "vpc_config")
    assert vpc["endpoint_private_access"] is True
    assert cluster.resolve(vpc["endpoint_public_access"]) is False
    assert root.variables["endpoint_public_access"]["default"] is False


def test_irsa_trust_is_scoped_to_the_platform_service_account(cluster: TfConfig) -> None:
    doc = cluster.data_source("aws_iam_policy_document", "platform_assume")
    stmt = one(doc["statement"], "platform trust statement")
    assert stmt["actions"] == ["sts:AssumeRoleWithWebIdentity"]
    conds = {c["variable"]: c for c in stmt["condition"]}
    sub = conds["${local.oidc_issuer_host}:sub"]
    assert sub["test"] == "StringEquals"
    assert sub["values"] == [
        "system:serviceaccount:${var.platform_namespace}:${var.platform_service_account}"
    ]
    assert conds["${local.oidc_issuer_host}:aud"]["values"] == ["sts.amazonaws.com"]
    assert cluster.variables["platform_namespace"]["default"] == "phiserve"
    assert cluster.variables["platform_service_account"]["default"] == "phiserve"


# --------------------------------------------------------------------------------------------
# S3: TLS only, no public access, customer keys
# --------------------------------------------------------------------------------------------

BUCKETS = ["models", "audit", "access_logs"]


@pytest.mark.parametrize("name", BUCKETS)
def test_bucket_policy_denies_non_tls(storage: TfConfig, name: str) -> None:
    policy = storage.resource("aws_s3_bucket_policy", name)
    assert policy["bucket"] == f"${{aws_s3_bucket.{name}.id}}"
    statements = bucket_policy_statements(storage, name)
    deny = [
        s
        for s in statements
        if s.get("effect") == "Deny"
        and any(
            c["test"] == "Bool"
            and c["variable"] == "aws:SecureTransport"
            and c["values"] == ["false"]
            for c in s.get("condition", [])
        )
    ]
    assert len(deny) == 1, f"{name}: no TLS-only deny statement"
    stmt = deny[0]
    assert stmt["actions"] == ["s3:*"]
    assert statement_principals(stmt) == ["*"]
    assert set(stmt["resources"]) == {
        f"${{aws_s3_bucket.{name}.arn}}",
        f"${{aws_s3_bucket.{name}.arn}}/*",
    }
    # The PHI buckets also refuse TLS older than 1.2 (the access-log bucket does not).
    old_tls = [
        s
        for s in statements
        if s.get("effect") == "Deny"
        and [(c["test"], c["variable"], c["values"]) for c in s.get("condition", [])]
        == [("NumericLessThan", "s3:TlsVersion", ["1.2"])]
    ]
    assert len(old_tls) == (0 if name == "access_logs" else 1), f"{name}: TLS-version deny"
    for s in old_tls:
        assert s["actions"] == ["s3:*"] and statement_principals(s) == ["*"]
        assert set(s["resources"]) == set(stmt["resources"])


@pytest.mark.parametrize(
    ("name", "key_var"), [("models", "models_kms_key_arn"), ("audit", "audit_kms_key_arn")]
)
def test_phi_buckets_use_sse_kms_and_deny_other_keys(
    storage: TfConfig, name: str, key_var: str
) -> None:
    sse = storage.resource("aws_s3_bucket_server_side_encryption_configuration", name)
    rule = one(sse["rule"], "sse rule")
    default = one(rule["apply_server_side_encryption_by_default"], "sse default")
    assert default["sse_algorithm"] == "aws:kms"
    assert default["kms_master_key_id"] == f"${{var.{key_var}}}"
    statements = bucket_policy_statements(storage, name)
    wrong_key = [
        s
        for s in statements
        if s.get("effect") == "Deny"
        and any(
            c["test"] == "StringNotEquals"
            and c["variable"] == "s3:x-amz-server-side-encryption-aws-kms-key-id"
            and c["values"] == [f"${{var.{key_var}}}"]
            for c in s.get("condition", [])
        )
    ]
    assert wrong_key, f"{name}: no deny of uploads naming another KMS key"
    sse_c = [
        s
        for s in statements
        if s.get("effect") == "Deny"
        and any(
            c["variable"] == "s3:x-amz-server-side-encryption-customer-algorithm"
            for c in s.get("condition", [])
        )
    ]
    assert sse_c, f"{name}: customer-provided keys (SSE-C) are not denied"
    # "aws:kms" without a key id means the AWS-managed aws/s3 key: must be denied too.
    no_key_id = [
        s
        for s in statements
        if s.get("effect") == "Deny"
        and {(c["test"], c["variable"], tuple(c["values"])) for c in s.get("condition", [])}
        == {
            ("Null", "s3:x-amz-server-side-encryption", ("false",)),
            ("Null", "s3:x-amz-server-side-encryption-aws-kms-key-id", ("true",)),
        }
    ]
    assert no_key_id, f"{name}: aws:kms uploads without a key id (aws/s3 key) are not denied"


@pytest.mark.parametrize("name", BUCKETS)
def test_bucket_public_access_blocked_and_acls_disabled(storage: TfConfig, name: str) -> None:
    pab = storage.resource("aws_s3_bucket_public_access_block", name)
    assert pab["bucket"] == f"${{aws_s3_bucket.{name}.id}}"
    for flag in (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ):
        assert pab[flag] is True, f"{name}: {flag}"
    own = storage.resource("aws_s3_bucket_ownership_controls", name)
    assert one(own["rule"], "ownership rule")["object_ownership"] == "BucketOwnerEnforced"


def test_every_bucket_has_public_access_block(storage: TfConfig) -> None:
    buckets = set(storage.resources["aws_s3_bucket"])
    blocked = {
        strip_interp(p["bucket"]).split(".")[1]
        for p in storage.resources["aws_s3_bucket_public_access_block"].values()
    }
    assert buckets == blocked


@pytest.mark.parametrize("name", ["models", "audit"])
def test_phi_buckets_are_versioned_and_logged(storage: TfConfig, name: str) -> None:
    versioning = storage.resource("aws_s3_bucket_versioning", name)
    assert one(versioning["versioning_configuration"], "versioning")["status"] == "Enabled"
    logging = storage.resource("aws_s3_bucket_logging", name)
    assert logging["target_bucket"] == "${aws_s3_bucket.access_logs.id}"


def test_platform_storage_policy_has_no_delete(storage: TfConfig) -> None:
    statements = document_statements(storage, "platform")
    actions = {a for s in statements for a in statement_actions(s, storage)}
    assert not any("Delete" in a or a.endswith("*") for a in actions), actions
    assert not any("Retention" in a or "LegalHold" in a or "Bypass" in a for a in actions), actions


# --------------------------------------------------------------------------------------------
# ECR
# --------------------------------------------------------------------------------------------


def test_ecr_immutable_scanned_kms(storage: TfConfig, root: TfConfig) -> None:
    repo = storage.resource("aws_ecr_repository", "this")
    assert repo["image_tag_mutability"] == "IMMUTABLE"
    assert one(repo["image_scanning_configuration"], "scanning")["scan_on_push"] is True
    enc = one(repo["encryption_configuration"], "ecr encryption")
    assert enc["encryption_type"] == "KMS"
    assert enc["kms_key"] == "${var.ecr_kms_key_arn}"
    assert root.modules["storage"]["ecr_kms_key_arn"] == "${module.keys.cluster_key_arn}"


# --------------------------------------------------------------------------------------------
# Network: endpoints, flow logs, private nodes
# --------------------------------------------------------------------------------------------


def test_vpc_endpoints_for_phi_and_key_traffic(network: TfConfig) -> None:
    s3 = network.resource("aws_vpc_endpoint", "s3")
    assert s3["vpc_endpoint_type"] == "Gateway"
    assert s3["service_name"].endswith(".s3")
    assert s3["route_table_ids"] == "${aws_route_table.private[*].id}"
    required = set(network.locals["required_interface_endpoints"])
    assert required >= {"kms", "ecr.api", "ecr.dkr", "logs", "sts"}, required
    assert "local.required_interface_endpoints" in network.locals["interface_endpoints"]
    iface = network.resource("aws_vpc_endpoint", "interface")
    assert iface["for_each"] == "${local.interface_endpoints}"
    assert iface["vpc_endpoint_type"] == "Interface"
    assert iface["private_dns_enabled"] is True
    assert iface["subnet_ids"] == "${aws_subnet.private[*].id}"
    assert iface["service_name"].endswith(".${each.value}")


def test_endpoint_security_group_allows_only_https_from_vpc(network: TfConfig) -> None:
    sg = network.resource("aws_security_group", "endpoints")
    rule = one(sg["ingress"], "endpoint ingress")
    assert (rule["from_port"], rule["to_port"], rule["protocol"]) == (443, 443, "tcp")
    assert rule["cidr_blocks"] == ["${aws_vpc.this.cidr_block}"]
    assert "egress" not in sg


def test_flow_logs_capture_all_traffic_encrypted(network: TfConfig) -> None:
    flow = network.resource("aws_flow_log", "this")
    assert flow["traffic_type"] == "ALL"
    assert flow["vpc_id"] == "${aws_vpc.this.id}"
    assert flow["log_destination"] == "${aws_cloudwatch_log_group.flow_logs.arn}"
    group = network.resource("aws_cloudwatch_log_group", "flow_logs")
    assert group["kms_key_id"] == "${var.flow_log_kms_key_arn}"


def test_no_public_ips_on_subnets_and_nodes_in_private_subnets(
    network: TfConfig, root: TfConfig
) -> None:
    for name, subnet in network.resources["aws_subnet"].items():
        assert subnet["map_public_ip_on_launch"] is False, name
    assert root.modules["cluster"]["subnet_ids"] == "${module.network.private_subnet_ids}"


def test_default_security_group_is_stripped(network: TfConfig) -> None:
    sg = network.resource("aws_default_security_group", "this")
    assert "ingress" not in sg and "egress" not in sg


def test_network_spans_at_least_two_zones(network: TfConfig) -> None:
    conditions = " ".join(
        v["condition"] for v in network.variables["availability_zones"]["validation"]
    )
    assert "length(var.availability_zones) >= 2" in conditions


# --------------------------------------------------------------------------------------------
# Logs: encrypted and retained
# --------------------------------------------------------------------------------------------


def test_every_log_group_is_encrypted_and_retained_a_year() -> None:
    seen = 0
    for name in MODULE_NAMES:
        cfg = module(name)
        for lg_name, lg in cfg.resources.get("aws_cloudwatch_log_group", {}).items():
            seen += 1
            assert lg.get("kms_key_id"), f"{name}.{lg_name}: no KMS key"
            retention = cfg.resolve(lg["retention_in_days"])
            assert isinstance(retention, int) and retention >= 365, f"{name}.{lg_name}"
    assert seen >= 2


# --------------------------------------------------------------------------------------------
# Hygiene: documented variables and outputs, aws provider only, no account ids
# --------------------------------------------------------------------------------------------

ALL_DIRS = [*(f"modules/{m}" for m in MODULE_NAMES), "environments/example"]


@pytest.mark.parametrize("rel", ALL_DIRS)
def test_variables_and_outputs_are_documented(rel: str) -> None:
    cfg = load_dir(TF_ROOT / rel)
    for name, var in cfg.variables.items():
        assert var.get("description"), f"{rel}: variable {name} has no description"
        assert var.get("type"), f"{rel}: variable {name} has no type"
    for name, out in cfg.outputs.items():
        assert out.get("description"), f"{rel}: output {name} has no description"
    for f in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
        assert (TF_ROOT / rel / f).is_file(), f"{rel}/{f} missing"
    if rel.startswith("modules/"):
        assert (TF_ROOT / rel / "README.md").is_file(), f"{rel}/README.md missing"


@pytest.mark.parametrize("rel", ALL_DIRS)
def test_only_the_aws_provider_admitting_5_100(rel: str) -> None:
    cfg = load_dir(TF_ROOT / rel)
    providers = {}
    for block in cfg.terraform:
        for rp in block.get("required_providers", []):
            providers.update(rp)
    assert set(providers) == {"aws"}, providers
    assert providers["aws"]["source"] == "hashicorp/aws"
    constraint = providers["aws"]["version"]
    assert re.fullmatch(r">= 5\.100\.0, < 6\.0\.0|~> 5\.100(\.0)?", constraint), constraint
    for rtype in [*cfg.resources, *cfg.data]:
        assert rtype.startswith("aws_"), f"{rel}: {rtype} needs another provider"


def test_no_hard_coded_account_ids() -> None:
    for tf in TF_ROOT.rglob("*.tf"):
        text = tf.read_text(encoding="utf-8")
        hits = re.findall(r"(?<![0-9])[0-9]{12}(?![0-9])", text)
        assert not hits, f"{tf.relative_to(REPO_ROOT)}: 12-digit number(s) {hits}"


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_readme_lists_every_input_and_output(name: str) -> None:
    cfg = module(name)
    readme = (TF_ROOT / "modules" / name / "README.md").read_text(encoding="utf-8")
    missing = [n for n in [*cfg.variables, *cfg.outputs] if f"| `{n}` |" not in readme]
    assert not missing, f"modules/{name}/README.md does not document: {missing}"
