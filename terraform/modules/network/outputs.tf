output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr_block" {
  description = "IPv4 CIDR of the VPC."
  value       = aws_vpc.this.cidr_block
}

output "availability_zones" {
  description = "Availability zones the subnets span, in subnet order."
  value       = local.azs
}

output "private_subnet_ids" {
  description = "IDs of the private subnets (one per zone) for the EKS control plane ENIs and the node groups."
  value       = aws_subnet.private[*].id
}

output "public_subnet_ids" {
  description = "IDs of the public subnets that hold only NAT gateways; empty when enable_nat_gateway is false."
  value       = aws_subnet.public[*].id
}

output "private_route_table_ids" {
  description = "IDs of the private route tables (the S3 gateway endpoint is attached to them)."
  value       = aws_route_table.private[*].id
}

output "nat_public_ips" {
  description = "Public IPs of the NAT gateways (egress addresses to allow-list upstream); empty without NAT."
  value       = aws_eip.nat[*].public_ip
}

output "s3_gateway_endpoint_id" {
  description = "ID of the S3 gateway endpoint (use in bucket policies with aws:SourceVpce to pin access to this VPC)."
  value       = aws_vpc_endpoint.s3.id
}

output "interface_endpoint_ids" {
  description = "IDs of the interface endpoints, by service short name (kms, ecr.api, ecr.dkr, logs, sts, ...)."
  value       = { for k, v in aws_vpc_endpoint.interface : k => v.id }
}

output "endpoint_security_group_id" {
  description = "Security group of the interface endpoints (HTTPS from the VPC CIDR)."
  value       = aws_security_group.endpoints.id
}

output "flow_log_group_name" {
  description = "CloudWatch log group receiving the VPC flow logs."
  value       = aws_cloudwatch_log_group.flow_logs.name
}

output "flow_log_id" {
  description = "ID of the VPC flow log."
  value       = aws_flow_log.this.id
}
