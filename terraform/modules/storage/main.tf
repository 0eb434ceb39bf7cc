################################################################################
# Storage for phiserve:
#
#   models       the encrypted model repository (<model>/<version>/...):
#                SSE-KMS with the models key, versioned, private, TLS-only.
#   audit        encrypted audit segments: Object Lock in COMPLIANCE mode with
#                a six-year default retention (45 CFR 164.316(b)(2)), set when
#                the bucket is created; nobody, root included, can delete or
#                shorten the retention of a locked segment.
#   access-logs  S3 server access logs of the two buckets above.
#   ECR          the server image: immutable tags, scan on push, KMS.
################################################################################

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  model_bucket_name      = coalesce(var.model_bucket_name, "${var.name}-${local.account_id}-models")
  audit_bucket_name      = coalesce(var.audit_bucket_name, "${var.name}-${local.account_id}-audit")
  access_log_bucket_name = coalesce(var.access_log_bucket_name, "${var.name}-${local.account_id}-access-logs")
}

################################################################################
# TLS-only statements shared by the bucket policies
#
# Every bucket denies any request made without TLS; the two PHI buckets also
# deny TLS older than 1.2. Each bucket's policy document merges its instance
# of this document (source_policy_documents: these statements come first) and
# adds its own statements.
################################################################################

locals {
  tls_only_buckets = {
    models      = { arn = aws_s3_bucket.models.arn, deny_outdated_tls = true }
    audit       = { arn = aws_s3_bucket.audit.arn, deny_outdated_tls = true }
    access_logs = { arn = aws_s3_bucket.access_logs.arn, deny_outdated_tls = false }
  }
}

data "aws_iam_policy_document" "tls_only" {
  for_each = local.tls_only_buckets

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [each.value.arn, "${each.value.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  dynamic "statement" {
    for_each = each.value.deny_outdated_tls ? [1] : []
    content {
      sid       = "DenyOutdatedTls"
      effect    = "Deny"
      actions   = ["s3:*"]
      resources = [each.value.arn, "${each.value.arn}/*"]

      principals {
        type        = "*"
        identifiers = ["*"]
      }

      condition {
        test     = "NumericLessThan"
        variable = "s3:TlsVersion"
        values   = ["1.2"]
      }
    }
  }
}

################################################################################
# Encryption statements shared by the two PHI buckets (models, audit)
################################################################################

locals {
  phi_buckets = {
    models = { arn = aws_s3_bucket.models.arn, kms_key_arn = var.models_kms_key_arn }
    audit  = { arn = aws_s3_bucket.audit.arn, kms_key_arn = var.audit_kms_key_arn }
  }
}

data "aws_iam_policy_document" "phi_bucket" {
  for_each = local.phi_buckets

  source_policy_documents = [data.aws_iam_policy_document.tls_only[each.key].json]

  # Uploads without an encryption header get the bucket default (its own key).
  # An explicit header must name SSE-KMS together with that key's ARN: no
  # SSE-S3, no SSE-C, no aws/s3, no other key.
  statement {
    sid       = "DenyNonKmsEncryptionHeader"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${each.value.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Null"
      variable = "s3:x-amz-server-side-encryption"
      values   = ["false"]
    }

    condition {
      test     = "StringNotEquals"
      variable = "s3:x-amz-server-side-encryption"
      values   = ["aws:kms"]
    }
  }

  statement {
    sid       = "DenyWrongKmsKey"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${each.value.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Null"
      variable = "s3:x-amz-server-side-encryption-aws-kms-key-id"
      values   = ["false"]
    }

    condition {
      test     = "StringNotEquals"
      variable = "s3:x-amz-server-side-encryption-aws-kms-key-id"
      values   = [each.value.kms_key_arn]
    }
  }

  # "aws:kms" without a key id would silently use the AWS-managed aws/s3 key.
  statement {
    sid       = "DenyKmsWithoutKeyId"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${each.value.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Null"
      variable = "s3:x-amz-server-side-encryption"
      values   = ["false"]
    }

    condition {
      test     = "Null"
      variable = "s3:x-amz-server-side-encryption-aws-kms-key-id"
      values   = ["true"]
    }
  }

  statement {
    sid       = "DenyCustomerProvidedKeys"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${each.value.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Null"
      variable = "s3:x-amz-server-side-encryption-customer-algorithm"
      values   = ["false"]
    }
  }
}

################################################################################
# Access-log bucket
################################################################################

resource "aws_s3_bucket" "access_logs" {
  #checkov:skip=CKV_AWS_145:S3 server access logging can only deliver to a target bucket whose default encryption is SSE-S3 (AES256); SSE-KMS is not supported for log delivery. The logs hold request metadata, not PHI.
  #checkov:skip=CKV_AWS_18:This is the access-log target itself; logging it into itself would loop and logging it elsewhere needs yet another bucket. Its own changes are recorded by CloudTrail.
  #checkov:skip=CKV_AWS_144:Cross-region replication is a contingency-plan decision (164.308(a)(7)) that needs a second region and destination bucket; left to the adopter (see terraform/README.md).
  bucket        = local.access_log_bucket_name
  force_destroy = false

  tags = merge(var.tags, { "phiserve.io/bucket-purpose" = "access-logs" })
}

