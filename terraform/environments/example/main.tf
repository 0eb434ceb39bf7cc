################################################################################
# Example environment: every phiserve module composed into one deployable
# stack. Copy this folder per environment (staging, production) and adjust
# terraform.tfvars; see terraform/README.md.
################################################################################

provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, {
      "phiserve.io/environment" = var.environment
      "phiserve.io/managed-by"  = "terraform"
    })
  }
}

locals {
  name = "${var.name}-${var.environment}"

  # Zones a, b and c exist in most regions; the network module refuses zones
  # the region does not have. Set availability_zones to zones offering your
  # GPU instance type.
  availability_zones = length(var.availability_zones) > 0 ? var.availability_zones : [for s in ["a", "b", "c"] : "${var.region}${s}"]
}

module "keys" {
  source = "../../modules/keys"

  name = local.name
  # The platform role is created by the cluster module (it needs the cluster's
  # OIDC issuer); the models and audit key policies then name it. The cluster
  # key, which the cluster needs first, does not depend on it.
  platform_role_arn      = module.cluster.platform_role_arn
  key_administrator_arns = var.key_administrator_arns
  model_publisher_arns   = var.model_publisher_arns
  audit_reader_arns      = var.audit_reader_arns
}

module "network" {
  source = "../../modules/network"

  name                    = local.name
  vpc_cidr                = var.vpc_cidr
  availability_zones      = local.availability_zones
  enable_nat_gateway      = var.enable_nat_gateway
  one_nat_gateway_per_az  = var.one_nat_gateway_per_az
  flow_log_kms_key_arn    = module.keys.logs_key_arn
  flow_log_retention_days = var.log_retention_days
}

module "storage" {
  source = "../../modules/storage"

  name                  = local.name
  models_kms_key_arn    = module.keys.models_key_arn
  audit_kms_key_arn     = module.keys.audit_key_arn
  ecr_kms_key_arn       = module.keys.cluster_key_arn
  audit_retention_years = var.audit_retention_years
  ecr_repository_name   = var.ecr_repository_name

  # What the platform role may do in S3 (platform_policy_json, attached to
  # the role by the cluster module below): read models under this prefix,
  # ship audit segments under that one.
  model_repository_prefix = var.model_repository_prefix
  audit_prefix            = var.audit_prefix
  enable_audit_shipping   = var.enable_audit_shipping
}

module "cluster" {
  source = "../../modules/cluster"

  name                         = local.name
  kubernetes_version           = var.kubernetes_version
  subnet_ids                   = module.network.private_subnet_ids
  endpoint_public_access       = var.endpoint_public_access
  endpoint_public_access_cidrs = var.endpoint_public_access_cidrs
  cluster_kms_key_arn          = module.keys.cluster_key_arn
  logs_kms_key_arn             = module.keys.logs_key_arn
  log_retention_days           = var.log_retention_days
  cluster_admin_arns           = var.cluster_admin_arns

  platform_namespace       = var.platform_namespace
  platform_service_account = var.platform_service_account
  platform_role_inline_policies = {
    phiserve-storage = module.storage.platform_policy_json
  }

  gpu_node_group = {
    instance_types = var.gpu_instance_types
    min_size       = var.gpu_min_size
    desired_size   = var.gpu_desired_size
    max_size       = var.gpu_max_size
  }
}

# EKS access entries replace the aws-auth ConfigMap, and the cluster creator
# gets no implicit admin (changing that later would replace the cluster): name
# the admins explicitly, or nobody can run kubectl or helm against the cluster.
check "cluster_has_admins" {
  assert {
    condition     = length(var.cluster_admin_arns) > 0
    error_message = "cluster_admin_arns is empty: no IAM principal will be able to use the Kubernetes API (kubectl, helm). Set it to your administrators' role ARNs."
  }
}
