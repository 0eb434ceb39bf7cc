variable "name" {
  description = "Name of the VPC; also the prefix of its subnets, endpoints, flow-log group and IAM role."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,26}$", var.name))
    error_message = "name must be 1-27 lowercase letters, digits or '-', starting with a letter or digit (it prefixes an IAM role name_prefix, limited to 38 characters)."
  }
}

variable "vpc_cidr" {
  description = "IPv4 CIDR of the VPC, a /16 to /20. Private subnets take sixteenths of it from the bottom, NAT subnets 1/256ths from the top."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be a valid IPv4 CIDR with a prefix length between /16 and /20."
  }
}

variable "availability_zones" {
  description = "Availability zones (names such as us-east-1a) to span: 2 to 6, one private subnet each. Pick zones that offer your GPU instance type; EKS needs at least two."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 6 && length(distinct(var.availability_zones)) == length(var.availability_zones)
    error_message = "availability_zones must list 2 to 6 distinct zones."
  }

  validation {
    condition     = alltrue([for z in var.availability_zones : can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9][a-z]$", z))])
    error_message = "availability_zones must be zone names such as us-east-1a (not zone ids)."
  }
}

variable "enable_nat_gateway" {
  description = "Create public subnets with NAT gateway(s) so nodes can reach public registries (for example the NVIDIA device plugin image). false: a fully private VPC; mirror every image into ECR and add the endpoints EKS nodes need (ec2, elasticloadbalancing, autoscaling) to additional_interface_endpoints."
  type        = bool
  default     = true
}

variable "one_nat_gateway_per_az" {
  description = "One NAT gateway per zone (survives a zone outage, costs more) instead of a single shared one."
  type        = bool
  default     = false
}

variable "additional_interface_endpoints" {
  description = "Interface VPC endpoint service names (the part after com.amazonaws.<region>.) added to the required kms, ecr.api, ecr.dkr, logs and sts. S3 is always a gateway endpoint."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.additional_interface_endpoints : can(regex("^[a-z0-9][a-z0-9.-]*$", s)) && s != "s3"])
    error_message = "additional_interface_endpoints must be service short names such as \"ec2\"; s3 is already a gateway endpoint."
  }
}

variable "flow_log_kms_key_arn" {
  description = "ARN of the KMS key that encrypts the flow-log group (the logs key of the keys module)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-zA-Z-]*:kms:", var.flow_log_kms_key_arn))
    error_message = "flow_log_kms_key_arn must be a KMS key ARN."
  }
}

variable "flow_log_retention_days" {
  description = "Retention of the VPC flow logs in days; one of CloudWatch's allowed values, at least 365."
  type        = number
  default     = 365

  validation {
    condition     = contains([365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.flow_log_retention_days)
    error_message = "flow_log_retention_days must be one of 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