resource "aws_s3_bucket_ownership_controls" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id

  rule {
    id     = "retain-then-expire"
    status = "Enabled"

    filter {}

    expiration {
      days = var.access_log_retention_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 30
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.access_logs]
}

resource "aws_s3_bucket_notification" "access_logs" {
  bucket      = aws_s3_bucket.access_logs.id
  eventbridge = true
}

data "aws_iam_policy_document" "access_logs" {
  source_policy_documents = [data.aws_iam_policy_document.tls_only["access_logs"].json]

  statement {
    sid     = "S3ServerAccessLogDelivery"
    effect  = "Allow"
    actions = ["s3:PutObject"]
    resources = [
      "${aws_s3_bucket.access_logs.arn}/s3-access/*",
    ]

    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.models.arn, aws_s3_bucket.audit.arn]
    }
  }
}

resource "aws_s3_bucket_policy" "access_logs" {
  bucket = aws_s3_bucket.access_logs.id
  policy = data.aws_iam_policy_document.access_logs.json

  depends_on = [aws_s3_bucket_public_access_block.access_logs]
}

################################################################################
# Model repository bucket
################################################################################

resource "aws_s3_bucket" "models" {
  #checkov:skip=CKV_AWS_144:Cross-region replication is a contingency-plan decision (164.308(a)(7)) that needs a second region, a replica key and a destination bucket; left to the adopter (see terraform/README.md). Model artifacts can also be re-exported.
  bucket        = local.model_bucket_name
  force_destroy = false

  tags = merge(var.tags, { "phiserve.io/bucket-purpose" = "models" })
}

