################################################################################
# Customer-managed KMS keys, one per purpose, each with rotation and a key
# policy that names exactly who may use it:
#
#   models   envelope KEK for model artifacts and SSE-KMS of the model bucket;
#            the platform role may only Decrypt (and DescribeKey).
#   audit    envelope KEK for audit segments and SSE-KMS of the audit bucket;
#            the platform role may Encrypt, GenerateDataKey and Decrypt (it
#            reads back its own hash chain).
#   cluster  EKS secrets envelope encryption and ECR image encryption; used by
#            the EKS and ECR services through the account's IAM, never by the
#            platform role.
#   logs     CloudWatch Logs (control plane, VPC flow logs); usable only by
#            the CloudWatch Logs service for log groups of this account.
#
# Every key keeps the account-root statement: it is what lets IAM policies in
# this account (break-glass admins, the EKS cluster role) be granted access,
# and without it a key can become unmanageable. It is the only statement that
# carries "kms:*".
################################################################################

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  account_root_arn = "arn:${local.partition}:iam::${local.account_id}:root"

  # Management without use: these principals can administer the keys but not
  # encrypt or decrypt with them (separation of duties).
  key_admin_actions = [
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:DeleteAlias",
    "kms:DescribeKey",
    "kms:DisableKey",
    "kms:DisableKeyRotation",
    "kms:EnableKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListAliases",
    "kms:ListGrants",
    "kms:ListKeyPolicies",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:RevokeGrant",
    "kms:RotateKeyOnDemand",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateAlias",
    "kms:UpdateKeyDescription",
  ]

  keys = {
    models = {
      description = "phiserve ${var.name}: KEK and SSE-KMS key for encrypted model artifacts"
    }
    audit = {
      description = "phiserve ${var.name}: KEK and SSE-KMS key for audit segments (retained)"
    }
    cluster = {
      description = "phiserve ${var.name}: EKS secrets encryption and ECR images"
    }
    logs = {
      description = "phiserve ${var.name}: CloudWatch Logs (control plane, VPC flow logs)"
    }
  }
}

################################################################################
# Key policies
################################################################################

# The statements every key policy starts with: the account root (kms:*) and,
# when named, the key administrators (management without use). Each key's
# policy merges this document (source_policy_documents: these statements come
# first) and adds its own grants.
data "aws_iam_policy_document" "key_common" {
  #checkov:skip=CKV_AWS_109:Key policy, not an identity policy: Resource "*" in a key policy means this key only. kms:* is granted solely to the account root (the AWS default that lets IAM delegate); other principals get named actions.
  #checkov:skip=CKV_AWS_111:Key policy, not an identity policy: Resource "*" in a key policy means this key only; write actions are limited to named principals and, for CloudWatch Logs, to this account's log groups by encryption context.
  #checkov:skip=CKV_AWS_356:Key policy, not an identity policy: Resource "*" is the only valid resource in a key policy and means this key.
  statement {
    sid       = "AccountRootAdministration"
    effect    = "Allow"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = [local.account_root_arn]
    }
  }

  dynamic "statement" {
    for_each = length(var.key_administrator_arns) > 0 ? [1] : []
    content {
      sid       = "KeyAdministrators"
      effect    = "Allow"
      actions   = local.key_admin_actions
      resources = ["*"]

      principals {
        type        = "AWS"
        identifiers = var.key_administrator_arns
      }
    }
  }
}

data "aws_iam_policy_document" "models" {
  #checkov:skip=CKV_AWS_111:Key policy, not an identity policy: Resource "*" in a key policy means this key only; write actions are limited to named principals and, for CloudWatch Logs, to this account's log groups by encryption context.
  #checkov:skip=CKV_AWS_356:Key policy, not an identity policy: Resource "*" is the only valid resource in a key policy and means this key.
  source_policy_documents = [data.aws_iam_policy_document.key_common.json]

  statement {
    sid       = "PlatformDecryptModels"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:DescribeKey"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = [var.platform_role_arn]
    }
  }

  dynamic "statement" {
    for_each = length(var.model_publisher_arns) > 0 ? [1] : []
    content {
      sid       = "PublishersEncryptModels"
      effect    = "Allow"
      actions   = ["kms:Encrypt", "kms:GenerateDataKey", "kms:Decrypt", "kms:DescribeKey"]
      resources = ["*"]

      principals {
        type        = "AWS"
        identifiers = var.model_publisher_arns
      }
    }
  }
}

