output "model_bucket_name" {
  description = "Name of the model repository bucket (modelRepository.s3.bucket in the chart)."
  value       = aws_s3_bucket.models.id
}

output "model_bucket_arn" {
  description = "ARN of the model repository bucket."
  value       = aws_s3_bucket.models.arn
}

output "audit_bucket_name" {
  description = "Name of the Object-Locked audit bucket (audit.s3.bucket in the chart)."
  value       = aws_s3_bucket.audit.id
}

output "audit_bucket_arn" {
  description = "ARN of the audit bucket."
  value       = aws_s3_bucket.audit.arn
}

output "audit_retention" {
  description = "Object Lock default retention of the audit bucket."
  value = {
    mode  = "COMPLIANCE"
    years = var.audit_retention_years
  }
}

output "access_log_bucket_name" {
  description = "Name of the bucket receiving S3 server access logs of the model and audit buckets."
  value       = aws_s3_bucket.access_logs.id
}

output "ecr_repository_url" {
  description = "URL of the ECR repository for the server image (image.repository in the chart)."
  value       = aws_ecr_repository.this.repository_url
}

output "ecr_repository_arn" {
  description = "ARN of the ECR repository."
  value       = aws_ecr_repository.this.arn
}

output "platform_policy_json" {
  description = "Identity policy (JSON) for the platform's IRSA role: list and read the model repository prefix, put audit segments under the audit prefix (when enable_audit_shipping), and the SSE-KMS calls S3 makes for those; no delete, no retention changes."
  value       = data.aws_iam_policy_document.platform.json
}

output "model_repository_prefix" {
  description = "Key prefix of the model repository (modelRepository.s3.prefix in the chart); the platform role reads only under it."
  value       = var.model_repository_prefix
}

output "audit_prefix" {
  description = "Key prefix of shipped audit segments (audit.s3.prefix in the chart); the platform role writes only under it."
  value       = var.audit_prefix
}

output "audit_shipping_enabled" {
  description = "Whether the platform role may ship audit segments to the audit bucket (the chart's audit shipper)."
  value       = var.enable_audit_shipping
}
