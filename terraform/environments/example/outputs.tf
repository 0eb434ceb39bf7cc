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
  description = "KEK for audit segments."
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