resource "aws_s3_bucket_ownership_controls" "models" {
  bucket = aws_s3_bucket.models.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "models" {
  bucket = aws_s3_bucket.models.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "models" {
  bucket = aws_s3_bucket.models.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "models" {
  bucket = aws_s3_bucket.models.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.models_kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "models" {
  bucket        = aws_s3_bucket.models.id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "s3-access/${local.model_bucket_name}/"

  depends_on = [aws_s3_bucket_policy.access_logs]
}

resource "aws_s3_bucket_lifecycle_configuration" "models" {
  bucket = aws_s3_bucket.models.id

  rule {
    id     = "expire-old-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.model_noncurrent_version_retention_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.models]
}

resource "aws_s3_bucket_notification" "models" {
  bucket      = aws_s3_bucket.models.id
  eventbridge = true
}

resource "aws_s3_bucket_policy" "models" {
  bucket = aws_s3_bucket.models.id
  policy = data.aws_iam_policy_document.phi_bucket["models"].json

  depends_on = [aws_s3_bucket_public_access_block.models]
}

################################################################################
# Audit bucket (Object Lock, COMPLIANCE mode)
################################################################################

resource "aws_s3_bucket" "audit" {
  #checkov:skip=CKV_AWS_144:Cross-region replication of audit segments is a contingency-plan decision (164.308(a)(7)) that needs a second region, a replica key and an Object-Lock destination with the same retention; left to the adopter (see terraform/README.md).
  bucket        = local.audit_bucket_name
  force_destroy = false

  # Object Lock can only be relied on when it is enabled as the bucket is
  # created; the bucket is then versioned for good.
  object_lock_enabled = true

  tags = merge(var.tags, {
    "phiserve.io/bucket-purpose" = "audit"
    "phiserve.io/retention"      = "${var.audit_retention_years}y-compliance"
  })

  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_s3_bucket_ownership_controls" "audit" {
  bucket = aws_s3_bucket.audit.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "audit" {
  bucket = aws_s3_bucket.audit.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "audit" {
  bucket = aws_s3_bucket.audit.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_object_lock_configuration" "audit" {
  bucket = aws_s3_bucket.audit.id

  # COMPLIANCE, not GOVERNANCE: no principal, the account root included, can
  # delete a locked segment version or shorten its retention.
  rule {
    default_retention {
      mode  = "COMPLIANCE"
      years = var.audit_retention_years
    }
  }

  depends_on = [aws_s3_bucket_versioning.audit]

  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "audit" {
  bucket = aws_s3_bucket.audit.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.audit_kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "audit" {
  bucket        = aws_s3_bucket.audit.id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "s3-access/${local.audit_bucket_name}/"

  depends_on = [aws_s3_bucket_policy.access_logs]
}

resource "aws_s3_bucket_lifecycle_configuration" "audit" {
  bucket = aws_s3_bucket.audit.id

  # Retention is enforced by Object Lock; this only cleans up uploads that
  # never completed (they hold no record: a record is durable only once its
  # segment upload completed).
  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.audit]
}

resource "aws_s3_bucket_notification" "audit" {
  bucket      = aws_s3_bucket.audit.id
  eventbridge = true
}

resource "aws_s3_bucket_policy" "audit" {
  bucket = aws_s3_bucket.audit.id
  policy = data.aws_iam_policy_document.phi_bucket["audit"].json

  depends_on = [aws_s3_bucket_public_access_block.audit]
}

################################################################################
# Container image repository
################################################################################

resource "aws_ecr_repository" "this" {
  name                 = var.ecr_repository_name
  image_tag_mutability = "IMMUTABLE"
  force_delete         = false

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = var.ecr_kms_key_arn
  }

  tags = var.tags
}

resource "aws_ecr_lifecycle_policy" "this" {
  repository = aws_ecr_repository.this.name

  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Expire untagged images (tags are immutable; tagged images are kept)"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = var.ecr_untagged_image_expiry_days
        }
        action = {
          type = "expire"
        }
      },
    ]
  })
}

################################################################################
# What the platform role may do here: the identity policy of the IRSA role
# (attached by the caller, e.g. the cluster module's
# platform_role_inline_policies). It serves exactly two clients the Helm chart
# runs under that role:
#
#   model-sync     init container: `aws s3 sync s3://<models>/<prefix> <dir>`
#                  lists the prefix (ListObjectsV2 Prefix=<prefix>) and GETs
#                  each object; S3 decrypts them with the models key on the
#                  pod's behalf (kms:Decrypt through S3).
#   audit-shipper  sidecar: `aws s3 sync <dir> s3://<audit>/<prefix>/<pod>/`
#                  lists the destination to compare, then PUTs new segments
#                  (multipart above 8 MiB) with SSE-KMS under the audit key:
#                  S3 calls kms:GenerateDataKey, and kms:Decrypt to assemble
#                  the parts, on the pod's behalf.
#
# Nothing else: no s3:*, no Delete*, no GetObject on the audit bucket, no
# PutObjectRetention / PutObjectLegalHold / BypassGovernanceRetention (so an
# upload cannot set its own Object Lock headers: the bucket default applies),
# no AbortMultipartUpload (the audit bucket's lifecycle rule aborts stale
# uploads after 7 days).
#
# The KMS statements only cover S3 using the keys for this bucket and prefix
# (kms:ViaService + the aws:s3:arn encryption context). The server's own
# envelope encryption (models key: Decrypt; audit key: Encrypt,
# GenerateDataKey, Decrypt, called directly, not through S3) is granted by
# the key policies of the keys module, which name the platform role.
#
# ARNs are built from the bucket names (known before apply) so the policy is
# fully rendered in `terraform plan` and can be reviewed and tested there.
################################################################################

locals {
  model_bucket_arn = "arn:${local.partition}:s3:::${local.model_bucket_name}"
  audit_bucket_arn = "arn:${local.partition}:s3:::${local.audit_bucket_name}"

  # The service S3 calls KMS as, in this region (kms:ViaService).
  s3_via_service = "s3.${data.aws_region.current.name}.amazonaws.com"

  model_objects = "${local.model_bucket_arn}/${var.model_repository_prefix}*"
  audit_objects = "${local.audit_bucket_arn}/${var.audit_prefix}*"
}

data "aws_iam_policy_document" "platform" {
  statement {
    sid       = "ListModelRepositoryPrefix"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [local.model_bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.model_repository_prefix}*"]
    }
  }

  statement {
    sid       = "ReadModelArtifacts"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = [local.model_objects]
  }

  # SSE-KMS reads: S3 decrypts the object (or its bucket key) with the models
  # key on the caller's behalf. The encryption context is the bucket ARN with
  # an S3 Bucket Key, the object ARN without one.
  statement {
    sid       = "DecryptModelArtifactsThroughS3"
    effect    = "Allow"
    actions   = ["kms:Decrypt"]
    resources = [var.models_kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.s3_via_service]
    }

    condition {
      test     = "StringLike"
      variable = "kms:EncryptionContext:aws:s3:arn"
      values   = [local.model_bucket_arn, local.model_objects]
    }
  }

  dynamic "statement" {
    for_each = var.enable_audit_shipping ? [1] : []
    content {
      sid       = "ListAuditPrefix"
      effect    = "Allow"
      actions   = ["s3:ListBucket"]
      resources = [local.audit_bucket_arn]

      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${var.audit_prefix}*"]
      }
    }
  }

  # Write-once: new segment versions only. Deleting or re-locking is not
  # granted, and COMPLIANCE-mode Object Lock keeps every version anyway.
  dynamic "statement" {
    for_each = var.enable_audit_shipping ? [1] : []
    content {
      sid       = "WriteAuditSegments"
      effect    = "Allow"
      actions   = ["s3:PutObject"]
      resources = [local.audit_objects]
    }
  }

  # SSE-KMS uploads: GenerateDataKey for the object (or bucket) key, Decrypt
  # for S3 to complete multipart uploads. The bucket policy separately denies
  # uploads naming any key but the audit key's ARN.
  dynamic "statement" {
    for_each = var.enable_audit_shipping ? [1] : []
    content {
      sid       = "EncryptAuditSegmentsThroughS3"
      effect    = "Allow"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = [var.audit_kms_key_arn]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = [local.s3_via_service]
      }

      condition {
        test     = "StringLike"
        variable = "kms:EncryptionContext:aws:s3:arn"
        values   = [local.audit_bucket_arn, local.audit_objects]
      }
    }
  }
}
