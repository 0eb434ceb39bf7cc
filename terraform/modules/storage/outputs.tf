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
  description = "IAM policy (JSON) with the S3 access the platform needs: read models, write and read audit segments, no deletes. Attach it to the platform's IRSA role."
  value       = data.aws_iam_policy_document.platform.json
}