data "aws_iam_policy_document" "audit" {
  #checkov:skip=CKV_AWS_111:Key policy, not an identity policy: Resource "*" in a key policy means this key only; write actions are limited to named principals and, for CloudWatch Logs, to this account's log groups by encryption context.
  #checkov:skip=CKV_AWS_356:Key policy, not an identity policy: Resource "*" is the only valid resource in a key policy and means this key.
  source_policy_documents = [data.aws_iam_policy_document.key_common.json]

  statement {
    sid       = "PlatformWriteAndReadAudit"
    effect    = "Allow"
    actions   = ["kms:Encrypt", "kms:GenerateDataKey", "kms:Decrypt", "kms:DescribeKey"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = [var.platform_role_arn]
    }
  }

  dynamic "statement" {
    for_each = length(var.audit_reader_arns) > 0 ? [1] : []
    content {
      sid       = "AuditorsDecrypt"
      effect    = "Allow"
      actions   = ["kms:Decrypt", "kms:DescribeKey"]
      resources = ["*"]

      principals {
        type        = "AWS"
        identifiers = var.audit_reader_arns
      }
    }
  }
}

data "aws_iam_policy_document" "cluster" {
  source_policy_documents = [data.aws_iam_policy_document.key_common.json]
}

data "aws_iam_policy_document" "logs" {
  source_policy_documents = [data.aws_iam_policy_document.key_common.json]

  statement {
    sid    = "CloudWatchLogsOfThisAccount"
    effect = "Allow"
    actions = [
      "kms:Decrypt",
      "kms:DescribeKey",
      "kms:Encrypt",
      "kms:GenerateDataKey",
      "kms:GenerateDataKeyWithoutPlaintext",
      "kms:ReEncryptFrom",
      "kms:ReEncryptTo",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"]
    }
  }
}

################################################################################
# Keys and aliases
################################################################################

resource "aws_kms_key" "models" {
  description              = local.keys.models.description
  key_usage                = "ENCRYPT_DECRYPT"
  customer_master_key_spec = "SYMMETRIC_DEFAULT"
  enable_key_rotation      = true
  rotation_period_in_days  = var.rotation_period_in_days
  deletion_window_in_days  = var.deletion_window_in_days
  multi_region             = false
  policy                   = data.aws_iam_policy_document.models.json

  tags = merge(var.tags, { "phiserve.io/key-purpose" = "models" })
}

resource "aws_kms_key" "audit" {
  description              = local.keys.audit.description
  key_usage                = "ENCRYPT_DECRYPT"
  customer_master_key_spec = "SYMMETRIC_DEFAULT"
  enable_key_rotation      = true
  rotation_period_in_days  = var.rotation_period_in_days
  deletion_window_in_days  = var.deletion_window_in_days
  multi_region             = false
  policy                   = data.aws_iam_policy_document.audit.json

  tags = merge(var.tags, { "phiserve.io/key-purpose" = "audit" })

  # Deleting this key makes every retained audit segment unreadable, although
  # S3 Object Lock keeps the ciphertext for six years. `terraform destroy`
  # refuses while this is set; see terraform/README.md (tear-down).
  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_kms_key" "cluster" {
  description              = local.keys.cluster.description
  key_usage                = "ENCRYPT_DECRYPT"
  customer_master_key_spec = "SYMMETRIC_DEFAULT"
  enable_key_rotation      = true
  rotation_period_in_days  = var.rotation_period_in_days
  deletion_window_in_days  = var.deletion_window_in_days
  multi_region             = false
  policy                   = data.aws_iam_policy_document.cluster.json

  tags = merge(var.tags, { "phiserve.io/key-purpose" = "cluster" })
}

resource "aws_kms_key" "logs" {
  description              = local.keys.logs.description
  key_usage                = "ENCRYPT_DECRYPT"
  customer_master_key_spec = "SYMMETRIC_DEFAULT"
  enable_key_rotation      = true
  rotation_period_in_days  = var.rotation_period_in_days
  deletion_window_in_days  = var.deletion_window_in_days
  multi_region             = false
  policy                   = data.aws_iam_policy_document.logs.json

  tags = merge(var.tags, { "phiserve.io/key-purpose" = "logs" })
}

resource "aws_kms_alias" "models" {
  name          = "alias/${var.name}-models"
  target_key_id = aws_kms_key.models.key_id
}

resource "aws_kms_alias" "audit" {
  name          = "alias/${var.name}-audit"
  target_key_id = aws_kms_key.audit.key_id
}

resource "aws_kms_alias" "cluster" {
  name          = "alias/${var.name}-cluster"
  target_key_id = aws_kms_key.cluster.key_id
}

resource "aws_kms_alias" "logs" {
  name          = "alias/${var.name}-logs"
  target_key_id = aws_kms_key.logs.key_id
}
