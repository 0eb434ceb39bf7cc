"""The platform role's identity policy (storage module's ``platform_policy_json``, attached to
the IRSA role by the example): exactly what the chart's model-sync init container and audit
shipper need, and together with the key and bucket policies, enough for them to work.

Read from the HCL and rendered with sample names, then fed to a small IAM evaluator
(tests/terraform/iam_eval.py) with the requests the AWS CLI actually makes. The rendered JSON of
the real provider is checked by the ``storage_platform_policy`` runs of
fixtures/example_plan.tftest.hcl.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.terraform.iam_eval import Request, Statement, allows, denies, statements
from tests.terraform.tfhelpers import (
    REPO_ROOT,
    TfConfig,
    document_statements,
    example,
    module,
    policy_reference,
    statement_actions,
    statement_principals,
)

pytest.importorskip("hcl2", reason="python-hcl2 is not installed in this environment")

REGION = "eu-west-1"
MODELS_BUCKET = "phiserve-prod-123456789012-models"
AUDIT_BUCKET = "phiserve-prod-123456789012-audit"
MODELS_ARN = f"arn:aws:s3:::{MODELS_BUCKET}"
AUDIT_ARN = f"arn:aws:s3:::{AUDIT_BUCKET}"
MODELS_KEY = "arn:aws:kms:eu-west-1:123456789012:key/11111111-1111-1111-1111-111111111111"
AUDIT_KEY = "arn:aws:kms:eu-west-1:123456789012:key/22222222-2222-2222-2222-222222222222"
OTHER_KEY = "arn:aws:kms:eu-west-1:123456789012:key/99999999-9999-9999-9999-999999999999"
VIA_S3 = f"s3.{REGION}.amazonaws.com"

ENV: dict[str, Any] = {
    "local.model_bucket_name": MODELS_BUCKET,
    "local.audit_bucket_name": AUDIT_BUCKET,
    "local.partition": "aws",
    "data.aws_region.current.name": REGION,
    "var.models_kms_key_arn": MODELS_KEY,
    "var.audit_kms_key_arn": AUDIT_KEY,
    "aws_s3_bucket.models.arn": MODELS_ARN,
    "aws_s3_bucket.audit.arn": AUDIT_ARN,
}

# What each statement may do, on what, under which conditions: the whole policy.
EXPECTED = {
    "ListModelRepositoryPrefix": (
        ["s3:ListBucket"],
        [MODELS_ARN],
        {("StringLike", "s3:prefix"): ["repository/*"]},
    ),
    "ReadModelArtifacts": (["s3:GetObject"], [f"{MODELS_ARN}/repository/*"], {}),
    "DecryptModelArtifactsThroughS3": (
        ["kms:Decrypt"],
        [MODELS_KEY],
        {
            ("StringEquals", "kms:ViaService"): [VIA_S3],
            ("StringLike", "kms:EncryptionContext:aws:s3:arn"): [
                MODELS_ARN,
                f"{MODELS_ARN}/repository/*",
            ],
        },
    ),
    "ListAuditPrefix": (
        ["s3:ListBucket"],
        [AUDIT_ARN],
        {("StringLike", "s3:prefix"): ["audit/*"]},
    ),
    "WriteAuditSegments": (["s3:PutObject"], [f"{AUDIT_ARN}/audit/*"], {}),
    "EncryptAuditSegmentsThroughS3": (
        ["kms:Decrypt", "kms:GenerateDataKey"],
        [AUDIT_KEY],
        {
            ("StringEquals", "kms:ViaService"): [VIA_S3],
            ("StringLike", "kms:EncryptionContext:aws:s3:arn"): [
                AUDIT_ARN,
                f"{AUDIT_ARN}/audit/*",
            ],
        },
    ),
}
AUDIT_SIDS = {"ListAuditPrefix", "WriteAuditSegments", "EncryptAuditSegmentsThroughS3"}


@pytest.fixture(scope="module")
def storage() -> TfConfig:
    return module("storage")


@pytest.fixture(scope="module")
def keys() -> TfConfig:
    return module("keys")


@pytest.fixture(scope="module")
def root() -> TfConfig:
    return example()


@pytest.fixture(scope="module")
def platform(storage: TfConfig) -> list[Statement]:
    return statements(storage, "platform", ENV)


def _bucket_policy(storage: TfConfig, bucket: str) -> list[Statement]:
    """The rendered policy that ``aws_s3_bucket_policy.<bucket>`` attaches."""
    doc, key = policy_reference(storage.resource("aws_s3_bucket_policy", bucket)["policy"])
    return statements(storage, doc, ENV, key)


@pytest.fixture(scope="module")
def models_bucket_policy(storage: TfConfig) -> list[Statement]:
    return _bucket_policy(storage, "models")


@pytest.fixture(scope="module")
def audit_bucket_policy(storage: TfConfig) -> list[Statement]:
    return _bucket_policy(storage, "audit")


def _tls(extra: dict[str, str] | None = None) -> dict[str, str]:
    ctx = {"aws:SecureTransport": "true", "s3:TlsVersion": "1.3"}
    ctx.update(extra or {})
    return ctx


def _s3_allowed(identity: list[Statement], bucket: list[Statement], req: Request) -> bool:
    """Same-account S3: the identity policy must allow, and the bucket policy must not deny."""
    return allows(identity, req) and not denies(bucket, req)


# --------------------------------------------------------------------------------------------
# The policy itself
# --------------------------------------------------------------------------------------------


def test_platform_policy_is_exactly_the_expected_statements(platform: list[Statement]) -> None:
    got = {
        s.sid: (
            sorted(s.actions),
            sorted(s.resources),
            {(t, k): sorted(v) for t, k, v in s.conditions},
        )
        for s in platform
    }
    assert len(got) == len(platform), "duplicate Sids"
    want = {
        sid: (sorted(a), sorted(r), {k: sorted(v) for k, v in c.items()})
        for sid, (a, r, c) in EXPECTED.items()
    }
    assert got == want
    assert all(s.effect == "Allow" for s in platform)


def test_platform_policy_never_grants_wildcards_deletes_or_lock_changes(
    platform: list[Statement],
) -> None:
    actions = {a for s in platform for a in s.actions}
    assert not any("*" in a for a in actions), actions
    assert not any(a.startswith("s3:Delete") for a in actions), actions
    forbidden = ("Retention", "LegalHold", "Bypass", "Acl", "Policy", "Tagging", "Abort")
    assert not any(f in a for a in actions for f in forbidden), actions
    for s in platform:
        for r in s.resources:
            assert r != "*" and not r.endswith(":::*"), (s.sid, r)
            if r.startswith("arn:aws:s3:::") and "/" in r:
                # Object wildcards only after a prefix: never the whole bucket.
                assert re.fullmatch(r"arn:aws:s3:::[a-z0-9.-]+/([A-Za-z0-9._-]+/)+\*", r), r


def test_audit_statements_exist_only_with_audit_shipping(storage: TfConfig) -> None:
    doc = storage.data_source("aws_iam_policy_document", "platform")
    static = {s["sid"] for s in doc.get("statement", [])}
    assert not static & AUDIT_SIDS, "audit access must not be unconditional"
    gated = set()
    for dyn in doc.get("dynamic", []):
        body = dyn["statement"]
        assert body["for_each"] == "${var.enable_audit_shipping ? [1] : []}"
        gated |= {c["sid"] for c in body["content"]}
    assert gated == AUDIT_SIDS
    assert storage.variables["enable_audit_shipping"]["default"] is True


def test_policy_arns_name_the_buckets_the_module_creates(storage: TfConfig) -> None:
    assert storage.resource("aws_s3_bucket", "models")["bucket"] == "${local.model_bucket_name}"
    assert storage.resource("aws_s3_bucket", "audit")["bucket"] == "${local.audit_bucket_name}"
    assert (
        storage.locals["model_bucket_arn"]
        == "arn:${local.partition}:s3:::${local.model_bucket_name}"
    )
    assert (
        storage.locals["audit_bucket_arn"]
        == "arn:${local.partition}:s3:::${local.audit_bucket_name}"
    )
    assert storage.locals["s3_via_service"] == "s3.${data.aws_region.current.name}.amazonaws.com"


def _prefix_regex(cfg: TfConfig, name: str) -> str:
    conditions = [v["condition"] for v in cfg.variables[name]["validation"]]
    found = [
        m.group(1) for c in conditions for m in [re.search(r'regex\("(.+?)",\s*var\.', c)] if m
    ]
    assert len(found) == 1, conditions
    return found[0].replace("\\\\", "\\")


@pytest.mark.parametrize("name", ["model_repository_prefix", "audit_prefix"])
def test_prefix_validation(storage: TfConfig, name: str) -> None:
    regex = _prefix_regex(storage, name)
    default = storage.variables[name]["default"]
    assert re.fullmatch(regex, default)
    for good in ("repository/", "audit/", "teams/radiology/", "v1.2_models-a/"):
        assert re.fullmatch(regex, good), good
    # Empty would open the whole bucket; wildcards and policy variables would widen it.
    for bad in (
        "",
        "/",
        "repository",
        "/repository/",
        "a//",
        "*",
        "repo*/",
        "${aws:username}/",
        "a/../",
    ):
        assert not re.fullmatch(regex, bad), bad


# --------------------------------------------------------------------------------------------
# The requests the chart makes: allowed by identity + bucket policy; neighbours refused
# --------------------------------------------------------------------------------------------


def test_model_sync_can_list_and_read_the_repository(
    platform: list[Statement], models_bucket_policy: list[Statement]
) -> None:
    # `aws s3 sync s3://<bucket>/repository <dir>`: the CLI lists Prefix=repository/ (it adds
    # the slash), then GETs each key.
    ok = [
        Request("s3:ListBucket", MODELS_ARN, _tls({"s3:prefix": "repository/"})),
        Request("s3:GetObject", f"{MODELS_ARN}/repository/resnet/1/model.onnx.enc", _tls()),
        Request("s3:GetObject", f"{MODELS_ARN}/repository/resnet/1/manifest.json", _tls()),
    ]
    for req in ok:
        assert _s3_allowed(platform, models_bucket_policy, req), req
    refused = [
        Request("s3:ListBucket", MODELS_ARN, _tls()),  # the whole bucket
        Request("s3:ListBucket", MODELS_ARN, _tls({"s3:prefix": "staging/"})),
        Request("s3:GetObject", f"{MODELS_ARN}/staging/resnet/1/model.onnx.enc", _tls()),
        Request("s3:PutObject", f"{MODELS_ARN}/repository/resnet/2/model.onnx.enc", _tls()),
        Request("s3:DeleteObject", f"{MODELS_ARN}/repository/resnet/1/model.onnx.enc", _tls()),
        Request("s3:GetObjectVersion", f"{MODELS_ARN}/repository/resnet/1/model.onnx.enc", _tls()),
    ]
    for req in refused:
        assert not _s3_allowed(platform, models_bucket_policy, req), req
    # Without TLS the bucket policy refuses even what the role may do.
    plain = Request(
        "s3:GetObject",
        f"{MODELS_ARN}/repository/m/1/model.onnx.enc",
        {"aws:SecureTransport": "false"},
    )
    assert denies(models_bucket_policy, plain)


def test_audit_shipper_can_list_and_upload_with_the_audit_key(
    platform: list[Statement], audit_bucket_policy: list[Statement]
) -> None:
    # audit-shipper.sh: `aws s3 sync <dir> s3://<bucket>/audit/<pod>/ --sse aws:kms
    # --sse-kms-key-id <audit key ARN>` (make helm-values sets audit.s3.kmsKeyId to it), or no
    # header when kmsKeyId is empty (the bucket default applies).
    sse = {
        "s3:x-amz-server-side-encryption": "aws:kms",
        "s3:x-amz-server-side-encryption-aws-kms-key-id": AUDIT_KEY,
    }
    segment = f"{AUDIT_ARN}/audit/phiserve-7d9f-abcde/seg-000001.pal"
    ok = [
        Request("s3:ListBucket", AUDIT_ARN, _tls({"s3:prefix": "audit/phiserve-7d9f-abcde/"})),
        Request("s3:PutObject", segment, _tls(sse)),
        Request("s3:PutObject", segment, _tls()),
        Request("s3:PutObject", f"{AUDIT_ARN}/audit/audit-key.json", _tls(sse)),
    ]
    for req in ok:
        assert _s3_allowed(platform, audit_bucket_policy, req), req

    wrong_key = {**sse, "s3:x-amz-server-side-encryption-aws-kms-key-id": OTHER_KEY}
    key_id_only = {
        **sse,
        "s3:x-amz-server-side-encryption-aws-kms-key-id": "22222222-2222-2222-2222-222222222222",
    }
    refused = [
        Request("s3:PutObject", segment, _tls(wrong_key)),
        Request("s3:PutObject", segment, _tls(key_id_only)),
        Request("s3:PutObject", segment, _tls({"s3:x-amz-server-side-encryption": "aws:kms"})),
        Request("s3:PutObject", segment, _tls({"s3:x-amz-server-side-encryption": "AES256"})),
        Request("s3:PutObject", f"{AUDIT_ARN}/elsewhere/seg-000001.pal", _tls(sse)),
        Request("s3:ListBucket", AUDIT_ARN, _tls()),
        Request("s3:GetObject", segment, _tls()),
        Request("s3:DeleteObject", segment, _tls()),
        Request("s3:DeleteObjectVersion", segment, _tls()),
        Request("s3:PutObjectRetention", segment, _tls()),
        Request("s3:PutObjectLegalHold", segment, _tls()),
        Request("s3:BypassGovernanceRetention", segment, _tls()),
        Request("s3:PutObject", f"{MODELS_ARN}/repository/m/1/model.onnx.enc", _tls()),
    ]
    for req in refused:
        assert not _s3_allowed(platform, audit_bucket_policy, req), req


def _kms(action: str, key: str, via: str, s3_arn: str) -> Request:
    return Request(action, key, {"kms:ViaService": via, "kms:EncryptionContext:aws:s3:arn": s3_arn})


def test_kms_identity_grants_only_s3_use_for_these_buckets(platform: list[Statement]) -> None:
    ok = [
        # Reads of SSE-KMS model objects, with and without an S3 Bucket Key.
        _kms("kms:Decrypt", MODELS_KEY, VIA_S3, MODELS_ARN),
        _kms("kms:Decrypt", MODELS_KEY, VIA_S3, f"{MODELS_ARN}/repository/m/1/model.onnx.enc"),
        # Uploads of audit segments; Decrypt completes multipart uploads.
        _kms("kms:GenerateDataKey", AUDIT_KEY, VIA_S3, AUDIT_ARN),
        _kms("kms:GenerateDataKey", AUDIT_KEY, VIA_S3, f"{AUDIT_ARN}/audit/p/seg-1.pal"),
        _kms("kms:Decrypt", AUDIT_KEY, VIA_S3, f"{AUDIT_ARN}/audit/p/seg-1.pal"),
    ]
    for req in ok:
        assert allows(platform, req), req
    refused = [
        _kms("kms:Decrypt", MODELS_KEY, "secretsmanager.eu-west-1.amazonaws.com", MODELS_ARN),
        _kms("kms:Decrypt", MODELS_KEY, "s3.us-east-1.amazonaws.com", MODELS_ARN),
        _kms("kms:Decrypt", MODELS_KEY, VIA_S3, "arn:aws:s3:::someone-elses-bucket"),
        _kms("kms:Decrypt", MODELS_KEY, VIA_S3, f"{MODELS_ARN}/staging/m/1/model.onnx.enc"),
        _kms("kms:GenerateDataKey", MODELS_KEY, VIA_S3, MODELS_ARN),
        _kms("kms:Encrypt", AUDIT_KEY, VIA_S3, AUDIT_ARN),
        _kms("kms:GenerateDataKey", AUDIT_KEY, VIA_S3, f"{AUDIT_ARN}/elsewhere/x"),
        _kms("kms:GenerateDataKey", OTHER_KEY, VIA_S3, AUDIT_ARN),
        Request("kms:Decrypt", MODELS_KEY, {}),  # direct use: granted by the key policy, not here
    ]
    for req in refused:
        assert not allows(platform, req), req


# --------------------------------------------------------------------------------------------
# Together with the key policies (keys module) and the example's wiring
# --------------------------------------------------------------------------------------------


def _key_policy_platform_actions(keys: TfConfig, doc: str) -> set[str]:
    found: set[str] = set()
    for raw in document_statements(keys, doc):
        if "${var.platform_role_arn}" in statement_principals(raw):
            assert not raw.get("condition"), f"{doc}: the key policy grant must not be narrowed"
            found |= set(statement_actions(raw, keys))
    return found


def test_key_policies_admit_every_kms_action_the_identity_policy_uses(
    keys: TfConfig, platform: list[Statement]
) -> None:
    """Same account, key policy names the role: the S3 paths need the key policy to allow them.
    The key policy contract stays (models: Decrypt/DescribeKey; audit: Encrypt,
    GenerateDataKey, Decrypt, DescribeKey) and covers the server's direct KEK use too."""
    by_key = {MODELS_KEY: "models", AUDIT_KEY: "audit"}
    for s in platform:
        kms_actions = {a for a in s.actions if a.startswith("kms:")}
        if not kms_actions:
            continue
        (key,) = s.resources
        granted = _key_policy_platform_actions(keys, by_key[key])
        assert kms_actions <= granted, (s.sid, kms_actions - granted)
    assert _key_policy_platform_actions(keys, "models") == {"kms:Decrypt", "kms:DescribeKey"}
    assert _key_policy_platform_actions(keys, "audit") == {
        "kms:Encrypt",
        "kms:GenerateDataKey",
        "kms:Decrypt",
        "kms:DescribeKey",
    }


