output "models_key_arn" {
  description = "ARN of the models key: envelope KEK for model artifacts (keyProvider.awsKms.keyId) and SSE-KMS key of the model bucket."
  value       = aws_kms_key.models.arn
}

output "models_key_alias" {
  description = "Alias of the models key."
  value       = aws_kms_alias.models.name
}

output "audit_key_arn" {
  description = "ARN of the audit key: envelope KEK for audit segments and SSE-KMS key of the audit bucket."
  value       = aws_kms_key.audit.arn
}

output "audit_key_alias" {
  description = "Alias of the audit key."
  value       = aws_kms_alias.audit.name
}

output "cluster_key_arn" {
  description = "ARN of the cluster key: EKS secrets envelope encryption and ECR repository encryption."
  value       = aws_kms_key.cluster.arn
}

output "cluster_key_alias" {
  description = "Alias of the cluster key."
  value       = aws_kms_alias.cluster.name
}

output "logs_key_arn" {
  description = "ARN of the logs key, usable by CloudWatch Logs for this account's log groups."
  value       = aws_kms_key.logs.arn
}

output "logs_key_alias" {
  description = "Alias of the logs key."
  value       = aws_kms_alias.logs.name
}
