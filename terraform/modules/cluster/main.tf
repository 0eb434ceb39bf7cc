################################################################################
# EKS cluster for phiserve.
#
# - Kubernetes secrets are envelope-encrypted with a customer-managed key.
# - All five control-plane log types go to a KMS-encrypted, retained group.
# - The API endpoint is private by default.
# - IAM roles for service accounts (IRSA): an OIDC provider, the platform's
#   role trusted only by system:serviceaccount:<namespace>:<name>, and a role
#   for the VPC CNI so the node role does not carry network permissions.
# - Two managed node groups from launch templates that require IMDSv2 (hop
#   limit 1, so pods cannot borrow the node role) and encrypt root volumes:
#     system  small general-purpose nodes for cluster add-ons;
#     gpu     GPU nodes, tainted nvidia.com/gpu=present:NoSchedule and
#             labelled so the Helm chart's nodeSelector and toleration match.
################################################################################

data "aws_partition" "current" {}

locals {
  partition = data.aws_partition.current.partition

  cluster_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]

  # Contract with the Helm chart (helm/phiserve/values.yaml): its nodeSelector
  # picks phiserve.io/node-pool=gpu and its toleration matches the GPU node
  # group's taint below, nvidia.com/gpu=present:NoSchedule.
  gpu_labels = {
    "phiserve.io/node-pool"  = "gpu"
    "nvidia.com/gpu.present" = "true"
  }
  system_labels = {
    "phiserve.io/node-pool" = "system"
  }

  oidc_issuer      = aws_eks_cluster.this.identity[0].oidc[0].issuer
  oidc_issuer_host = replace(local.oidc_issuer, "https://", "")
}

################################################################################
# Control-plane logs
################################################################################

# EKS writes to this fixed name; creating it first sets KMS and retention
# instead of an unencrypted, never-expiring group created on demand.
resource "aws_cloudwatch_log_group" "cluster" {
  name              = "/aws/eks/${var.name}/cluster"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.logs_kms_key_arn

  tags = var.tags
}

################################################################################
# Cluster IAM role
################################################################################

data "aws_iam_policy_document" "cluster_assume" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]

    principals {
      type        = "Service"
      identifiers = ["eks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "cluster" {
  name_prefix        = "${var.name}-cluster-"
  assume_role_policy = data.aws_iam_policy_document.cluster_assume.json

  tags = var.tags
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonEKSClusterPolicy"
}

# EKS uses the cluster role to call KMS for secrets envelope encryption.
data "aws_iam_policy_document" "cluster_encryption" {
  statement {
    sid       = "SecretsEnvelopeEncryption"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ListGrants", "kms:DescribeKey"]
    resources = [var.cluster_kms_key_arn]
  }
}

resource "aws_iam_role_policy" "cluster_encryption" {
  name   = "secrets-encryption"
  role   = aws_iam_role.cluster.id
  policy = data.aws_iam_policy_document.cluster_encryption.json
}

################################################################################
# Cluster
################################################################################

resource "aws_eks_cluster" "this" {
  name     = var.name
  version  = var.kubernetes_version
  role_arn = aws_iam_role.cluster.arn

  enabled_cluster_log_types = local.cluster_log_types

  vpc_config {
    subnet_ids              = var.subnet_ids
    endpoint_private_access = true
    endpoint_public_access  = var.endpoint_public_access
    public_access_cidrs     = var.endpoint_public_access ? var.endpoint_public_access_cidrs : null
  }

  encryption_config {
    resources = ["secrets"]

    provider {
      key_arn = var.cluster_kms_key_arn
    }
  }

  access_config {
    authentication_mode                         = "API"
    bootstrap_cluster_creator_admin_permissions = var.bootstrap_cluster_creator_admin_permissions
  }

  kubernetes_network_config {
    ip_family         = "ipv4"
    service_ipv4_cidr = var.service_ipv4_cidr
  }

  upgrade_policy {
    support_type = var.upgrade_support_type
  }

  tags = var.tags

  depends_on = [
    aws_cloudwatch_log_group.cluster,
    aws_iam_role_policy_attachment.cluster,
    aws_iam_role_policy.cluster_encryption,
  ]
}

# Cluster administrators through EKS access entries (no aws-auth ConfigMap).
resource "aws_eks_access_entry" "admins" {
  for_each = toset(var.cluster_admin_arns)

  cluster_name  = aws_eks_cluster.this.name
  principal_arn = each.value
  type          = "STANDARD"

  tags = var.tags
}

resource "aws_eks_access_policy_association" "admins" {
  for_each = toset(var.cluster_admin_arns)

  cluster_name  = aws_eks_cluster.this.name
  principal_arn = each.value
  policy_arn    = "arn:${local.partition}:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"

  access_scope {
    type = "cluster"
  }

  depends_on = [aws_eks_access_entry.admins]
}

################################################################################
# IAM roles for service accounts (IRSA)
################################################################################

# Thumbprints are no longer used by IAM for the EKS OIDC issuer (it trusts the
# issuer's certificate authority), so none is pinned here.
resource "aws_iam_openid_connect_provider" "this" {
  url            = local.oidc_issuer
  client_id_list = ["sts.amazonaws.com"]

  tags = var.tags
}

data "aws_iam_policy_document" "platform_assume" {
  statement {
    sid     = "PlatformServiceAccountOnly"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.this.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer_host}:sub"
      values   = ["system:serviceaccount:${var.platform_namespace}:${var.platform_service_account}"]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer_host}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "platform" {
  name                 = "${var.name}-platform"
  description          = "phiserve pods (service account ${var.platform_namespace}/${var.platform_service_account})"
  assume_role_policy   = data.aws_iam_policy_document.platform_assume.json
  max_session_duration = 3600

  tags = var.tags
}

resource "aws_iam_role_policy" "platform" {
  for_each = var.platform_role_inline_policies

  name   = each.key
  role   = aws_iam_role.platform.id
  policy = each.value
}

data "aws_iam_policy_document" "vpc_cni_assume" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.this.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer_host}:sub"
      values   = ["system:serviceaccount:kube-system:aws-node"]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer_host}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "vpc_cni" {
  name_prefix        = "${var.name}-vpc-cni-"
  assume_role_policy = data.aws_iam_policy_document.vpc_cni_assume.json

  tags = var.tags
}