def test_example_attaches_the_policy_to_the_platform_role(root: TfConfig) -> None:
    cluster = module("cluster")
    inline = root.modules["cluster"]["platform_role_inline_policies"]
    assert inline == {"phiserve-storage": "${module.storage.platform_policy_json}"}
    policy = cluster.resource("aws_iam_role_policy", "platform")
    assert policy["role"] == "${aws_iam_role.platform.id}"
    assert policy["for_each"] == "${var.platform_role_inline_policies}"
    assert policy["policy"] == "${each.value}"


def test_example_passes_prefixes_and_the_shipping_switch(root: TfConfig, storage: TfConfig) -> None:
    storage_args = root.modules["storage"]
    for name in ("model_repository_prefix", "audit_prefix", "enable_audit_shipping"):
        assert storage_args[name] == f"${{var.{name}}}", name
        assert root.variables[name]["default"] == storage.variables[name]["default"], name
    for name, source in (
        ("model_repository_prefix", "module.storage.model_repository_prefix"),
        ("audit_prefix", "module.storage.audit_prefix"),
        ("audit_shipping_enabled", "module.storage.audit_shipping_enabled"),
    ):
        assert root.outputs[name]["value"] == f"${{{source}}}", name


def test_shipper_key_is_the_key_the_audit_bucket_admits(root: TfConfig) -> None:
    """make helm-values writes audit.s3.kmsKeyId from the audit_kms_key_arn output; the audit
    bucket policy compares the upload's key id with the storage module's audit_kms_key_arn.
    Both must be the same ARN, module.keys.audit_key_arn, or every upload is denied."""
    assert root.outputs["audit_kms_key_arn"]["value"] == "${module.keys.audit_key_arn}"
    assert root.modules["storage"]["audit_kms_key_arn"] == "${module.keys.audit_key_arn}"
    script = (REPO_ROOT / "terraform" / "scripts" / "helm-values.sh").read_text(encoding="utf-8")
    assert "kmsKeyId: {q(value('audit_kms_key_arn'))}" in script


def test_chart_examples_use_the_prefixes_the_role_is_scoped_to(storage: TfConfig) -> None:
    """The chart's examples name the same prefixes (the sync path gets a trailing slash)."""
    yaml = pytest.importorskip("yaml")
    model_prefix = storage.variables["model_repository_prefix"]["default"]
    audit_prefix = storage.variables["audit_prefix"]["default"]
    seen = 0
    for name in ("gpu.yaml", "production.yaml"):
        path = REPO_ROOT / "helm" / "phiserve" / "examples" / name
        if not path.is_file():
            continue
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        s3 = (values.get("modelRepository") or {}).get("s3") or {}
        if s3.get("bucket"):
            seen += 1
            assert s3.get("prefix", "").strip("/") + "/" == model_prefix, (name, s3)
        audit_s3 = (values.get("audit") or {}).get("s3") or {}
        if audit_s3.get("bucket"):
            assert audit_s3.get("prefix", "audit").strip("/") + "/" == audit_prefix, (
                name,
                audit_s3,
            )
    if not seen:
        pytest.skip("no chart example reads models from S3")
