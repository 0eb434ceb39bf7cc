variable "name" {
  description = "Name prefix for the keys' aliases (alias/<name>-models, -audit, -cluster, -logs)."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9_-]{0,40}$", var.name))
    error_message = "name must be 1-41 characters: letters, digits, '-' or '_', starting with a letter or digit."
  }
}

variable "platform_role_arn" {
  description = "ARN of the IAM role the phiserve pods assume (IRSA). It gets Decrypt/DescribeKey on the models key and Encrypt/GenerateDataKey/Decrypt/DescribeKey on the audit key, nothing on the cluster or logs keys."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:role/.+$", var.platform_role_arn))
    error_message = "platform_role_arn must be an IAM role ARN (arn:<partition>:iam::<account>:role/<name>)."
  }
}

variable "key_administrator_arns" {
  description = "IAM principals that may manage (rotate, disable, schedule deletion of, re-policy) the keys but not use them for encryption or decryption. The account root statement always remains."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.key_administrator_arns : can(regex("^arn:aws[a-zA-Z-]*:(iam|sts)::[0-9]{12}:", a))])
    error_message = "key_administrator_arns must be IAM or STS ARNs."
  }
}

variable "model_publisher_arns" {
  description = "IAM principals (for example the CI role that exports and uploads models) allowed to Encrypt/GenerateDataKey/Decrypt with the models key. Empty: only principals granted through IAM via the account root statement."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.model_publisher_arns : can(regex("^arn:aws[a-zA-Z-]*:(iam|sts)::[0-9]{12}:", a))])
    error_message = "model_publisher_arns must be IAM or STS ARNs."
  }
}

variable "audit_reader_arns" {
  description = "IAM principals (compliance reviewers, the audit verifier job) allowed to Decrypt audit segments. They get no Encrypt: only the platform writes audit records."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.audit_reader_arns : can(regex("^arn:aws[a-zA-Z-]*:(iam|sts)::[0-9]{12}:", a))])
    error_message = "audit_reader_arns must be IAM or STS ARNs."
  }
}

variable "rotation_period_in_days" {
  description = "Automatic rotation period of every key, in days (KMS allows 90 to 2560). Old key material stays available for decryption."
  type        = number
  default     = 365

  validation {
    condition     = var.rotation_period_in_days >= 90 && var.rotation_period_in_days <= 2560
    error_message = "rotation_period_in_days must be between 90 and 2560."
  }
}

variable "deletion_window_in_days" {
  description = "Waiting period before a key scheduled for deletion is destroyed (7 to 30 days). Keep the maximum: a deleted key makes its data unrecoverable."
  type        = number
  default     = 30

  validation {
    condition     = var.deletion_window_in_days >= 7 && var.deletion_window_in_days <= 30
    error_message = "deletion_window_in_days must be between 7 and 30."
  }
}

variable "tags" {
  description = "Tags added to every key."
  type        = map(string)
  default     = {}
}
