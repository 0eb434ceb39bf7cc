# These outputs feed terraform/scripts/helm-values.sh (make helm-values); keep
# their names stable.

output "region" {
  description = "AWS region of the deployment (keyProvider.awsKms.region)."
  value       = var.region
}

output "cluster_name" {
  description = "EKS cluster name (aws eks update-kubeconfig --region <region> --name <cluster_name>)."
  value       = module.cluster.cluster_name
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint."
  value       = module.cluster.cluster_endpoint
}

output "platform_role_arn" {
  description = "IRSA role of the phiserve service account (serviceAccount.annotations.\"eks.amazonaws.com/role-arn\")."
  value       = module.cluster.platform_role_arn
}

output "platform_service_account" {
  description = "Namespace and name of the service account the platform role trusts."
  value       = module.cluster.platform_service_account
}

output "models_kms_key_arn" {
  description = "KEK for model artifacts (keyProvider.awsKms.keyId)."
  value       = module.keys.models_key_arn
}

output "audit_kms_key_arn" {
  description = "KEK for audit segments (keyProvider.awsKms.auditKeyId) and the SSE-KMS key the audit shipper names (audit.s3.kmsKeyId); the audit bucket policy admits uploads naming exactly this ARN."
  value       = module.keys.audit_key_arn
}

output "model_bucket" {
  description = "Model repository bucket (modelRepository.s3.bucket)."
  value       = module.storage.model_bucket_name
}

output "audit_bucket" {
  description = "Object-Locked audit bucket (audit.s3.bucket)."
  value       = module.storage.audit_bucket_name
}

output "model_repository_prefix" {
  description = "Key prefix of the model repository (modelRepository.s3.prefix); the platform role reads only under it."
  value       = module.storage.model_repository_prefix
}

output "audit_prefix" {
  description = "Key prefix of shipped audit segments (audit.s3.prefix); the platform role writes only under it."
  value       = module.storage.audit_prefix
}

output "audit_shipping_enabled" {
  description = "Whether the platform role may ship audit segments (make helm-values sets audit.s3 only then)."
  value       = module.storage.audit_shipping_enabled
}

output "ecr_repository_url" {
  description = "ECR repository URL for the server image (image.repository)."
  value       = module.storage.ecr_repository_url
}

output "gpu_node_selector" {
  description = "Labels on the GPU nodes (the chart selects phiserve.io/node-pool=gpu)."
  value       = module.cluster.gpu_node_selector
}

output "gpu_node_taint" {
  description = "Taint on the GPU nodes that the chart tolerates."
  value       = module.cluster.gpu_node_taint
}

output "vpc_id" {
  description = "ID of the VPC."
  value       = module.network.vpc_id
}

output "private_subnet_ids" {
  description = "Private subnets of the nodes."
  value       = module.network.private_subnet_ids
}
