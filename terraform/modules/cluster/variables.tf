variable "name" {
  description = "Name of the EKS cluster; also the prefix of its IAM roles, launch templates and node groups."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-]{0,28}$", var.name))
    error_message = "name must start with a letter and have at most 29 letters, digits or '-' (it prefixes IAM role name_prefixes, limited to 38 characters)."
  }
}

variable "kubernetes_version" {
  description = "Kubernetes minor version of the control plane (for example \"1.33\"). Pick one in EKS standard support."
  type        = string
  default     = "1.33"

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must look like \"1.33\"."
  }
}

variable "upgrade_support_type" {
  description = "EKS support policy once the version leaves standard support: STANDARD (auto-upgrade) or EXTENDED (extra hourly cost)."
  type        = string
  default     = "STANDARD"

  validation {
    condition     = contains(["STANDARD", "EXTENDED"], var.upgrade_support_type)
    error_message = "upgrade_support_type must be STANDARD or EXTENDED."
  }
}

variable "subnet_ids" {
  description = "Private subnet IDs (in at least two availability zones) for the control-plane network interfaces and the node groups."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "EKS needs subnets in at least two availability zones: pass at least two subnet IDs."
  }
}

variable "service_ipv4_cidr" {
  description = "CIDR for Kubernetes service IPs; null lets EKS choose (10.100.0.0/16 or 172.20.0.0/16). Must not overlap the VPC."
  type        = string
  default     = null

  validation {
    condition     = var.service_ipv4_cidr == null || can(cidrhost(var.service_ipv4_cidr, 0))
    error_message = "service_ipv4_cidr must be null or a valid IPv4 CIDR."
  }
}

variable "endpoint_public_access" {
  description = "Expose the Kubernetes API endpoint publicly (restricted to endpoint_public_access_cidrs). Default false: the API is reachable only from inside the VPC (VPN, bastion, CI runner in the VPC)."
  type        = bool
  default     = false
}

variable "endpoint_public_access_cidrs" {
  description = "CIDRs allowed to reach the public API endpoint when endpoint_public_access is true. 0.0.0.0/0 is refused."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.endpoint_public_access_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "endpoint_public_access_cidrs must be valid CIDRs and must not contain 0.0.0.0/0."
  }
}

variable "cluster_kms_key_arn" {
  description = "ARN of the KMS key for Kubernetes secrets envelope encryption (the cluster key of the keys module)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-zA-Z-]*:kms:", var.cluster_kms_key_arn))
    error_message = "cluster_kms_key_arn must be a KMS key ARN."
  }
}

variable "logs_kms_key_arn" {
  description = "ARN of the KMS key encrypting the control-plane log group (the logs key of the keys module)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-zA-Z-]*:kms:", var.logs_kms_key_arn))
    error_message = "logs_kms_key_arn must be a KMS key ARN."
  }
}

variable "log_retention_days" {
  description = "Retention of the control-plane logs (the Kubernetes audit log among them) in days; one of CloudWatch's allowed values, at least 365."
  type        = number
  default     = 365

  validation {
    condition     = contains([365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

variable "node_volume_kms_key_arn" {
  description = "KMS key ARN for node root volumes. null uses the account's AWS-managed EBS key (volumes are encrypted either way); a customer key must grant the EC2 Auto Scaling service-linked role use of the key."
  type        = string
  default     = null

  validation {
    condition     = var.node_volume_kms_key_arn == null || can(regex("^arn:aws[a-zA-Z-]*:kms:", var.node_volume_kms_key_arn))
    error_message = "node_volume_kms_key_arn must be null or a KMS key ARN."
  }
}

variable "bootstrap_cluster_creator_admin_permissions" {
  description = "Give the identity that creates the cluster an admin access entry. Prefer false with explicit cluster_admin_arns."
  type        = bool
  default     = false
}

variable "cluster_admin_arns" {
  description = "IAM role or user ARNs that get cluster-admin through EKS access entries (AmazonEKSClusterAdminPolicy)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.cluster_admin_arns : can(regex("^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:(role|user)/", a))])
    error_message = "cluster_admin_arns must be IAM role or user ARNs."
  }
}

variable "platform_namespace" {
  description = "Kubernetes namespace of the phiserve service account that may assume the platform role (the Helm release namespace)."
  type        = string
  default     = "phiserve"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.platform_namespace))
    error_message = "platform_namespace must be a valid Kubernetes namespace name."
  }
}

variable "platform_service_account" {
  description = "Name of the Kubernetes service account (created by the Helm chart) that may assume the platform role."
  type        = string
  default     = "phiserve"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", var.platform_service_account))
    error_message = "platform_service_account must be a valid Kubernetes service account name."
  }
}

