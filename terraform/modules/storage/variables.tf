variable "name" {
  description = "Prefix of the bucket names (<name>-<account id>-models, -audit, -access-logs) unless they are set explicitly."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,28}[a-z0-9]$", var.name))
    error_message = "name must be 2-30 lowercase letters, digits or '-', starting and ending with a letter or digit (it becomes part of S3 bucket names)."
  }
}

variable "model_bucket_name" {
  description = "Explicit name of the model repository bucket; null derives it from name and the account id."
  type        = string
  default     = null

  validation {
    condition     = var.model_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.model_bucket_name))
    error_message = "model_bucket_name must be a valid S3 bucket name (3-63 lowercase letters, digits, '.' or '-')."
  }
}

variable "audit_bucket_name" {
  description = "Explicit name of the audit bucket; null derives it from name and the account id."
  type        = string
  default     = null

  validation {
    condition     = var.audit_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.audit_bucket_name))
    error_message = "audit_bucket_name must be a valid S3 bucket name (3-63 lowercase letters, digits, '.' or '-')."
  }
}

variable "access_log_bucket_name" {
  description = "Explicit name of the S3 access-log bucket; null derives it from name and the account id."
  type        = string
  default     = null

  validation {
    condition     = var.access_log_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.access_log_bucket_name))
    error_message = "access_log_bucket_name must be a valid S3 bucket name (3-63 lowercase letters, digits, '.' or '-')."
  }
}

variable "models_kms_key_arn" {
  description = "ARN of the models KMS key (SSE-KMS default of the model bucket; uploads naming another key are denied)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-zA-Z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/", var.models_kms_key_arn))
    error_message = "models_kms_key_arn must be a KMS key ARN (arn:<partition>:kms:<region>:<account>:key/<id>), not an alias: the bucket policy compares it with the upload's key id."
  }
}

variable "audit_kms_key_arn" {
  description = "ARN of the audit KMS key (SSE-KMS default of the audit bucket; uploads naming another key are denied)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-zA-Z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/", var.audit_kms_key_arn))
    error_message = "audit_kms_key_arn must be a KMS key ARN (arn:<partition>:kms:<region>:<account>:key/<id>), not an alias."
  }
}

variable "ecr_kms_key_arn" {
  description = "ARN of the KMS key that encrypts the ECR repository (the cluster key of the keys module)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-zA-Z-]*:kms:", var.ecr_kms_key_arn))
    error_message = "ecr_kms_key_arn must be a KMS key ARN."
  }
}

variable "audit_retention_years" {
  description = "Default Object Lock retention (COMPLIANCE mode) of every audit segment, in years. HIPAA asks six years for required documentation (45 CFR 164.316(b)(2)); it cannot be shortened for segments already written."
  type        = number
  default     = 6

  validation {
    condition     = var.audit_retention_years >= 6 && var.audit_retention_years <= 100 && floor(var.audit_retention_years) == var.audit_retention_years
    error_message = "audit_retention_years must be a whole number of at least 6 (45 CFR 164.316(b)(2)) and at most 100."
  }
}

variable "model_noncurrent_version_retention_days" {
  description = "Days a replaced (noncurrent) version of a model object is kept before it expires."
  type        = number
  default     = 365

  validation {
    condition     = var.model_noncurrent_version_retention_days >= 1
    error_message = "model_noncurrent_version_retention_days must be at least 1."
  }
}

variable "access_log_retention_days" {
  description = "Days S3 server access logs are kept (default about six years, like the audit trail)."
  type        = number
  default     = 2192

  validation {
    condition     = var.access_log_retention_days >= 365
    error_message = "access_log_retention_days must be at least 365."
  }
}

variable "ecr_repository_name" {
  description = "Name of the ECR repository for the phiserve server image."
  type        = string
  default     = "phiserve"

  validation {
    condition     = can(regex("^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$", var.ecr_repository_name)) && length(var.ecr_repository_name) <= 256
    error_message = "ecr_repository_name must be a valid ECR repository name (lowercase, digits, '.', '_', '-', '/')."
  }
}

variable "ecr_untagged_image_expiry_days" {
  description = "Days after which untagged images expire from ECR (tagged images are immutable and kept)."
  type        = number
  default     = 14

  validation {
    condition     = var.ecr_untagged_image_expiry_days >= 1
    error_message = "ecr_untagged_image_expiry_days must be at least 1."
  }
}

variable "model_repository_prefix" {
  description = "Key prefix of the model repository in the model bucket, ending in '/' (the chart's modelRepository.s3.prefix). The platform role may list and read only under it."
  type        = string
  default     = "repository/"

  validation {
    condition     = can(regex("^([A-Za-z0-9][A-Za-z0-9._-]*/)+$", var.model_repository_prefix))
    error_message = "model_repository_prefix must be one or more path segments each ending in '/' (letters, digits, '.', '_', '-'; no leading '/', no wildcards), for example \"repository/\"."
  }
}

variable "audit_prefix" {
  description = "Key prefix of the shipped audit segments in the audit bucket, ending in '/' (the chart's audit.s3.prefix). The platform role may list and write only under it."
  type        = string
  default     = "audit/"

  validation {
    condition     = can(regex("^([A-Za-z0-9][A-Za-z0-9._-]*/)+$", var.audit_prefix))
    error_message = "audit_prefix must be one or more path segments each ending in '/' (letters, digits, '.', '_', '-'; no leading '/', no wildcards), for example \"audit/\"."
  }
}

variable "enable_audit_shipping" {
  description = "Grant the platform role what the chart's audit shipper sidecar needs (list and put under audit_prefix, SSE-KMS with the audit key through S3). false leaves the role without any access to the audit bucket."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
