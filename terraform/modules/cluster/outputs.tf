output "cluster_name" {
  description = "Name of the EKS cluster (aws eks update-kubeconfig --name ...)."
  value       = aws_eks_cluster.this.name
}

output "cluster_arn" {
  description = "ARN of the EKS cluster."
  value       = aws_eks_cluster.this.arn
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint (private unless endpoint_public_access)."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_certificate_authority_data" {
  description = "Base64 CA certificate of the Kubernetes API."
  value       = try(aws_eks_cluster.this.certificate_authority[0].data, null)
}

output "cluster_version" {
  description = "Kubernetes version of the control plane."
  value       = aws_eks_cluster.this.version
}

output "cluster_security_group_id" {
  description = "Security group EKS created for the control plane and managed nodes."
  value       = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
}

output "cluster_log_group_name" {
  description = "CloudWatch log group holding the control-plane logs (api, audit, authenticator, controllerManager, scheduler)."
  value       = aws_cloudwatch_log_group.cluster.name
}

output "oidc_provider_arn" {
  description = "ARN of the IAM OIDC provider for IRSA; use it to trust further service accounts."
  value       = aws_iam_openid_connect_provider.this.arn
}

output "oidc_issuer_url" {
  description = "OIDC issuer URL of the cluster."
  value       = local.oidc_issuer
}

output "platform_role_arn" {
  description = "ARN of the platform's IRSA role (serviceAccount.annotations.\"eks.amazonaws.com/role-arn\" in the chart)."
  value       = aws_iam_role.platform.arn
}

output "platform_role_name" {
  description = "Name of the platform's IRSA role."
  value       = aws_iam_role.platform.name
}

output "platform_service_account" {
  description = "The only Kubernetes service account the platform role trusts."
  value = {
    namespace = var.platform_namespace
    name      = var.platform_service_account
  }
}

output "node_role_arn" {
  description = "ARN of the IAM role of the managed nodes."
  value       = aws_iam_role.node.arn
}

output "system_node_group_name" {
  description = "Name of the system node group."
  value       = aws_eks_node_group.system.node_group_name
}

output "gpu_node_group_name" {
  description = "Name of the GPU node group."
  value       = aws_eks_node_group.gpu.node_group_name
}

output "gpu_node_selector" {
  description = "Labels the GPU nodes carry; the chart's nodeSelector picks phiserve.io/node-pool=gpu."
  value       = local.gpu_labels
}

output "gpu_node_taint" {
  description = "Taint of the GPU nodes (Kubernetes effect NoSchedule); the chart's toleration must match it."
  value = [
    for t in aws_eks_node_group.gpu.taint : {
      key    = t.key
      value  = t.value
      effect = { NO_SCHEDULE = "NoSchedule", NO_EXECUTE = "NoExecute", PREFER_NO_SCHEDULE = "PreferNoSchedule" }[t.effect]
    }
  ][0]
}