variable "platform_role_inline_policies" {
  description = "Inline IAM policies (name => policy JSON) attached to the platform role, for example the storage module's platform_policy_json (prefix-scoped S3 read of models, audit uploads, and the SSE-KMS calls S3 makes for them). Without one the role can do nothing in S3; direct KMS use is granted by the key policies."
  type        = map(string)
  default     = {}
}

variable "enable_ssm_on_nodes" {
  description = "Attach AmazonSSMManagedInstanceCore to the node role so operators can reach nodes through Session Manager (logged) instead of SSH."
  type        = bool
  default     = false
}

variable "system_node_group" {
  description = "Small on-demand node group for cluster add-ons (CoreDNS, device plugin controllers, monitoring). Labelled phiserve.io/node-pool=system."
  type = object({
    instance_types = optional(list(string), ["m6i.large"])
    ami_type       = optional(string, "AL2023_x86_64_STANDARD")
    min_size       = optional(number, 2)
    desired_size   = optional(number, 2)
    max_size       = optional(number, 3)
    disk_size_gb   = optional(number, 50)
    labels         = optional(map(string), {})
  })
  default = {}

  validation {
    condition     = var.system_node_group.min_size >= 1 && var.system_node_group.min_size <= var.system_node_group.desired_size && var.system_node_group.desired_size <= var.system_node_group.max_size
    error_message = "system_node_group needs 1 <= min_size <= desired_size <= max_size."
  }

  validation {
    condition     = contains(["AL2023_x86_64_STANDARD", "AL2023_ARM_64_STANDARD", "BOTTLEROCKET_x86_64", "BOTTLEROCKET_ARM_64"], var.system_node_group.ami_type)
    error_message = "system_node_group.ami_type must be AL2023_x86_64_STANDARD, AL2023_ARM_64_STANDARD, BOTTLEROCKET_x86_64 or BOTTLEROCKET_ARM_64."
  }

  validation {
    condition     = var.system_node_group.disk_size_gb >= 20
    error_message = "system_node_group.disk_size_gb must be at least 20."
  }

  validation {
    condition     = !contains(keys(var.system_node_group.labels), "phiserve.io/node-pool")
    error_message = "system_node_group.labels must not set phiserve.io/node-pool: the module sets it (system)."
  }
}

variable "gpu_node_group" {
  description = "Managed GPU node group for the inference pods: GPU AMI, tainted nvidia.com/gpu=present:NoSchedule, labelled phiserve.io/node-pool=gpu and nvidia.com/gpu.present=true."
  type = object({
    instance_types = optional(list(string), ["g5.xlarge"])
    ami_type       = optional(string, "AL2023_x86_64_NVIDIA")
    capacity_type  = optional(string, "ON_DEMAND")
    min_size       = optional(number, 1)
    desired_size   = optional(number, 1)
    max_size       = optional(number, 3)
    disk_size_gb   = optional(number, 100)
    labels         = optional(map(string), {})
  })
  default = {}

  validation {
    condition     = var.gpu_node_group.min_size >= 0 && var.gpu_node_group.min_size <= var.gpu_node_group.desired_size && var.gpu_node_group.desired_size <= var.gpu_node_group.max_size && var.gpu_node_group.max_size >= 1
    error_message = "gpu_node_group needs 0 <= min_size <= desired_size <= max_size and max_size >= 1."
  }

  validation {
    condition     = length(var.gpu_node_group.instance_types) > 0 && alltrue([for t in var.gpu_node_group.instance_types : can(regex("^(g4dn|g5|g6|g6e|gr6|p4d|p4de|p5|p5e|p5en)\\.[0-9a-z]+$", t))])
    error_message = "gpu_node_group.instance_types must be NVIDIA GPU instance types (g4dn, g5, g6, g6e, gr6, p4d, p4de, p5, p5e, p5en)."
  }

  validation {
    condition     = contains(["AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA"], var.gpu_node_group.ami_type)
    error_message = "gpu_node_group.ami_type must be a GPU AMI: AL2023_x86_64_NVIDIA or BOTTLEROCKET_x86_64_NVIDIA."
  }

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.gpu_node_group.capacity_type)
    error_message = "gpu_node_group.capacity_type must be ON_DEMAND or SPOT."
  }

  validation {
    condition     = var.gpu_node_group.disk_size_gb >= 50
    error_message = "gpu_node_group.disk_size_gb must be at least 50 (the NVIDIA AMI and CUDA images are large)."
  }

  validation {
    condition     = length(setintersection(keys(var.gpu_node_group.labels), ["phiserve.io/node-pool", "nvidia.com/gpu.present"])) == 0
    error_message = "gpu_node_group.labels must not set phiserve.io/node-pool or nvidia.com/gpu.present: the module sets them."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
