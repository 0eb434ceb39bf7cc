variable "region" {
  description = "AWS region to deploy into. Use a region covered by your Business Associate Addendum and offering your GPU instance type."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as us-east-1."
  }
}

variable "name" {
  description = "Short name of the deployment; resources are named <name>-<environment>."
  type        = string
  default     = "phiserve"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,11}$", var.name))
    error_message = "name must be 2-12 lowercase letters, digits or '-', starting with a letter."
  }
}

variable "environment" {
  description = "Environment name (for example dev, staging, prod)."
  type        = string
  default     = "example"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,11}$", var.environment))
    error_message = "environment must be 2-12 lowercase letters or digits, starting with a letter."
  }
}

variable "tags" {
  description = "Tags applied to every resource through the provider's default_tags (owner, cost centre, data classification...)."
  type        = map(string)
  default = {
    "phiserve.io/data-classification" = "phi"
  }
}

variable "vpc_cidr" {
  description = "IPv4 CIDR of the VPC (/16 to /20)."
  type        = string
  default     = "10.42.0.0/16"
}

variable "availability_zones" {
  description = "Availability zones (2 to 6) that offer the GPU instance type; empty uses <region>a, <region>b and <region>c."
  type        = list(string)
  default     = []
}

variable "enable_nat_gateway" {
  description = "Give private nodes internet egress through NAT (needed to pull public images such as the NVIDIA device plugin)."
  type        = bool
  default     = true
}

variable "one_nat_gateway_per_az" {
  description = "One NAT gateway per zone instead of a single shared one."
  type        = bool
  default     = false
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.33"
}

variable "endpoint_public_access" {
  description = "Expose the Kubernetes API publicly (restricted to endpoint_public_access_cidrs). Default: private only."
  type        = bool
  default     = false
}

variable "endpoint_public_access_cidrs" {
  description = "CIDRs allowed to reach a public API endpoint."
  type        = list(string)
  default     = []
}

variable "cluster_admin_arns" {
  description = "IAM role or user ARNs that get cluster-admin access entries."
  type        = list(string)
  default     = []
}

variable "key_administrator_arns" {
  description = "IAM principals that may manage but not use the KMS keys."
  type        = list(string)
  default     = []
}

variable "model_publisher_arns" {
  description = "IAM principals (the model export/upload CI role) allowed to encrypt with the models key."
  type        = list(string)
  default     = []
}

variable "audit_reader_arns" {
  description = "IAM principals allowed to decrypt audit segments for review."
  type        = list(string)
  default     = []
}

variable "log_retention_days" {
  description = "Retention of control-plane and VPC flow logs in days (CloudWatch value, at least 365)."
  type        = number
  default     = 365
}

variable "audit_retention_years" {
  description = "Object Lock COMPLIANCE retention of audit segments in years (at least 6, 45 CFR 164.316(b)(2))."
  type        = number
  default     = 6
}

variable "model_repository_prefix" {
  description = "Key prefix of the model repository in the model bucket, ending in '/'; the platform role reads only under it. make helm-values passes it to the chart (modelRepository.s3.prefix)."
  type        = string
  default     = "repository/"
}

variable "audit_prefix" {
  description = "Key prefix of shipped audit segments in the audit bucket, ending in '/'; the platform role writes only under it. make helm-values passes it to the chart (audit.s3.prefix)."
  type        = string
  default     = "audit/"
}

variable "enable_audit_shipping" {
  description = "Let the platform role ship audit segments to the Object-Locked audit bucket (the chart's audit shipper sidecar). false: the role gets no access to the audit bucket and make helm-values leaves audit.s3 unset."
  type        = bool
  default     = true
}

variable "ecr_repository_name" {
  description = "Name of the ECR repository for the server image."
  type        = string
  default     = "phiserve"
}

variable "platform_namespace" {
  description = "Namespace of the Helm release (the service account's namespace)."
  type        = string
  default     = "phiserve"
}

variable "platform_service_account" {
  description = "Name of the chart's service account."
  type        = string
  default     = "phiserve"
}

variable "gpu_instance_types" {
  description = "GPU instance types for the inference node group (g5/g6 class)."
  type        = list(string)
  default     = ["g5.xlarge"]
}

variable "gpu_min_size" {
  description = "Minimum number of GPU nodes (0 lets the group scale to zero when idle)."
  type        = number
  default     = 1
}

variable "gpu_desired_size" {
  description = "Initial number of GPU nodes."
  type        = number
  default     = 1
}

variable "gpu_max_size" {
  description = "Maximum number of GPU nodes."
  type        = number
  default     = 2
}