resource "aws_iam_role_policy_attachment" "vpc_cni" {
  role       = aws_iam_role.vpc_cni.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonEKS_CNI_Policy"
}

################################################################################
# Add-ons
################################################################################

resource "aws_eks_addon" "vpc_cni" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "vpc-cni"
  service_account_role_arn    = aws_iam_role.vpc_cni.arn
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"

  tags = var.tags

  depends_on = [aws_iam_role_policy_attachment.vpc_cni]
}

resource "aws_eks_addon" "kube_proxy" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "kube-proxy"
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"

  tags = var.tags
}

# CoreDNS is a Deployment: it needs nodes before it can become ACTIVE.
resource "aws_eks_addon" "coredns" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "coredns"
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"

  tags = var.tags

  depends_on = [aws_eks_node_group.system]
}

################################################################################
# Node IAM role
################################################################################

data "aws_iam_policy_document" "node_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name_prefix        = "${var.name}-node-"
  assume_role_policy = data.aws_iam_policy_document.node_assume.json

  tags = var.tags
}

# Network permissions live on the VPC CNI's IRSA role, not here.
resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset(concat(
    [
      "arn:${local.partition}:iam::aws:policy/AmazonEKSWorkerNodePolicy",
      "arn:${local.partition}:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
    ],
    var.enable_ssm_on_nodes ? ["arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"] : [],
  ))

  role       = aws_iam_role.node.name
  policy_arn = each.value
}

################################################################################
# Launch templates: IMDSv2 only, encrypted root volumes
################################################################################

locals {
  # One launch template per node group; they differ only in name and disk size.
  launch_templates = {
    system = var.system_node_group.disk_size_gb
    gpu    = var.gpu_node_group.disk_size_gb
  }
}

resource "aws_launch_template" "node" {
  for_each = local.launch_templates

  name_prefix            = "${var.name}-${each.key}-"
  description            = "phiserve ${var.name} ${each.key} nodes: IMDSv2 required, encrypted root volume"
  update_default_version = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = each.value
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.node_volume_kms_key_arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-${each.key}" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(var.tags, { Name = "${var.name}-${each.key}" })
  }

  tags = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

################################################################################
# Managed node groups
################################################################################

resource "aws_eks_node_group" "system" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "${var.name}-system"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = var.subnet_ids

  ami_type       = var.system_node_group.ami_type
  capacity_type  = "ON_DEMAND"
  instance_types = var.system_node_group.instance_types

  launch_template {
    id      = aws_launch_template.node["system"].id
    version = aws_launch_template.node["system"].latest_version
  }

  scaling_config {
    min_size     = var.system_node_group.min_size
    desired_size = var.system_node_group.desired_size
    max_size     = var.system_node_group.max_size
  }

  update_config {
    max_unavailable = 1
  }

  # Extra labels first: the contract labels always win.
  labels = merge(var.system_node_group.labels, local.system_labels)

  tags = var.tags

  # Cluster-autoscaler changes desired_size; do not fight it.
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [
    aws_iam_role_policy_attachment.node,
    aws_eks_addon.vpc_cni,
    aws_eks_addon.kube_proxy,
  ]
}

resource "aws_eks_node_group" "gpu" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "${var.name}-gpu"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = var.subnet_ids

  ami_type       = var.gpu_node_group.ami_type
  capacity_type  = var.gpu_node_group.capacity_type
  instance_types = var.gpu_node_group.instance_types

  launch_template {
    id      = aws_launch_template.node["gpu"].id
    version = aws_launch_template.node["gpu"].latest_version
  }

  scaling_config {
    min_size     = var.gpu_node_group.min_size
    desired_size = var.gpu_node_group.desired_size
    max_size     = var.gpu_node_group.max_size
  }

  update_config {
    max_unavailable = 1
  }

  # Only pods that tolerate the GPU taint (the phiserve chart, the NVIDIA
  # device plugin) land on these nodes.
  taint {
    key    = "nvidia.com/gpu"
    value  = "present"
    effect = "NO_SCHEDULE"
  }

  labels = merge(var.gpu_node_group.labels, local.gpu_labels)

  tags = var.tags

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [
    aws_iam_role_policy_attachment.node,
    aws_eks_addon.vpc_cni,
    aws_eks_addon.kube_proxy,
  ]
}
